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

    fn for_each<'a>(&'a self, mut f: impl FnMut(&'a K, &'a V)) {
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

pub use pifleet_proto::filter::{matches, valid_filter, valid_topic};

/// Subscriptions: filter → (subscriber key → value).
///
/// Every walk is iterative (an explicit stack, never one call per level), and dropping the tree
/// takes it apart the same way, so no filter, however deep, can exhaust the stack. The engine
/// also bounds depth where packets are decoded ([`TopicBounds`]); the trees do not rely on it.
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

impl<K, V> SmallMap<K, V> {
    /// Takes every value out, leaving the map empty.
    fn drain_values(&mut self) -> Vec<V> {
        match std::mem::take(self) {
            SmallMap::Few(v) => v.into_iter().map(|(_, v)| v).collect(),
            SmallMap::Many(m) => m.into_values().collect(),
        }
    }

    fn len(&self) -> usize {
        match self {
            SmallMap::Few(v) => v.len(),
            SmallMap::Many(m) => m.len(),
        }
    }
}

impl<V> Drop for FilterTree<V> {
    fn drop(&mut self) {
        take_apart(&mut self.root);
    }
}

/// What the two tries have in common, so pruning and taking apart are written once.
trait Node: Sized {
    fn children(&self) -> &SmallMap<Box<str>, Self>;
    fn children_mut(&mut self) -> &mut SmallMap<Box<str>, Self>;
    /// Whether the node holds a value (subscribers, a retained message) of its own.
    fn holds(&self) -> bool;
}

impl<V> Node for FilterNode<V> {
    fn children(&self) -> &SmallMap<Box<str>, Self> {
        &self.children
    }
    fn children_mut(&mut self) -> &mut SmallMap<Box<str>, Self> {
        &mut self.children
    }
    fn holds(&self) -> bool {
        !self.subscribers.is_empty()
    }
}

impl<M> Node for RetainNode<M> {
    fn children(&self) -> &SmallMap<Box<str>, Self> {
        &self.children
    }
    fn children_mut(&mut self) -> &mut SmallMap<Box<str>, Self> {
        &mut self.children
    }
    fn holds(&self) -> bool {
        self.message.is_some()
    }
}

/// Takes apart everything below `node` without recursion (the derived drop would recurse once
/// per level).
fn take_apart<N: Node>(node: &mut N) {
    let mut stack = node.children_mut().drain_values();
    while let Some(mut n) = stack.pop() {
        stack.extend(n.children_mut().drain_values());
    }
}

/// After the value at the end of `levels` was removed: removes the nodes along `levels` that
/// existed only for it. The deepest node that must stay (the root, one holding a value, or one
/// with another child) keeps its place; the chain below it goes.
fn prune<N: Node>(root: &mut N, levels: &[&str]) {
    let mut node = &*root;
    let mut cut = 0;
    for (i, level) in levels.iter().enumerate() {
        // `node` is at depth i; its child at levels[i] may go if nothing else hangs here.
        if i > 0 && (node.holds() || node.children().len() > 1) {
            cut = i;
        }
        match node.children().get(*level) {
            Some(child) => node = child,
            None => return,
        }
    }
    if node.holds() || !node.children().is_empty() {
        return;
    }
    let mut node = root;
    for level in &levels[..cut] {
        node = node.children_mut().get_mut(*level).expect("path exists");
    }
    if let Some(mut chain) = node.children_mut().remove(levels[cut]) {
        take_apart(&mut chain);
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
        let levels: Vec<&str> = filter.split('/').collect();
        let mut node = &mut self.root;
        for level in &levels {
            node = node.children.get_mut(*level)?;
        }
        let removed = node.subscribers.remove(&key)?;
        self.len -= 1;
        prune(&mut self.root, &levels);
        Some(removed)
    }

    /// `key`'s subscription to exactly `filter`.
    pub fn get(&self, filter: &str, key: u64) -> Option<&V> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = node.children.get(level)?;
        }
        node.subscribers.get(&key)
    }

    /// Calls `visit` once per subscription whose filter matches `topic`.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(u64, &'a V)) {
        // Topics are short; a fixed array keeps the hot path free of allocation.
        let mut buf = [""; 32];
        let mut n = 0;
        let mut deep = Vec::new();
        for level in topic.split('/') {
            if n < buf.len() {
                buf[n] = level;
            } else {
                if deep.is_empty() {
                    deep.extend_from_slice(&buf);
                }
                deep.push(level);
            }
            n += 1;
        }
        let levels: &[&str] = if deep.is_empty() { &buf[..n] } else { &deep };
        // `$SYS/...` and friends are not matched by a leading wildcard (§4.7.2).
        let dollar = levels[0].starts_with('$');
        // (node, number of levels it has consumed)
        let mut stack: Vec<(&FilterNode<V>, usize)> = Vec::with_capacity(8);
        stack.push((&self.root, 0));
        while let Some((node, depth)) = stack.pop() {
            let wild_ok = !(dollar && depth == 0);
            if wild_ok {
                if let Some(hash) = node.children.get("#") {
                    hash.subscribers.for_each(|k, v| visit(*k, v));
                }
            }
            let Some(level) = levels.get(depth) else {
                node.subscribers.for_each(|k, v| visit(*k, v));
                continue;
            };
            if wild_ok {
                if let Some(plus) = node.children.get("+") {
                    stack.push((plus, depth + 1));
                }
            }
            if *level != "+" && *level != "#" {
                if let Some(child) = node.children.get(*level) {
                    stack.push((child, depth + 1));
                }
            }
        }
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Retained messages by topic, walked iteratively like [`FilterTree`].
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

impl<M> Drop for RetainTree<M> {
    fn drop(&mut self) {
        take_apart(&mut self.root);
    }
}

impl<M: Clone> RetainTree<M> {
    /// Stores `message` as `topic`'s retained message, or clears it with `None`. Returns the
    /// message it replaced or cleared.
    pub fn set(&mut self, topic: &str, message: Option<M>) -> Option<M> {
        match message {
            Some(m) => {
                let mut node = &mut self.root;
                for level in topic.split('/') {
                    node = node.children.get_or_default(level.into());
                }
                let old = node.message.replace(m);
                if old.is_none() {
                    self.len += 1;
                }
                old
            }
            None => {
                let levels: Vec<&str> = topic.split('/').collect();
                let mut node = &mut self.root;
                for level in &levels {
                    node = node.children.get_mut(*level)?;
                }
                let old = node.message.take()?;
                self.len -= 1;
                prune(&mut self.root, &levels);
                Some(old)
            }
        }
    }

    /// `topic`'s retained message.
    pub fn get(&self, topic: &str) -> Option<&M> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    /// Every retained message, `$` topics included (what a snapshot of the store holds).
    pub fn all(&self, out: &mut Vec<M>) {
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            if let Some(m) = &node.message {
                out.push(m.clone());
            }
            node.children.for_each(|_, child| stack.push(child));
        }
    }

    /// The retained messages matching `filter`, at most `limit` of them.
    pub fn matching(&self, filter: &str, limit: usize, out: &mut Vec<M>) {
        let start = out.len();
        let levels: Vec<&str> = filter.split('/').collect();
        // (node, levels consumed); `None` as the depth means "everything below, the node too".
        let mut stack: Vec<(&RetainNode<M>, Option<usize>)> = vec![(&self.root, Some(0))];
        let full = |out: &Vec<M>| out.len() - start >= limit;
        while let Some((node, depth)) = stack.pop() {
            if full(out) {
                break;
            }
            let root = std::ptr::eq(node, &self.root);
            let Some(depth) = depth else {
                if let Some(m) = &node.message {
                    out.push(m.clone());
                }
                node.children.for_each(|_, child| stack.push((child, None)));
                continue;
            };
            match levels.get(depth).copied() {
                None => {
                    if let Some(m) = &node.message {
                        out.push(m.clone());
                    }
                }
                Some("#") => {
                    // `a/#` matches `a` itself too (§4.7.1.2).
                    if !root {
                        if let Some(m) = &node.message {
                            out.push(m.clone());
                        }
                    }
                    node.children.for_each(|name, child| {
                        if !(root && name.starts_with('$')) {
                            stack.push((child, None));
                        }
                    });
                }
                Some("+") => {
                    node.children.for_each(|name, child| {
                        if !(root && name.starts_with('$')) {
                            stack.push((child, Some(depth + 1)));
                        }
                    });
                }
                Some(level) => {
                    if let Some(child) = node.children.get(level) {
                        stack.push((child, Some(depth + 1)));
                    }
                }
            }
        }
        out.truncate(start + limit);
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

    /// Far deeper than any bound the engine enforces: nothing recurses per level, so inserting,
    /// matching, removing and dropping such trees cannot exhaust the stack.
    #[test]
    fn walks_and_drops_are_iterative_however_deep_the_topic() {
        let deep = vec!["a"; 200_000].join("/");
        let mut filters = FilterTree::default();
        filters.insert(&deep, 1, ());
        filters.insert(&format!("{deep}/#"), 2, ());
        filters.insert("a/#", 3, ());
        let mut hits = Vec::new();
        filters.for_each_match(&deep, |k, _| hits.push(k));
        hits.sort();
        assert_eq!(hits, [1, 2, 3]);
        assert_eq!(filters.remove(&deep, 1), Some(()));
        assert_eq!(filters.remove(&format!("{deep}/#"), 2), Some(()));
        assert_eq!(filters.len(), 1);
        filters.insert(&deep, 4, ());
        drop(filters);

        let mut retained = RetainTree::default();
        retained.set(&deep, Some(1));
        retained.set("a", Some(2));
        let mut got = Vec::new();
        retained.matching("a/#", 10, &mut got);
        got.sort();
        assert_eq!(got, [1, 2]);
        assert_eq!(retained.get(&deep), Some(&1));
        assert_eq!(retained.set(&deep, None), Some(1));
        assert_eq!(retained.len(), 1);
        assert!(retained.root.children.len() == 1);
        retained.set(&deep, Some(3));
        drop(retained);
    }

    /// Removing one entry prunes exactly the nodes that only it needed.
    #[test]
    fn removal_prunes_only_what_nothing_else_needs() {
        let mut t = FilterTree::default();
        t.insert("a/b/c/d", 1, ());
        t.insert("a/b", 2, ());
        t.insert("a/x/y", 3, ());
        t.remove("a/b/c/d", 1);
        let mut hits = Vec::new();
        t.for_each_match("a/b", |k, _| hits.push(k));
        t.for_each_match("a/x/y", |k, _| hits.push(k));
        assert_eq!(hits, [2, 3]);
        let b = t.root.children.get("a").unwrap().children.get("b").unwrap();
        assert!(b.children.is_empty(), "c/d pruned");
        t.remove("a/b", 2);
        t.remove("a/x/y", 3);
        assert!(t.root.children.is_empty());

        let mut r = RetainTree::default();
        r.set("a/b/c", Some(1));
        r.set("a", Some(2));
        assert_eq!(r.set("a/b/c", None), Some(1));
        assert!(r.root.children.get("a").unwrap().children.is_empty());
        assert_eq!(r.set("a/b/c", None), None);
        assert_eq!(r.set("a", None), Some(2));
        assert!(r.root.children.is_empty() && r.is_empty());
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
