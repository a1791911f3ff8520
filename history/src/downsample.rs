//! Downsampling: points into equal time buckets with count, min, max, mean and the first and
//! last point's time, so a chart never receives more points than it has pixels, and a spike
//! that averaging would hide still shows in `max`.
//!
//! The range `[since, until)` is cut into `n` buckets of `ceil((until - since) / n)` ms (at
//! least 1 ms), so the last bucket may reach past `until`, and a short range may need fewer
//! than `n`. Partial results merge (one per day file, or per thread) in any order.

use crate::report::Bucket;

/// More buckets than any screen has pixels across.
pub const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Acc {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
    first_ms: u64,
    last_ms: u64,
}

impl Acc {
    const EMPTY: Acc = Acc {
        count: 0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        sum: 0.0,
        first_ms: u64::MAX,
        last_ms: 0,
    };
}

/// Buckets being filled.
#[derive(Debug, Clone)]
pub struct Buckets {
    since_ms: u64,
    until_ms: u64,
    width_ms: u64,
    acc: Vec<Acc>,
}

impl Buckets {
    /// `n` buckets over `[since_ms, until_ms)`; `n` must be in `1..=MAX_BUCKETS` and the range
    /// non-empty (the reader checks both).
    pub fn new(since_ms: u64, until_ms: u64, n: usize) -> Buckets {
        let span = until_ms.saturating_sub(since_ms).max(1);
        let n = n.clamp(1, MAX_BUCKETS) as u64;
        let width_ms = span.div_ceil(n).max(1);
        let count = span.div_ceil(width_ms) as usize;
        Buckets {
            since_ms,
            until_ms,
            width_ms,
            acc: vec![Acc::EMPTY; count],
        }
    }

    pub fn width_ms(&self) -> u64 {
        self.width_ms
    }

    /// Adds a point; one outside `[since, until)` is ignored.
    #[inline]
    pub fn add(&mut self, t_ms: u64, value: f64) {
        if t_ms < self.since_ms || t_ms >= self.until_ms {
            return;
        }
        let a = &mut self.acc[((t_ms - self.since_ms) / self.width_ms) as usize];
        a.count += 1;
        a.min = a.min.min(value);
        a.max = a.max.max(value);
        a.sum += value;
        a.first_ms = a.first_ms.min(t_ms);
        a.last_ms = a.last_ms.max(t_ms);
    }

    /// Folds in buckets built over the same range with the same `n`.
    pub fn merge(&mut self, other: &Buckets) {
        debug_assert_eq!(
            (self.since_ms, self.width_ms, self.acc.len()),
            (other.since_ms, other.width_ms, other.acc.len())
        );
        for (a, b) in self.acc.iter_mut().zip(&other.acc) {
            a.count += b.count;
            a.min = a.min.min(b.min);
            a.max = a.max.max(b.max);
            a.sum += b.sum;
            a.first_ms = a.first_ms.min(b.first_ms);
            a.last_ms = a.last_ms.max(b.last_ms);
        }
    }

    pub fn points(&self) -> u64 {
        self.acc.iter().map(|a| a.count).sum()
    }

    /// The non-empty buckets, oldest first.
    pub fn finish(&self) -> Vec<Bucket> {
        self.acc
            .iter()
            .enumerate()
            .filter(|(_, a)| a.count > 0)
            .map(|(i, a)| Bucket {
                start_ms: self.since_ms + i as u64 * self.width_ms,
                count: a.count,
                min: a.min,
                max: a.max,
                mean: a.sum / a.count as f64,
                first_ms: a.first_ms,
                last_ms: a.last_ms,
            })
            .collect()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn buckets_hold_count_min_max_mean_and_first_last_time() {
        let mut b = Buckets::new(1_000, 2_000, 4);
        assert_eq!(b.width_ms(), 250);
        for (t, v) in [
            (1_000, 1.0),
            (1_100, 3.0),
            (1_249, 2.0),
            (1_750, -5.0),
            (1_999, 5.0),
        ] {
            b.add(t, v);
        }
        b.add(999, 100.0);
        b.add(2_000, 100.0);
        let out = b.finish();
        assert_eq!(out.len(), 2, "the empty buckets 1 and 2 are left out");
        assert_eq!(
            out[0],
            Bucket {
                start_ms: 1_000,
                count: 3,
                min: 1.0,
                max: 3.0,
                mean: 2.0,
                first_ms: 1_000,
                last_ms: 1_249
            }
        );
        assert_eq!(
            (
                out[1].start_ms,
                out[1].count,
                out[1].mean,
                out[1].first_ms,
                out[1].last_ms
            ),
            (1_750, 2, 0.0, 1_750, 1_999)
        );
        assert_eq!(b.points(), 5);
    }

    #[test]
    fn a_range_that_does_not_divide_evenly_rounds_the_width_up() {
        // 30 days into 800 buckets: 3,240,000 ms each, exactly 800.
        let b = Buckets::new(0, 30 * 86_400_000, 800);
        assert_eq!((b.width_ms(), b.acc.len()), (3_240_000, 800));
        // 10 ms into 3: width 4, 3 buckets, the last reaching past the end.
        let b = Buckets::new(0, 10, 3);
        assert_eq!((b.width_ms(), b.acc.len()), (4, 3));
        // More buckets than milliseconds: 1 ms each.
        let b = Buckets::new(0, 5, 800);
        assert_eq!((b.width_ms(), b.acc.len()), (1, 5));
    }

    #[test]
    fn merging_partial_buckets_equals_filling_one() {
        let points: Vec<(u64, f64)> = (0..10_000u64).map(|i| (i * 7, (i % 13) as f64)).collect();
        let mut whole = Buckets::new(0, 70_000, 33);
        let mut a = Buckets::new(0, 70_000, 33);
        let mut b = Buckets::new(0, 70_000, 33);
        for (i, (t, v)) in points.iter().enumerate() {
            whole.add(*t, *v);
            if i % 2 == 0 {
                a.add(*t, *v)
            } else {
                b.add(*t, *v)
            }
        }
        b.merge(&a);
        let (w, m) = (whole.finish(), b.finish());
        assert_eq!(w.len(), m.len());
        for (x, y) in w.iter().zip(&m) {
            assert_eq!(
                (x.start_ms, x.count, x.min, x.max, x.first_ms, x.last_ms),
                (y.start_ms, y.count, y.min, y.max, y.first_ms, y.last_ms)
            );
            assert!((x.mean - y.mean).abs() < 1e-9);
        }
        assert_eq!(whole.points(), 10_000);
    }
}
