//! Timestamps on the wire are Unix epoch milliseconds: compact, sortable, and readable by any
//! language without a date parser. A Pi without a real-time clock may report 1970 until NTP has
//! synced; consumers should treat timestamps as the device's opinion, not as truth.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as the wire format carries them.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A human "how long ago" for a timestamp, e.g. `3s ago`, `5m ago`, `2h ago`, `4d ago`.
pub fn ago(ts_ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(ts_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn ago_picks_the_largest_whole_unit() {
        assert_eq!(ago(1_000, 4_500), "3s ago");
        assert_eq!(ago(0, 125_000), "2m ago");
        assert_eq!(ago(0, 7_200_000), "2h ago");
        assert_eq!(ago(0, 3 * 86_400_000), "3d ago");
        // A device clock ahead of ours is "0s ago", never an underflow.
        assert_eq!(ago(10_000, 5_000), "0s ago");
    }
}
