//! Topic names, topic filters and the two trees the engine keeps: subscriptions by filter and
//! retained messages by topic.
//!
//! Both are tries keyed by topic level, so the work per operation follows the shape of the topic,
//! not the size of the fleet: publishing to `pifleet/dev/kitchen/cmnd` visits the few nodes on
//! that path (plus `+`/`#` branches), and subscribing to `pifleet/dev/kitchen/#` reads only the
//! kitchen's retained messages. (rumqttd 0.20 scans every retained message on each SUBSCRIBE and
//! every filter on each new topic, which made a fleet's join quadratic.)

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// A map that stays a tight vector while small: most trie nodes have one to five children and
/// most subscription leaves one subscriber, where a hash table would spend ~300 bytes on empty
/// buckets. That is several megabytes across a fleet of ten thousand devices.
#[derive(Debug)]
enum SmallMap<K, V> {
    Few(Vec<(K, V)>),
    Many(HashMap<K, V>),
}

/// Beyond this many entries a node switches to a hash table (`pifleet/dev` has one child per
/// device; `pifleet/all/cmnd` one subscriber per device).
const SPILL: usize = 8;

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::Few(Vec::new())
    }
}

impl<K: Eq + Hash, V> SmallMap<K, V> {
    fn get<Q: ?Sized + Eq + Hash>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        match self {
            SmallMap::Few(v) => v.iter().find(|(key, _)| key.borrow() == k).map(|(_, v)| v),
            SmallMap::Many(m) => m.get(k),
        }
    }

    fn get_mut<Q: ?Sized + Eq + Hash>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        match self {
            SmallMap::Few(v) => v
                .iter_mut()
                .find(|(key, _)| key.borrow() == k)
                .map(|(_, v)| v),
            SmallMap::Many(m) => m.get_mut(k),
        }
    }

    fn insert(&mut self, k: K, value: V) -> Option<V> {
        match self {
            SmallMap::Few(v) => {
                if let Some(slot) = v.iter_mut().find(|(key, _)| *key == k) {
                    return Some(std::mem::replace(&mut slot.1, value));
                }
                if v.len() < SPILL {
                    v.reserve_exact(1);
                    v.push((k, value));
                } else {
                    let mut m: HashMap<K, V> = std::mem::take(v).into_iter().collect();
                    m.insert(k, value);
                    *self = SmallMap::Many(m);
                }
                None
            }
            SmallMap::Many(m) => m.insert(k, value),
        }
    }

    fn get_or_default(&mut self, k: K) -> &mut V
    where
        V: Default,
    {
        if let SmallMap::Few(v) = self {
            if v.len() >= SPILL && !v.iter().any(|(key, _)| *key == k) {
                *self = SmallMap::Many(std::mem::take(v).into_iter().collect());
            }
        }
        match self {
            SmallMap::Few(v) => {
                let i = match v.iter().position(|(key, _)| *key == k) {
                    Some(i) => i,
                    None => {
                        v.reserve_exact(1);
                        v.push((k, V::default()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            SmallMap::Many(m) => m.entry(k).or_default(),
        }
    }

    fn remove<Q: ?Sized + Eq + Hash>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        match self {
            SmallMap::Few(v) => {
                let i = v.iter().position(|(key, _)| key.borrow() == k)?;
                let (_, value) = v.swap_remove(i);
                v.shrink_to_fit();
                Some(value)
            }
            SmallMap::Many(m) => {
                let value = m.remove(k);
                if m.is_empty() {
                    *self = SmallMap::default();
                }
                value
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            SmallMap::Few(v) => v.is_empty(),
            SmallMap::Many(m) => m.is_empty(),
        }
    }

    fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        match self {
            SmallMap::Few(v) => v.iter().for_each(|(k, v)| f(k, v)),
            SmallMap::Many(m) => m.iter().for_each(|(k, v)| f(k, v)),
        }
    }
}

/// How long and how deep a topic name or filter may be (`[limits] max_topic_len` and
/// `max_topic_levels`). Checked where packets are decoded, so the trees, whose depth is the
/// number of levels, never see anything deeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicBounds {
    pub max_len: usize,
    pub max_levels: usize,
}

impl TopicBounds {
    pub fn from_limits(limits: &crate::config::Limits) -> TopicBounds {
        TopicBounds {
            max_len: limits.max_topic_len,
            max_levels: limits.max_topic_levels,
        }
    }

    /// Whether `s` (a topic name or filter) is within both bounds.
    pub fn allows(&self, s: &str) -> bool {
        s.len() <= self.max_len && s.bytes().filter(|&b| b == b'/').count() < self.max_levels
    }
}

/// A topic name a client may publish to: not empty, no wildcards, no NUL (MQTT 3.1.1 §4.7).
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A topic filter a client may subscribe to: `+` only as a whole level, `#` only as the whole
/// last level, no NUL.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if last => {}
            "+" => {}
            l if l.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// Whether `filter` matches `topic` (both assumed valid). Topics starting with `$` are not
/// matched by a filter starting with a wildcard.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Subscriptions: filter → (subscriber key → value).
#[derive(Debug)]
pub struct FilterTree<V> {
    root: FilterNode<V>,
    len: usize,
}

#[derive(Debug)]
struct FilterNode<V> {
    children: SmallMap<Box<str>, FilterNode<V>>,
    subscribers: SmallMap<u64, V>,
}

impl<V> Default for FilterNode<V> {
    fn default() -> Self {
        FilterNode {
            children: SmallMap::default(),
            subscribers: SmallMap::default(),
        }
    }
}

impl<V> Default for FilterTree<V> {
    fn default() -> Self {
        FilterTree {
            root: FilterNode::default(),
            len: 0,
        }
    }
}

impl<V> FilterTree<V> {
    /// Adds or replaces `key`'s subscription to `filter`; returns the value it replaced.
    pub fn insert(&mut self, filter: &str, key: u64, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.get_or_default(level.into());
        }
        let old = node.subscribers.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`'s subscription to `filter`, pruning nodes left empty.
    pub fn remove(&mut self, filter: &str, key: u64) -> Option<V> {
        fn go<V>(node: &mut FilterNode<V>, levels: &[&str], key: u64) -> Option<V> {
            match levels.split_first() {
                None => node.subscribers.remove(&key),
                Some((first, rest)) => {
                    let child = node.children.get_mut(*first)?;
                    let removed = go(child, rest, key);
                    if child.subscribers.is_empty() && child.children.is_empty() {
                        node.children.remove(*first);
                    }
                    removed
                }
            }
        }
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = go(&mut self.root, &levels, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Calls `visit` once per subscription whose filter matches `topic`.
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(u64, &V)) {
        fn go<V>(
            node: &FilterNode<V>,
            levels: &[&str],
            root: bool,
            visit: &mut impl FnMut(u64, &V),
        ) {
            // `$SYS/...` and friends are not matched by a leading wildcard (§4.7.2).
            let dollar = root && levels.first().is_some_and(|l| l.starts_with('$'));
            if !dollar {
                if let Some(hash) = node.children.get("#") {
                    hash.subscribers.for_each(|k, v| visit(*k, v));
                }
            }
            match levels.split_first() {
                None => node.subscribers.for_each(|k, v| visit(*k, v)),
                Some((first, rest)) => {
                    if !dollar {
                        if let Some(plus) = node.children.get("+") {
                            go(plus, rest, false, visit);
                        }
                    }
                    if *first != "+" && *first != "#" {
                        if let Some(child) = node.children.get(*first) {
                            go(child, rest, false, visit);
                        }
                    }
                }
            }
        }
        // Topics are short; a fixed array keeps the hot path free of allocation.
        let mut buf = [""; 32];
        let mut n = 0;
        for level in topic.split('/') {
            if n == buf.len() {
                // Deeper than any fleet topic: fall back to a vector.
                let levels: Vec<&str> = topic.split('/').collect();
                go(&self.root, &levels, true, &mut visit);
                return;
            }
            buf[n] = level;
            n += 1;
        }
        go(&self.root, &buf[..n], true, &mut visit);
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Retained messages by topic.
#[derive(Debug)]
pub struct RetainTree<M> {
    root: RetainNode<M>,
    len: usize,
}

#[derive(Debug)]
struct RetainNode<M> {
    children: SmallMap<Box<str>, RetainNode<M>>,
    message: Option<M>,
}

impl<M> Default for RetainNode<M> {
    fn default() -> Self {
        RetainNode {
            children: SmallMap::default(),
            message: None,
        }
    }
}

impl<M> Default for RetainTree<M> {
    fn default() -> Self {
        RetainTree {
            root: RetainNode::default(),
            len: 0,
        }
    }
}

impl<M: Clone> RetainTree<M> {
    /// Stores `message` as `topic`'s retained message, or clears it with `None`.
    pub fn set(&mut self, topic: &str, message: Option<M>) {
        fn clear<M>(node: &mut RetainNode<M>, levels: &[&str]) -> bool {
            match levels.split_first() {
                None => node.message.take().is_some(),
                Some((first, rest)) => {
                    let Some(child) = node.children.get_mut(*first) else {
                        return false;
                    };
                    let cleared = clear(child, rest);
                    if child.message.is_none() && child.children.is_empty() {
                        node.children.remove(*first);
                    }
                    cleared
                }
            }
        }
        match message {
            Some(m) => {
                let mut node = &mut self.root;
                for level in topic.split('/') {
                    node = node.children.get_or_default(level.into());
                }
                if node.message.replace(m).is_none() {
                    self.len += 1;
                }
            }
            None => {
                let levels: Vec<&str> = topic.split('/').collect();
                if clear(&mut self.root, &levels) {
                    self.len -= 1;
                }
            }
        }
    }

    /// The retained messages matching `filter`, at most `limit` of them.
    pub fn matching(&self, filter: &str, limit: usize, out: &mut Vec<M>) {
        fn all<M: Clone>(node: &RetainNode<M>, limit: usize, out: &mut Vec<M>) {
            if out.len() >= limit {
                return;
            }
            if let Some(m) = &node.message {
                out.push(m.clone());
            }
            node.children.for_each(|_, child| all(child, limit, out));
        }
        fn go<M: Clone>(
            node: &RetainNode<M>,
            levels: &[&str],
            root: bool,
            limit: usize,
            out: &mut Vec<M>,
        ) {
            if out.len() >= limit {
                return;
            }
            match levels.split_first() {
                None => {
                    if let Some(m) = &node.message {
                        out.push(m.clone());
                    }
                }
                Some((&"#", _)) => {
                    // `a/#` matches `a` itself too (§4.7.1.2).
                    if !root {
                        if let Some(m) = &node.message {
                            out.push(m.clone());
                        }
                    }
                    node.children.for_each(|name, child| {
                        if !(root && name.starts_with('$')) {
                            all(child, limit, out);
                        }
                    });
                }
                Some((&"+", rest)) => {
                    node.children.for_each(|name, child| {
                        if !(root && name.starts_with('$')) {
                            go(child, rest, false, limit, out);
                        }
                    });
                }
                Some((first, rest)) => {
                    if let Some(child) = node.children.get(*first) {
                        go(child, rest, false, limit, out);
                    }
                }
            }
        }
        let levels: Vec<&str> = filter.split('/').collect();
        go(&self.root, &levels, true, limit, out);
        out.truncate(limit);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn filters_and_topics_are_validated() {
        for ok in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "a//b"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "#/a", "a\0"] {
            assert!(!valid_filter(bad), "{bad}");
        }
        assert!(valid_topic("a/b") && valid_topic("/") && valid_topic("é/ü"));
        assert!(!valid_topic("") && !valid_topic("a/+") && !valid_topic("#"));
    }

    #[test]
    fn matching_follows_the_spec() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "/x", true),
            ("+", "$SYS", false),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/c", false),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f} vs {t}");
        }
    }

    /// The trie agrees with the plain matcher for every filter/topic pair.
    #[test]
    fn tree_agrees_with_matches() {
        let filters = [
            "a/b", "a/+", "a/#", "#", "+/b", "+/+", "a/b/c", "$SYS/#", "+", "a", "/+", "+/#",
        ];
        let topics = [
            "a", "a/b", "a/c", "a/b/c", "b/b", "$SYS/x", "/a", "a/b/c/d", "x",
        ];
        let mut tree = FilterTree::default();
        for (i, f) in filters.iter().enumerate() {
            tree.insert(f, i as u64, *f);
        }
        for t in topics {
            let mut got: Vec<&str> = Vec::new();
            tree.for_each_match(t, |_, f| got.push(f));
            got.sort();
            let mut want: Vec<&str> = filters.iter().copied().filter(|f| matches(f, t)).collect();
            want.sort();
            assert_eq!(got, want, "topic {t}");
        }
        for (i, f) in filters.iter().enumerate() {
            assert_eq!(tree.remove(f, i as u64), Some(*f));
        }
        assert!(tree.is_empty() && tree.root.children.is_empty());
    }

    /// Past SPILL entries a node becomes a hash table, and shrinks back when emptied.
    #[test]
    fn wide_nodes_spill_into_hash_tables_and_back() {
        let mut tree = FilterTree::default();
        for i in 0..50u64 {
            tree.insert(&format!("dev/d{i}/cmnd"), i, i);
            tree.insert("all/cmnd", i, i);
        }
        for i in 0..50u64 {
            let mut got = Vec::new();
            tree.for_each_match(&format!("dev/d{i}/cmnd"), |k, _| got.push(k));
            assert_eq!(got, [i]);
        }
        let mut n = 0;
        tree.for_each_match("all/cmnd", |_, _| n += 1);
        assert_eq!(n, 50);
        for i in 0..50u64 {
            assert_eq!(tree.remove(&format!("dev/d{i}/cmnd"), i), Some(i));
            assert_eq!(tree.remove("all/cmnd", i), Some(i));
        }
        assert!(tree.is_empty() && tree.root.children.is_empty());
    }

    #[test]
    fn retained_tree_serves_filters() {
        let topics = ["a", "a/b", "a/c", "a/b/c", "b/b", "$SYS/x", "/a"];
        let mut tree = RetainTree::default();
        for t in topics {
            tree.set(t, Some(t));
        }
        assert_eq!(tree.len(), topics.len());
        for f in [
            "a/b", "a/+", "a/#", "#", "+/b", "+/+", "+", "$SYS/#", "/+", "+/#",
        ] {
            let mut got = Vec::new();
            tree.matching(f, 100, &mut got);
            got.sort();
            let mut want: Vec<&str> = topics.iter().copied().filter(|t| matches(f, t)).collect();
            want.sort();
            assert_eq!(got, want, "filter {f}");
        }
        let mut limited = Vec::new();
        tree.matching("#", 2, &mut limited);
        assert_eq!(limited.len(), 2);
        tree.set("a/b", None);
        tree.set("a/b", None);
        assert_eq!(tree.len(), topics.len() - 1);
        let mut got = Vec::new();
        tree.matching("a/b/#", 100, &mut got);
        assert_eq!(got, ["a/b/c"]);
    }
}
