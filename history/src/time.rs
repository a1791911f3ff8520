//! UTC days and RFC 3339 times, and the `--since`/`--until` syntax.
//!
//! History files are cut at UTC midnight and every row carries its time twice (RFC 3339 for
//! people, Unix milliseconds for programs), so the crate needs exactly two conversions: days ↔
//! year-month-day and milliseconds ↔ `YYYY-MM-DDTHH:MM:SS.mmmZ`. Both are a few lines of
//! arithmetic (Howard Hinnant's `days_from_civil` / `civil_from_days`,
//! <https://howardhinnant.github.io/date_algorithms.html>), not worth a date crate.
//!
//! Times are `u64` Unix milliseconds like everywhere else in pifleet; nothing before 1970 is
//! representable, which is fine for a recorder that stamps rows with its own clock.

use std::fmt;
use std::str::FromStr;

const MS_PER_DAY: u64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (Hinnant's `civil_from_days`): `(year, month, day)`.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// One UTC day: the unit of a history file (`<device>/<YYYY-MM-DD>.csv`). Ordered, so file
/// names sort and compare the same way the days do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(u32);

impl Day {
    /// The UTC day a Unix-millisecond time falls on.
    pub fn of_ms(ms: u64) -> Day {
        Day((ms / MS_PER_DAY) as u32)
    }

    /// Days since 1970-01-01.
    pub fn number(self) -> u32 {
        self.0
    }

    pub fn from_number(days: u32) -> Day {
        Day(days)
    }

    /// A valid date from 1970-01-01 to 9999-12-31 (file names have four-digit years).
    pub fn from_ymd(year: i64, month: u32, day: u32) -> Option<Day> {
        if !(1970..=9999).contains(&year)
            || !(1..=12).contains(&month)
            || day == 0
            || day > days_in_month(year, month)
        {
            return None;
        }
        Some(Day(days_from_civil(year, month, day) as u32))
    }

    pub fn ymd(self) -> (i64, u32, u32) {
        civil_from_days(i64::from(self.0))
    }

    /// Midnight UTC at the start of this day, in Unix milliseconds.
    pub fn start_ms(self) -> u64 {
        u64::from(self.0) * MS_PER_DAY
    }

    /// Midnight UTC at the start of the next day (the exclusive end of this one).
    pub fn end_ms(self) -> u64 {
        self.start_ms() + MS_PER_DAY
    }

    pub fn next(self) -> Day {
        Day(self.0 + 1)
    }

    /// `n` days earlier, stopping at 1970-01-01.
    pub fn minus(self, n: u32) -> Day {
        Day(self.0.saturating_sub(n))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// Why a day name or a time was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error(
        "{0:?} is not a time: use a duration back from now (90s, 15m, 24h, 7d, 2w), `now`, \
         a date (2026-11-22, midnight UTC) or an RFC 3339 time (2026-11-22T10:00:00Z)"
    )]
    Unrecognized(String),
    #[error("{0:?} is before 1970-01-01, which history cannot hold")]
    BeforeEpoch(String),
}

impl FromStr for Day {
    type Err = TimeError;
    /// `YYYY-MM-DD`, exactly (it is a file name, so there is one spelling).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TimeError::Unrecognized(s.to_string());
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let y = digits(&b[0..4]).ok_or_else(bad)?;
        let m = digits(&b[5..7]).ok_or_else(bad)?;
        let d = digits(&b[8..10]).ok_or_else(bad)?;
        Day::from_ymd(y as i64, m as u32, d as u32).ok_or_else(bad)
    }
}

fn digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The length of [`write_rfc3339`]'s output.
pub const RFC3339_LEN: usize = 24;

/// Writes `YYYY-MM-DDTHH:MM:SS.mmmZ` into `out`. The reader formats every row's `unix_ms` this
/// way and compares it with the row's `time` column; that equality is what exposes a line cut
/// short by a crash (see `row`), so it has to be cheap: no allocation, no formatting machinery.
pub fn write_rfc3339(ms: u64, out: &mut [u8; RFC3339_LEN]) {
    let (y, mo, d) = civil_from_days((ms / MS_PER_DAY) as i64);
    let in_day = ms % MS_PER_DAY;
    let (h, mi, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    let put = |out: &mut [u8; RFC3339_LEN], at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(out, 0, 4, y as u64);
    out[4] = b'-';
    put(out, 5, 2, u64::from(mo));
    out[7] = b'-';
    put(out, 8, 2, u64::from(d));
    out[10] = b'T';
    put(out, 11, 2, h);
    out[13] = b':';
    put(out, 14, 2, mi);
    out[16] = b':';
    put(out, 17, 2, s);
    out[19] = b'.';
    put(out, 20, 3, milli);
    out[23] = b'Z';
}

/// Checks that a `time` column spells a `unix_ms` exactly, as [`write_rfc3339`] would,
/// remembering the date part while consecutive rows fall on the same day (they nearly always
/// do: a file is one day), so the check costs a few compares per line.
#[derive(Debug, Default)]
pub struct TimeCheck {
    day: Option<u64>,
    date: [u8; 11],
}

impl TimeCheck {
    pub fn matches(&mut self, ms: u64, text: &[u8]) -> bool {
        if text.len() != RFC3339_LEN {
            return false;
        }
        let day = ms / MS_PER_DAY;
        if self.day != Some(day) {
            let mut full = [0; RFC3339_LEN];
            write_rfc3339(ms, &mut full);
            self.date.copy_from_slice(&full[..11]);
            self.day = Some(day);
        }
        if text[..11] != self.date {
            return false;
        }
        let in_day = ms % MS_PER_DAY;
        let two = |at: usize, v: u64| {
            text[at] == b'0' + (v / 10) as u8 && text[at + 1] == b'0' + (v % 10) as u8
        };
        let milli = in_day % 1000;
        two(11, in_day / 3_600_000)
            && text[13] == b':'
            && two(14, in_day / 60_000 % 60)
            && text[16] == b':'
            && two(17, in_day / 1000 % 60)
            && text[19] == b'.'
            && text[20] == b'0' + (milli / 100) as u8
            && two(21, milli % 100)
            && text[23] == b'Z'
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, always UTC and always with milliseconds, so the column has one
/// width and sorts as text.
pub fn format_rfc3339(ms: u64) -> String {
    let mut b = [0; RFC3339_LEN];
    write_rfc3339(ms, &mut b);
    String::from_utf8_lossy(&b).into_owned()
}

/// Parses an RFC 3339 time (`2026-11-22T10:00:00Z`, `2026-11-22T10:00:00.250+01:00`; `t`, `z`
/// and a space instead of `T` accepted) into Unix milliseconds. Fractions below a millisecond
/// are truncated.
pub fn parse_rfc3339(s: &str) -> Result<u64, TimeError> {
    let bad = || TimeError::Unrecognized(s.to_string());
    let b = s.as_bytes();
    if b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let day: Day = s[..10].parse().map_err(|_| bad())?;
    let (h, mi, sec) = (
        digits(&b[11..13]).ok_or_else(bad)?,
        digits(&b[14..16]).ok_or_else(bad)?,
        digits(&b[17..19]).ok_or_else(bad)?,
    );
    if h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    let mut rest = &b[19..];
    let mut milli = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(bad());
        }
        let mut ms_digits = [b'0'; 3];
        for (slot, d) in ms_digits.iter_mut().zip(&frac[..n]) {
            *slot = *d;
        }
        milli = digits(&ms_digits).ok_or_else(bad)?;
        rest = &frac[n..];
    }
    let offset_min: i64 = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let oh = digits(&[*oh1, *oh2]).ok_or_else(bad)? as i64;
            let om = digits(&[*om1, *om2]).ok_or_else(bad)? as i64;
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let m = oh * 60 + om;
            if *sign == b'+' {
                m
            } else {
                -m
            }
        }
        _ => return Err(bad()),
    };
    // 60 is a leap second, held as the last millisecond of the minute.
    let (sec, milli) = if sec == 60 { (59, 999) } else { (sec, milli) };
    let local = day.start_ms() as i64 + ((h * 3600 + mi * 60 + sec) * 1000 + milli) as i64;
    let utc = local - offset_min * 60_000;
    u64::try_from(utc).map_err(|_| TimeError::BeforeEpoch(s.to_string()))
}

/// A `--since`/`--until` value, relative to `now_ms`:
/// - `now`;
/// - a duration back from now: a whole number and a unit, `ms`, `s`, `m`, `h`, `d` or `w`
///   (`90s`, `15m`, `24h`, `7d`);
/// - a date, `YYYY-MM-DD`: midnight UTC at its start (so `--since 2026-11-21 --until
///   2026-11-22` is the whole of the 21st);
/// - an RFC 3339 time.
///
/// The dashboard's query parameters use the same syntax, so it lives here rather than in the
/// CLI.
pub fn parse_when(s: &str, now_ms: u64) -> Result<u64, TimeError> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    if let Some(ms) = parse_duration_ms(t) {
        return Ok(now_ms.saturating_sub(ms));
    }
    if t.len() == 10 {
        return t.parse::<Day>().map(Day::start_ms);
    }
    parse_rfc3339(t)
}

/// `90s`, `15m`, `24h`, `7d`, `2w`, `500ms` as milliseconds; `None` if `s` is not one.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n = digits(n.as_bytes())?;
    let per = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => MS_PER_DAY,
        "w" => 7 * MS_PER_DAY,
        _ => return None,
    };
    n.checked_mul(per)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn civil_conversions_round_trip_over_centuries_and_leap_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for days in (-800_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(
            Day::from_ymd(2024, 2, 29).unwrap().to_string(),
            "2024-02-29"
        );
        assert_eq!(Day::from_ymd(2023, 2, 29), None);
        assert_eq!(Day::from_ymd(2100, 2, 29), None);
        assert!(Day::from_ymd(2000, 2, 29).is_some());
        assert_eq!(Day::from_ymd(1969, 12, 31), None);
    }

    #[test]
    fn a_day_starts_and_ends_at_utc_midnight() {
        // 2023-11-14T22:13:20Z
        let day = Day::of_ms(1_700_000_000_000);
        assert_eq!(day.to_string(), "2023-11-14");
        assert_eq!(format_rfc3339(day.start_ms()), "2023-11-14T00:00:00.000Z");
        assert_eq!(Day::of_ms(day.end_ms() - 1), day);
        assert_eq!(Day::of_ms(day.end_ms()), day.next());
        assert_eq!(day.next().to_string(), "2023-11-15");
        assert_eq!("2023-11-14".parse::<Day>(), Ok(day));
        for bad in [
            "2023-11-4",
            "2023-13-01",
            "2023/11/14",
            "2023-11-14x",
            "0000-01-01",
        ] {
            assert!(bad.parse::<Day>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_formats_with_milliseconds_and_parses_offsets() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123Z"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(parse_rfc3339("2023-11-14t22:13:20z"), Ok(1_700_000_000_000));
        assert_eq!(
            parse_rfc3339("2023-11-14 23:13:20.1239+01:00"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T20:13:20-02:00"),
            Ok(1_700_000_000_000)
        );
        assert!(matches!(
            parse_rfc3339("1970-01-01T00:30:00+01:00"),
            Err(TimeError::BeforeEpoch(_))
        ));
        for bad in [
            "2023-11-14T22:13:20",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13Z",
            "2023-11-14T22:13:20+0100",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_time_check_agrees_with_formatting() {
        let mut check = TimeCheck::default();
        for ms in (1_700_000_000_000..1_700_000_000_000 + 3 * 86_400_000).step_by(999_983) {
            let text = format_rfc3339(ms);
            assert!(check.matches(ms, text.as_bytes()), "{text}");
            assert!(!check.matches(ms + 1, text.as_bytes()));
            assert!(!check.matches(ms + 86_400_000, text.as_bytes()));
            assert!(!check.matches(ms, &text.as_bytes()[..23]));
        }
    }

    #[test]
    fn since_and_until_accept_durations_dates_and_times() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_when("90s", now), Ok(now - 90_000));
        assert_eq!(parse_when("15m", now), Ok(now - 900_000));
        assert_eq!(parse_when("24h", now), Ok(now - 86_400_000));
        assert_eq!(parse_when("7d", now), Ok(now - 7 * 86_400_000));
        assert_eq!(parse_when("2w", now), Ok(now - 14 * 86_400_000));
        assert_eq!(parse_when("now", now), Ok(now));
        assert_eq!(parse_when("100000d", now), Ok(0), "saturates at the epoch");
        assert_eq!(
            parse_when("2023-11-14", now),
            Ok(Day::of_ms(now).start_ms())
        );
        assert_eq!(parse_when("2023-11-14T22:13:20Z", now), Ok(now));
        for bad in [
            "",
            "24",
            "h",
            "1.5h",
            "-1h",
            "24 h",
            "yesterday",
            "2023-11-14T",
        ] {
            let e = parse_when(bad, now).unwrap_err();
            assert!(e.to_string().contains("90s, 15m, 24h, 7d"), "{bad}: {e}");
        }
    }
}
