//! Properties of the topic trees (`pifleet_broker::engine::tree`) on random and adversarial
//! input, each for a bounded time with a printed seed (`PIFLEET_SEED=N` replays a run):
//! validation agrees with a model of MQTT 3.1.1 §4.7, `matches` with a model of matching, the
//! subscription trie and the retained trie with plain maps filtered by `matches`, and a tree
//! emptied by removals is empty. Topics and filters 100,000 levels deep must not crash a tree
//! (walks, removal and drop alike): the engine bounds depth at decode time, but the trees are
//! not allowed to rely on it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{for_a_while, seed, Rng};
use pifleet_broker::engine::tree::{matches, valid_filter, valid_topic, FilterTree, RetainTree};

const BUDGET: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Models, written from the spec rather than from the code under test

fn model_valid_topic(t: &str) -> bool {
    !t.is_empty() && !t.chars().any(|c| c == '+' || c == '#' || c == '\0')
}

fn model_valid_filter(f: &str) -> bool {
    if f.is_empty() || f.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "+" => true,
        "#" => i == levels.len() - 1,
        l => !l.contains('+') && !l.contains('#'),
    })
}

fn model_matches(filter: &str, topic: &str) -> bool {
    fn go(f: &[&str], t: &[&str]) -> bool {
        match (f, t) {
            (["#"], _) => true,
            (["+", f @ ..], [_, t @ ..]) => go(f, t),
            ([a, f @ ..], [b, t @ ..]) => a == b && go(f, t),
            ([], []) => true,
            _ => false,
        }
    }
    // §4.7.2: a filter starting with a wildcard does not match a topic starting with `$`.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    go(&f, &t)
}

// ---------------------------------------------------------------------------------------------
// Generators: few distinct level names, so that random filters and topics often meet

fn level(rng: &mut Rng) -> &'static str {
    rng.pick(&["a", "b", "c", "", "$x", "dev", "é"])
}

fn topic(rng: &mut Rng) -> String {
    let n = 1 + rng.below(5);
    let mut levels: Vec<&str> = (0..n).map(|_| level(rng)).collect();
    if rng.one_in(8) {
        levels[0] = "$SYS";
    }
    let t = levels.join("/");
    if t.is_empty() {
        "a".into()
    } else {
        t
    }
}

fn filter(rng: &mut Rng) -> String {
    let n = 1 + rng.below(5);
    let mut levels: Vec<&str> = (0..n)
        .map(|_| if rng.one_in(3) { "+" } else { level(rng) })
        .collect();
    if rng.one_in(3) {
        *levels.last_mut().unwrap() = "#";
    }
    if rng.one_in(8) {
        levels[0] = "$SYS";
    }
    let f = levels.join("/");
    if f.is_empty() {
        "#".into()
    } else {
        f
    }
}

/// Any short string over the characters that matter to validation.
fn noise(rng: &mut Rng) -> String {
    let n = rng.below(8);
    (0..n)
        .map(|_| rng.pick(&['a', '/', '+', '#', '\0', '$', 'é']))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Validation and matching

#[test]
fn validation_agrees_with_the_spec_on_random_strings() {
    let mut rng = Rng::new(seed("validation"));
    let n = for_a_while(BUDGET, 200_000, |case| {
        let s = if rng.one_in(2) {
            noise(&mut rng)
        } else {
            filter(&mut rng)
        };
        assert_eq!(
            valid_filter(&s),
            model_valid_filter(&s),
            "case {case}: filter {s:?}"
        );
        assert_eq!(
            valid_topic(&s),
            model_valid_topic(&s),
            "case {case}: topic {s:?}"
        );
    });
    println!("{n} cases");
}

#[test]
fn matching_agrees_with_the_spec_on_random_pairs() {
    let mut rng = Rng::new(seed("matching"));
    let n = for_a_while(BUDGET, 200_000, |case| {
        let (f, t) = (filter(&mut rng), topic(&mut rng));
        assert!(
            valid_filter(&f) && valid_topic(&t),
            "generators make valid input"
        );
        assert_eq!(
            matches(&f, &t),
            model_matches(&f, &t),
            "case {case}: {f:?} vs {t:?}"
        );
    });
    println!("{n} cases");
}

// ---------------------------------------------------------------------------------------------
// The subscription trie

/// Random inserts, replacements and removals by a few subscribers, checked after every step
/// against a map of (filter, key) → value; then everything is removed.
#[test]
fn the_filter_tree_agrees_with_a_map_and_matches() {
    let mut rng = Rng::new(seed("filter tree"));
    let mut rounds = 0;
    let n = for_a_while(BUDGET, 1_000_000, |case| {
        let mut tree: FilterTree<u64> = FilterTree::default();
        let mut model: BTreeMap<(String, u64), u64> = BTreeMap::new();
        for step in 0..200 {
            let ctx = format!("case {case} step {step}");
            let f = filter(&mut rng);
            let key = rng.below(6) as u64;
            match rng.below(4) {
                0 | 1 => {
                    let v = rng.next_u64();
                    let old = tree.insert(&f, key, v);
                    assert_eq!(
                        old,
                        model.insert((f.clone(), key), v),
                        "{ctx}: insert {f:?}"
                    );
                }
                2 => {
                    // Mostly remove what exists, sometimes what does not.
                    let (f, key) = match model.keys().nth(rng.below(model.len() + 1)) {
                        Some(k) if !rng.one_in(4) => k.clone(),
                        _ => (f, key),
                    };
                    let removed = tree.remove(&f, key);
                    assert_eq!(
                        removed,
                        model.remove(&(f.clone(), key)),
                        "{ctx}: remove {f:?}"
                    );
                }
                _ => {
                    let t = topic(&mut rng);
                    let mut got: Vec<(u64, u64)> = Vec::new();
                    tree.for_each_match(&t, |k, v| got.push((k, *v)));
                    got.sort();
                    let mut want: Vec<(u64, u64)> = model
                        .iter()
                        .filter(|((f, _), _)| matches(f, &t))
                        .map(|((_, k), v)| (*k, *v))
                        .collect();
                    want.sort();
                    assert_eq!(got, want, "{ctx}: subscribers of {t:?} (each exactly once)");
                }
            }
            assert_eq!(tree.len(), model.len(), "{ctx}: len");
        }
        for ((f, key), v) in std::mem::take(&mut model) {
            assert_eq!(
                tree.remove(&f, key),
                Some(v),
                "case {case}: final removal of {f:?}"
            );
        }
        assert_eq!(
            (tree.is_empty(), tree.len()),
            (true, 0),
            "case {case}: emptied"
        );
        let mut any = false;
        tree.for_each_match("a/b", |_, _| any = true);
        assert!(!any, "case {case}: an emptied tree matches nothing");
        rounds += 1;
    });
    println!("{n} cases, {rounds} emptied trees");
}

// ---------------------------------------------------------------------------------------------
// The retained trie

#[test]
fn the_retain_tree_agrees_with_a_map_and_matches() {
    let mut rng = Rng::new(seed("retain tree"));
    let n = for_a_while(BUDGET, 1_000_000, |case| {
        let mut tree: RetainTree<(String, u64)> = RetainTree::default();
        let mut model: BTreeMap<String, u64> = BTreeMap::new();
        for step in 0..200 {
            let ctx = format!("case {case} step {step}");
            match rng.below(4) {
                0 | 1 => {
                    let t = topic(&mut rng);
                    let v = rng.next_u64();
                    tree.set(&t, Some((t.clone(), v)));
                    model.insert(t, v);
                }
                2 => {
                    let t = match model.keys().nth(rng.below(model.len() + 1)) {
                        Some(t) if !rng.one_in(4) => t.clone(),
                        _ => topic(&mut rng),
                    };
                    tree.set(&t, None);
                    model.remove(&t);
                }
                _ => {
                    let f = filter(&mut rng);
                    let limit = if rng.one_in(4) {
                        rng.below(4)
                    } else {
                        usize::MAX
                    };
                    let mut got = Vec::new();
                    tree.matching(&f, limit, &mut got);
                    let mut want: Vec<(String, u64)> = model
                        .iter()
                        .filter(|(t, _)| matches(&f, t))
                        .map(|(t, v)| (t.clone(), *v))
                        .collect();
                    got.sort();
                    want.sort();
                    if limit >= want.len() {
                        assert_eq!(got, want, "{ctx}: retained for {f:?}");
                    } else {
                        assert_eq!(got.len(), limit, "{ctx}: {f:?} limited to {limit}");
                        assert!(
                            got.windows(2).all(|w| w[0] != w[1])
                                && got.iter().all(|m| want.contains(m)),
                            "{ctx}: {f:?} limited to {limit} gave {got:?} of {want:?}"
                        );
                    }
                }
            }
            assert_eq!(tree.len(), model.len(), "{ctx}: len");
        }
        for t in std::mem::take(&mut model).into_keys() {
            tree.set(&t, None);
        }
        assert_eq!(
            (tree.is_empty(), tree.len()),
            (true, 0),
            "case {case}: emptied"
        );
        let mut got = Vec::new();
        tree.matching("#", usize::MAX, &mut got);
        assert!(got.is_empty(), "case {case}: an emptied tree holds nothing");
    });
    println!("{n} cases");
}

/// The engine validates filters and topics before they reach a tree, but a tree must not panic
/// on anything (`#` mid-filter, `+` inside a level, empty strings, NUL): whatever went in comes
/// out again, and the tree ends empty.
#[test]
fn the_trees_take_unvalidated_input_without_panicking() {
    let mut rng = Rng::new(seed("unvalidated"));
    let n = for_a_while(BUDGET, 1_000_000, |case| {
        let mut filters: FilterTree<()> = FilterTree::default();
        let mut retained: RetainTree<()> = RetainTree::default();
        let mut inserted: BTreeMap<(String, u64), ()> = BTreeMap::new();
        let mut stored: BTreeMap<String, ()> = BTreeMap::new();
        for _ in 0..50 {
            let (a, b) = (noise(&mut rng), noise(&mut rng));
            let key = rng.below(3) as u64;
            filters.insert(&a, key, ());
            inserted.insert((a.clone(), key), ());
            filters.for_each_match(&b, |_, _| {});
            retained.set(&a, Some(()));
            stored.insert(a, ());
            let mut out = Vec::new();
            retained.matching(&b, usize::MAX, &mut out);
        }
        assert_eq!(filters.len(), inserted.len(), "case {case}");
        assert_eq!(retained.len(), stored.len(), "case {case}");
        for (f, key) in inserted.into_keys() {
            assert_eq!(filters.remove(&f, key), Some(()), "case {case}: {f:?}");
        }
        for t in stored.into_keys() {
            retained.set(&t, None);
        }
        assert!(filters.is_empty() && retained.is_empty(), "case {case}");
    });
    println!("{n} cases");
}

// ---------------------------------------------------------------------------------------------
// Depth: 100,000 levels (the default stack of a thread is 2 MiB; one recursion per level
// overflows it long before that)

const DEEP: usize = 100_000;

fn deep(levels: &[&str]) -> String {
    levels.join("/")
}

/// `a/a/…/a`, `a/+/a/+/…`, `a/a/…/#` and `+/…/+` against a topic of 100,000 `a`s: inserted,
/// matched, removed, and the tree is empty.
#[test]
fn the_filter_tree_survives_filters_and_topics_100000_levels_deep() {
    let topic = deep(&vec!["a"; DEEP]);
    let filters = [
        topic.clone(),
        deep(
            &(0..DEEP)
                .map(|i| if i % 2 == 1 { "+" } else { "a" })
                .collect::<Vec<_>>(),
        ),
        deep(&[vec!["a"; DEEP - 1], vec!["#"]].concat()),
        deep(&vec!["+"; DEEP]),
        // One level short: does not match.
        deep(&vec!["a"; DEEP - 1]),
    ];
    let mut tree: FilterTree<usize> = FilterTree::default();
    for (i, f) in filters.iter().enumerate() {
        assert!(valid_filter(f));
        assert_eq!(tree.insert(f, i as u64, i), None);
    }
    let mut got = Vec::new();
    tree.for_each_match(&topic, |_, v| got.push(*v));
    got.sort();
    assert_eq!(got, [0, 1, 2, 3]);
    for (i, f) in filters.iter().enumerate() {
        assert_eq!(matches(f, &topic), i < 4, "matches() on filter {i}");
        assert_eq!(tree.remove(f, i as u64), Some(i));
    }
    assert!(tree.is_empty());
}

/// A retained message 100,000 levels deep: stored, found by `#`, `a/+/…` and its own name,
/// cleared, and the tree is empty.
#[test]
fn the_retain_tree_survives_topics_100000_levels_deep() {
    let topic = deep(&vec!["a"; DEEP]);
    let mut tree: RetainTree<u8> = RetainTree::default();
    tree.set(&topic, Some(1));
    tree.set(&deep(&vec!["a"; DEEP / 2]), Some(2));
    for f in [
        "#".to_string(),
        topic.clone(),
        deep(
            &(0..DEEP)
                .map(|i| if i % 2 == 1 { "+" } else { "a" })
                .collect::<Vec<_>>(),
        ),
        deep(&[vec!["a"; DEEP / 2 + 1], vec!["#"]].concat()),
    ] {
        let mut got = Vec::new();
        tree.matching(&f, usize::MAX, &mut got);
        assert!(
            got.contains(&1),
            "the deep message for a {}-byte filter",
            f.len()
        );
    }
    tree.set(&topic, None);
    tree.set(&deep(&vec!["a"; DEEP / 2]), None);
    assert!(tree.is_empty());
}

/// Dropping trees that still hold 100,000-level entries (a broker shutting down, or a test).
#[test]
fn trees_holding_entries_100000_levels_deep_drop_without_overflowing() {
    let topic = deep(&vec!["a"; DEEP]);
    let mut filters: FilterTree<()> = FilterTree::default();
    filters.insert(&topic, 1, ());
    drop(filters);
    let mut retained: RetainTree<()> = RetainTree::default();
    retained.set(&topic, Some(()));
    drop(retained);
}
