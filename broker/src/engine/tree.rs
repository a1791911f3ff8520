//! Topic names, topic filters and the two trees the engine keeps: subscriptions by filter and
//! retained messages by topic.
//!
//! Both are tries keyed by topic level, so the work per operation follows the shape of the topic,
//! not the size of the fleet: publishing to `pifleet/dev/kitchen/cmnd` visits the few nodes on
//! that path (plus `+`/`#` branches), and subscribing to `pifleet/dev/kitchen/#` reads only the
//! kitchen's retained messages. (rumqttd 0.20 scans every retained message on each SUBSCRIBE and
//! every filter on each new topic, which made a fleet's join quadratic.)

use std::collections::HashMap;

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
    children: HashMap<Box<str>, FilterNode<V>>,
    subscribers: HashMap<u64, V>,
}

impl<V> Default for FilterNode<V> {
    fn default() -> Self {
        FilterNode {
            children: HashMap::new(),
            subscribers: HashMap::new(),
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
            node = node.children.entry(level.into()).or_default();
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
                    for (k, v) in &hash.subscribers {
                        visit(*k, v);
                    }
                }
            }
            match levels.split_first() {
                None => {
                    for (k, v) in &node.subscribers {
                        visit(*k, v);
                    }
                }
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
    children: HashMap<Box<str>, RetainNode<M>>,
    message: Option<M>,
}

impl<M> Default for RetainNode<M> {
    fn default() -> Self {
        RetainNode {
            children: HashMap::new(),
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
                    node = node.children.entry(level.into()).or_default();
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
            for child in node.children.values() {
                all(child, limit, out);
            }
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
                    for (name, child) in &node.children {
                        if !(root && name.starts_with('$')) {
                            all(child, limit, out);
                        }
                    }
                }
                Some((&"+", rest)) => {
                    for (name, child) in &node.children {
                        if !(root && name.starts_with('$')) {
                            go(child, rest, false, limit, out);
                        }
                    }
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
