//! Counters of the times a bound bit or the engine refused something, so an operator can see
//! an attack or a misconfigured client without reading every log line (each bite is also
//! logged, at powers of two so a flood cannot flood the log).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// One counter per kind of refusal.
#[derive(Debug, Default)]
pub struct Counters {
    /// PUBLISH topics and last wills beyond `max_topic_len`/`max_topic_levels` (connection
    /// closed), and SUBSCRIBE filters beyond them (refused).
    pub topics_refused: AtomicU64,
    /// Filters refused because the session holds `max_subscriptions_per_client`.
    pub subscriptions_refused: AtomicU64,
    /// Retained messages not stored because of `max_retained_messages`/`max_retained_bytes`.
    pub retained_refused: AtomicU64,
    /// Retained PUBLISHes to a command topic, delivered but never stored.
    pub retained_commands_refused: AtomicU64,
    /// SUBSCRIBEs whose retained messages passed `max_retained_per_subscription` (the rest
    /// were not sent).
    pub retained_truncated: AtomicU64,
    /// New sessions refused with CONNACK 3 (`max_sessions`, `max_sessions_per_identity`).
    pub sessions_refused: AtomicU64,
    /// Offline sessions replaced by a newer one of the same identity.
    pub sessions_evicted: AtomicU64,
    /// Offline sessions forgotten after `session_expiry_secs`.
    pub sessions_expired: AtomicU64,
    /// Persistent sessions of another identity that were not resumed.
    pub sessions_not_resumed: AtomicU64,
    /// Retained messages, sessions, subscriptions and queued messages read from the state
    /// directory but not restored: beyond today's limits, or against a rule.
    pub state_dropped: AtomicU64,
}

/// The counters at one moment, with the queue drops (counted by the queues themselves).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CounterSnapshot {
    pub topics_refused: u64,
    pub subscriptions_refused: u64,
    pub retained_refused: u64,
    pub retained_commands_refused: u64,
    pub retained_truncated: u64,
    pub sessions_refused: u64,
    pub sessions_evicted: u64,
    pub sessions_expired: u64,
    pub sessions_not_resumed: u64,
    pub state_dropped: u64,
    pub queue_dropped: u64,
}

/// Adds one to `counter` and says whether this bite should be logged (the 1st, 2nd, 4th, …).
pub fn bump(counter: &AtomicU64) -> bool {
    (counter.fetch_add(1, Ordering::Relaxed) + 1).is_power_of_two()
}

impl Counters {
    pub fn snapshot(&self, queue_dropped: u64) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            topics_refused: get(&self.topics_refused),
            subscriptions_refused: get(&self.subscriptions_refused),
            retained_refused: get(&self.retained_refused),
            retained_commands_refused: get(&self.retained_commands_refused),
            retained_truncated: get(&self.retained_truncated),
            sessions_refused: get(&self.sessions_refused),
            sessions_evicted: get(&self.sessions_evicted),
            sessions_expired: get(&self.sessions_expired),
            sessions_not_resumed: get(&self.sessions_not_resumed),
            state_dropped: get(&self.state_dropped),
            queue_dropped,
        }
    }
}

/// Lines of one kind the engine logs per second at most: refusals and dropped connections are
/// triggered by clients, so without a bound an attacker decides how fast the log grows.
pub const LOG_LINES_PER_SEC: u32 = 20;

/// A per-kind log budget: [`LogGate::admit`] says whether a line may be written now and how
/// many were held back since the last one that was, so the log says what it left out.
#[derive(Debug, Default)]
pub struct LogGate {
    /// (second the window started, lines in it, lines held back since the last admitted one)
    window: Mutex<(u64, u32, u64)>,
}

impl LogGate {
    /// `Some(held_back)` if a line may be logged at `now_ms`, `None` if this second's budget
    /// is spent (the line is counted as held back).
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let second = now_ms / 1000;
        if w.0 != second {
            w.0 = second;
            w.1 = 0;
        }
        if w.1 >= LOG_LINES_PER_SEC {
            w.2 += 1;
            return None;
        }
        w.1 += 1;
        Some(std::mem::take(&mut w.2))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_log_gate_admits_a_budget_per_second_and_reports_what_it_held_back() {
        let gate = LogGate::default();
        for _ in 0..LOG_LINES_PER_SEC {
            assert_eq!(gate.admit(5_000), Some(0));
        }
        assert_eq!(gate.admit(5_999), None);
        assert_eq!(gate.admit(5_999), None);
        assert_eq!(
            gate.admit(6_000),
            Some(2),
            "the next second says how many were held back"
        );
        assert_eq!(gate.admit(6_001), Some(0));
    }

    #[test]
    fn bump_says_log_at_powers_of_two() {
        let c = AtomicU64::new(0);
        let logged: Vec<bool> = (0..8).map(|_| bump(&c)).collect();
        assert_eq!(logged, [true, true, false, true, false, false, false, true]);
    }
}
