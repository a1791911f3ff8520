//! What the recorder keeps, decided without I/O: repeats are skipped, and each device has a
//! token bucket and a daily row cap so that one flooding device cannot fill the disk.
//!
//! - **Repeats.** A row that equals the last kept row of its series (same kind and name) in
//!   everything but the receive time is not news: it is a retained message delivered again
//!   after a reconnect, or the agent republishing its state. Device timestamps make this
//!   exact: a new reading has a new `ts` even if its value is the same. Presence is compared
//!   without the device's timestamp, so the heartbeat an agent publishes every minute is not
//!   recorded, while coming online, going offline and an agent restart (a new `started` in the
//!   detail) are.
//! - **Rate.** A token bucket per device: `burst` rows at once, refilled at `rows_per_sec`.
//!   Time is the rows' receive time, so tests drive it and a clock step never refills at once.
//! - **Daily cap.** At most `max_rows_per_day` rows per device per UTC day. With the text
//!   limits of [`crate::row`], that bounds a file's size, and with retention the disk.

use std::collections::HashMap;

use crate::row::{Kind, Row};
use crate::time::Day;

/// The last kept row of every series of one device.
#[derive(Debug, Default)]
pub(crate) struct Repeats {
    last: HashMap<(Kind, String), Row>,
}

impl Repeats {
    /// Whether `row` says nothing its series' last kept row did not.
    pub fn is_repeat(&self, row: &Row) -> bool {
        let Some(prev) = self.last.get(&(row.kind, row.name.clone())) else {
            return false;
        };
        prev.value == row.value
            && prev.unit == row.unit
            && prev.source == row.source
            && prev.command_id == row.command_id
            && prev.detail == row.detail
            && (row.kind == Kind::Presence || prev.device_ms == row.device_ms)
    }

    pub fn remember(&mut self, row: &Row) {
        if let Some(prev) = self.last.get_mut(&(row.kind, row.name.clone())) {
            prev.clone_from(row);
        } else {
            self.last.insert((row.kind, row.name.clone()), row.clone());
        }
    }
}

/// Tokens refilled at a steady rate up to a capacity. Fractional tokens, so 0.5 rows/s works.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_ms: f64,
    last_ms: Option<u64>,
}

impl TokenBucket {
    pub fn new(rows_per_sec: f64, burst: u32) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            capacity: f64::from(burst),
            per_ms: rows_per_sec / 1000.0,
            last_ms: None,
        }
    }

    /// Takes one token at `now_ms` if there is one. A clock that went backwards refills
    /// nothing (and does not panic).
    pub fn take(&mut self, now_ms: u64) -> bool {
        if let Some(last) = self.last_ms {
            let elapsed = now_ms.saturating_sub(last) as f64;
            self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        }
        if self.last_ms.is_none_or(|l| now_ms > l) {
            self.last_ms = Some(now_ms);
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a row was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The device sends faster than `rows_per_sec` (after its `burst`).
    Rate,
    /// The device reached `max_rows_per_day` today.
    DailyCap,
    /// Rows could not be written (unwritable directory, full disk) and the device's buffer
    /// reached `max_pending_bytes`.
    Unwritable,
}

/// One device's allowance for the current day.
#[derive(Debug)]
pub(crate) struct Budget {
    pub day: Day,
    pub rows_today: u64,
    pub dropped_today: u64,
    /// The day a drop was last warned about: one warning per device per day.
    warned: Option<Day>,
    bucket: TokenBucket,
}

impl Budget {
    pub fn new(day: Day, rows_per_sec: f64, burst: u32) -> Budget {
        Budget {
            day,
            rows_today: 0,
            dropped_today: 0,
            warned: None,
            bucket: TokenBucket::new(rows_per_sec, burst),
        }
    }

    /// Starts `day`: the cap resets, the bucket does not (a flood does not stop at midnight).
    pub fn start_day(&mut self, day: Day) {
        if day != self.day {
            self.day = day;
            self.rows_today = 0;
            self.dropped_today = 0;
        }
    }

    /// Whether a row at `now_ms` may be kept; counts it either way.
    pub fn admit(&mut self, now_ms: u64, max_rows_per_day: u64) -> Result<(), DropReason> {
        let verdict = if self.rows_today >= max_rows_per_day {
            Err(DropReason::DailyCap)
        } else if !self.bucket.take(now_ms) {
            Err(DropReason::Rate)
        } else {
            Ok(())
        };
        match verdict {
            Ok(()) => self.rows_today += 1,
            Err(_) => self.dropped_today += 1,
        }
        verdict
    }

    /// True the first time today: the caller warns (and notes it in the file) only then.
    pub fn first_drop_today(&mut self) -> bool {
        let first = self.warned != Some(self.day);
        self.warned = Some(self.day);
        first
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn reading(at: u64, device_ms: u64, value: f64) -> Row {
        Row {
            value: Some(value),
            unit: Some("°C".into()),
            device_ms: Some(device_ms),
            ..Row::new(at, Kind::Sensor, "t")
        }
    }

    #[test]
    fn a_retained_replay_is_a_repeat_but_a_new_reading_of_the_same_value_is_not() {
        let mut r = Repeats::default();
        let first = reading(1_000, 900, 20.0);
        assert!(!r.is_repeat(&first));
        r.remember(&first);
        assert!(r.is_repeat(&reading(5_000, 900, 20.0)), "same device ts");
        assert!(!r.is_repeat(&reading(5_000, 4_900, 20.0)), "a new ts");
        let other = Row {
            name: "u".into(),
            ..first.clone()
        };
        assert!(!r.is_repeat(&other), "another series");
    }

    #[test]
    fn presence_heartbeats_are_repeats_but_changes_and_restarts_are_not() {
        let presence = |at: u64, online: bool, detail: &str| Row {
            value: Some(if online { 1.0 } else { 0.0 }),
            detail: Some(detail.into()),
            device_ms: Some(at),
            ..Row::new(at, Kind::Presence, "")
        };
        let mut r = Repeats::default();
        let online = presence(1, true, "online, started 1");
        r.remember(&online);
        assert!(r.is_repeat(&presence(60_000, true, "online, started 1")));
        assert!(!r.is_repeat(&presence(61_000, false, "offline")));
        assert!(!r.is_repeat(&presence(62_000, true, "online, started 62000")));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_sustained_rate() {
        let mut b = TokenBucket::new(2.0, 10);
        let kept = (0..1000).filter(|_| b.take(5_000)).count();
        assert_eq!(kept, 10, "a burst at one instant");
        assert!(!b.take(5_400), "0.8 tokens after 400 ms");
        assert!(b.take(5_500), "1 token after 500 ms");
        // 1,000 rows/s for 10 s: 2 rows/s get through.
        let kept = (0..10_000u64).filter(|i| b.take(5_500 + i)).count();
        assert_eq!(kept, 19, "{kept}");
        // A clock step back refills nothing and does not panic.
        assert!(!b.take(0));
        // Idle long enough: full again, never more than the burst.
        let kept = (0..100).filter(|_| b.take(1_000_000)).count();
        assert_eq!(kept, 10);
    }

    #[test]
    fn the_daily_cap_resets_at_midnight_and_warns_once_a_day() {
        let day: Day = "2026-11-22".parse().unwrap();
        let mut b = Budget::new(day, 1e9, u32::MAX);
        let t = day.start_ms();
        assert!((0..5).all(|i| b.admit(t + i, 5).is_ok()));
        assert_eq!(b.admit(t + 5, 5), Err(DropReason::DailyCap));
        assert!(b.first_drop_today());
        assert_eq!(b.admit(t + 6, 5), Err(DropReason::DailyCap));
        assert!(!b.first_drop_today(), "once a day");
        assert_eq!((b.rows_today, b.dropped_today), (5, 2));
        b.start_day(day.next());
        assert_eq!(b.admit(day.next().start_ms(), 5), Ok(()));
        assert_eq!(b.admit(day.next().start_ms(), 5), Ok(()));
        assert_eq!((b.rows_today, b.dropped_today), (2, 0));
        assert_eq!(b.admit(day.next().start_ms(), 2), Err(DropReason::DailyCap));
        assert!(b.first_drop_today(), "a new day warns again");
    }
}
