//! What the property and fuzz tests share: a small seeded PRNG (no dependency, the same stream
//! on every platform) and the seed, printed so that a failure can be replayed.

// Each test crate uses only part of this.
#![allow(dead_code)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The seed of this run: `PIFLEET_SEED` if set, otherwise taken from the clock. Printed either
/// way (`cargo test -- --nocapture` shows it; a failing test's output always does).
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("PIFLEET_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("PIFLEET_SEED={s:?} is not a number")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    println!("{test}: seed {seed} (replay with PIFLEET_SEED={seed})");
    seed
}

/// xoshiro256** seeded through splitmix64.
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// Fewer than `max` random bytes.
    pub fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }

    /// A derived generator (for a task of its own), reproducible from this one.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}

/// Runs `case` with case numbers 0, 1, … until `budget` has passed or `max` cases ran; returns
/// how many ran.
pub fn for_a_while(budget: Duration, max: usize, mut case: impl FnMut(usize)) -> usize {
    let started = Instant::now();
    let mut n = 0;
    while n < max && started.elapsed() < budget {
        case(n);
        n += 1;
    }
    n
}
