//! One row of history, its CSV line and its JSON form.
//!
//! Columns, in this order (the header line of every file is [`HEADER`]):
//!
//! | column | content |
//! |---|---|
//! | `time` | when the recorder received it: RFC 3339 UTC with milliseconds |
//! | `kind` | `sensor`, `input`, `output`, `presence`, `event` or `recorder` |
//! | `name` | the sensor, input or output name; the event's kind; empty for presence |
//! | `value` | the reading; 1/0 for on/off, active/inactive, online/offline; empty for events |
//! | `unit` | the sensor's unit |
//! | `source` | what set an output (`command`, `initial`, `restore`, `legacy`); a sensor's kind |
//! | `command_id` | the command an output state acknowledges or an event refuses |
//! | `detail` | free text: an event's message, presence in words |
//! | `device_ms` | the device's own timestamp (Unix ms), when it sent one |
//! | `unix_ms` | the same instant as `time`, in Unix milliseconds |
//!
//! Why `unix_ms` is last and repeats `time`: a line cut short (a crash mid-write, a full disk)
//! always loses its end, so its last field is shortened or missing. The reader accepts a line
//! only if `unix_ms` formats exactly to `time`, which no truncated line can satisfy; without
//! that check `…,41.5,°C,cpu_temp,,,1700000003000,17000` would read as a plausible row.
//!
//! Why the recorder's time and not the device's: a Pi without a real-time clock reports 1970
//! until NTP has synced, and device clocks drift apart; files are cut by the one clock that is
//! the same for every device. The device's opinion is kept in `device_ms`.

use serde::{Deserialize, Serialize};

use crate::csv::{push_field, split_line, CsvError, Fields};
use crate::time::{write_rfc3339, TimeCheck, RFC3339_LEN};

/// The first line of every history file.
pub const HEADER: &str = "time,kind,name,value,unit,source,command_id,detail,device_ms,unix_ms";

/// How many columns a line has.
pub const COLUMNS: usize = 10;

/// The longest `unit`, `source` and `command_id` written (bytes); longer ones are cut at a
/// character boundary. Together with [`MAX_DETAIL`] this bounds a line, so the per-day row cap
/// also bounds a file's size.
pub const MAX_TEXT: usize = 128;

/// The longest `detail` written (bytes).
pub const MAX_DETAIL: usize = 1024;

/// What a row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A sensor reading (`value`, `unit`; the sensor's kind in `source`).
    Sensor,
    /// An input's state: `value` 1 active (a button pressed), 0 inactive.
    Input,
    /// An output's state: `value` 1 on, 0 off, with `source` and `command_id`.
    Output,
    /// The device came online (1) or went offline (0).
    Presence,
    /// Something the device refused or failed at (`name` is the event kind).
    Event,
    /// A note by the recorder itself, e.g. that it started dropping this device's rows.
    Recorder,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sensor => "sensor",
            Kind::Input => "input",
            Kind::Output => "output",
            Kind::Presence => "presence",
            Kind::Event => "event",
            Kind::Recorder => "recorder",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "sensor" => Kind::Sensor,
            "input" => Kind::Input,
            "output" => Kind::Output,
            "presence" => Kind::Presence,
            "event" => Kind::Event,
            "recorder" => Kind::Recorder,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One recorded fact. The JSON form (in `pifleet history --json` and the dashboard's API) uses
/// the CSV column names, without the redundant `time`; absent fields are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// When the recorder received it (Unix ms, UTC).
    pub unix_ms: u64,
    pub kind: Kind,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The device's own timestamp, when it sent one (the last will carries none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ms: Option<u64>,
}

/// Why a line was not read as a row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("{0}")]
    Csv(#[from] CsvError),
    #[error("unix_ms {unix_ms:?} does not match time {time:?} (a line cut short?)")]
    TimeMismatch { time: String, unix_ms: String },
    #[error("unknown kind {0:?}")]
    Kind(String),
    #[error("{column} {text:?} is not a number")]
    Number { column: &'static str, text: String },
}

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

impl Row {
    /// A row of `kind` and `name` at `unix_ms` with every other column empty.
    pub fn new(unix_ms: u64, kind: Kind, name: impl Into<String>) -> Row {
        Row {
            unix_ms,
            kind,
            name: name.into(),
            value: None,
            unit: None,
            source: None,
            command_id: None,
            detail: None,
            device_ms: None,
        }
    }

    /// Applies the limits every written row obeys: text columns cut to [`MAX_TEXT`] /
    /// [`MAX_DETAIL`] bytes, empty text as absent, a non-finite value as absent (CSV
    /// readers and JSON disagree about `NaN`).
    pub fn sanitize(&mut self) {
        cut(&mut self.name, MAX_TEXT);
        for t in [&mut self.unit, &mut self.source, &mut self.command_id] {
            if let Some(s) = t {
                cut(s, MAX_TEXT);
            }
            if t.as_deref() == Some("") {
                *t = None;
            }
        }
        if let Some(d) = &mut self.detail {
            cut(d, MAX_DETAIL);
        }
        if self.detail.as_deref() == Some("") {
            self.detail = None;
        }
        if self.value.is_some_and(|v| !v.is_finite()) {
            self.value = None;
        }
    }

    /// Appends this row's line, `\n` included.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        let mut time = [0; RFC3339_LEN];
        write_rfc3339(self.unix_ms, &mut time);
        out.extend_from_slice(&time);
        out.push(b',');
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.push(b',');
        push_field(out, &self.name);
        out.push(b',');
        if let Some(v) = self.value {
            // Rust's shortest representation that reads back to the same f64 (`41.5`, `1`).
            out.extend_from_slice(v.to_string().as_bytes());
        }
        for t in [&self.unit, &self.source, &self.command_id, &self.detail] {
            out.push(b',');
            if let Some(s) = t {
                push_field(out, s);
            }
        }
        out.push(b',');
        if let Some(d) = self.device_ms {
            out.extend_from_slice(d.to_string().as_bytes());
        }
        out.push(b',');
        out.extend_from_slice(self.unix_ms.to_string().as_bytes());
        out.push(b'\n');
    }

    /// This row's line, `\n` included.
    pub fn to_line(&self) -> String {
        let mut out = Vec::with_capacity(96);
        self.write_line(&mut out);
        String::from_utf8(out).expect("rows are UTF-8")
    }

    /// Reads one line (with or without its line end).
    pub fn parse_line(line: &[u8]) -> Result<Row, LineError> {
        RawRow::parse(line, &mut TimeCheck::default())?.into_row()
    }
}

/// A line split and checked but not yet converted: what a query needs to filter cheaply
/// before paying for every column.
pub(crate) struct RawRow<'a> {
    pub unix_ms: u64,
    pub kind: Kind,
    fields: Fields<'a, COLUMNS>,
}

fn number<T: std::str::FromStr>(column: &'static str, s: &str) -> Result<Option<T>, LineError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| LineError::Number {
        column,
        text: s.to_string(),
    })
}

fn text(c: &str) -> Option<String> {
    (!c.is_empty()).then(|| c.to_string())
}

impl<'a> RawRow<'a> {
    /// Splits and checks a line: the right number of fields, a known kind, and `unix_ms`
    /// agreeing with `time` (the torn-line check).
    pub fn parse(line: &'a [u8], check: &mut TimeCheck) -> Result<RawRow<'a>, LineError> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let fields = split_line::<COLUMNS>(line)?;
        let (time, ms) = (fields.bytes(0), fields.bytes(9));
        let mismatch = || LineError::TimeMismatch {
            time: String::from_utf8_lossy(time).into_owned(),
            unix_ms: String::from_utf8_lossy(ms).into_owned(),
        };
        // Digits only, no leading zero: then exactly one spelling per instant.
        if ms.is_empty() || ms.len() > 19 || (ms.len() > 1 && ms[0] == b'0') {
            return Err(mismatch());
        }
        let mut unix_ms = 0u64;
        for &d in ms {
            if !d.is_ascii_digit() {
                return Err(mismatch());
            }
            unix_ms = unix_ms * 10 + u64::from(d - b'0');
        }
        if !check.matches(unix_ms, time) {
            return Err(mismatch());
        }
        let kind = std::str::from_utf8(fields.bytes(1))
            .ok()
            .and_then(Kind::parse)
            .ok_or_else(|| LineError::Kind(String::from_utf8_lossy(fields.bytes(1)).into()))?;
        Ok(RawRow {
            unix_ms,
            kind,
            fields,
        })
    }

    /// Column `i` (see [`HEADER`]), unquoted.
    #[inline]
    pub fn field(&self, i: usize) -> Result<&str, LineError> {
        Ok(self.fields.get(i)?)
    }

    /// Column `i` as bytes, unchecked: for comparing.
    #[inline]
    pub fn bytes(&self, i: usize) -> &[u8] {
        self.fields.bytes(i)
    }

    /// The `name` column as bytes, for comparing with a name (which is valid UTF-8, so equal
    /// bytes are a valid field).
    #[inline]
    pub fn name_bytes(&self) -> &[u8] {
        self.fields.bytes(2)
    }

    /// The `value` column (empty: `None`).
    pub fn value(&self) -> Result<Option<f64>, LineError> {
        number("value", self.field(3)?)
    }

    pub fn into_row(self) -> Result<Row, LineError> {
        Ok(Row {
            unix_ms: self.unix_ms,
            kind: self.kind,
            name: self.field(2)?.to_string(),
            value: self.value()?,
            unit: text(self.field(4)?),
            source: text(self.field(5)?),
            command_id: text(self.field(6)?),
            detail: text(self.field(7)?),
            device_ms: number("device_ms", self.field(8)?)?,
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn reading() -> Row {
        Row {
            value: Some(41.5),
            unit: Some("°C".into()),
            source: Some("cpu_temp".into()),
            device_ms: Some(1_700_000_003_000),
            ..Row::new(1_700_000_003_120, Kind::Sensor, "cpu")
        }
    }

    #[test]
    fn a_reading_is_one_readable_line() {
        assert_eq!(
            reading().to_line(),
            "2023-11-14T22:13:23.120Z,sensor,cpu,41.5,°C,cpu_temp,,,1700000003000,1700000003120\n"
        );
        assert_eq!(
            HEADER.split(',').count(),
            COLUMNS,
            "the header names every column"
        );
    }

    #[test]
    fn rows_round_trip_through_csv_with_quoting() {
        let event = Row {
            command_id: Some("id,with \"quotes\"".into()),
            detail: Some("refused command c0ffee02: no output named \"fan\", sorry".into()),
            device_ms: Some(5),
            ..Row::new(1_700_000_004_000, Kind::Event, "unknown_output")
        };
        let line = event.to_line();
        assert_eq!(
            line,
            "2023-11-14T22:13:24.000Z,event,unknown_output,,,,\"id,with \"\"quotes\"\"\",\
             \"refused command c0ffee02: no output named \"\"fan\"\", sorry\",5,1700000004000\n"
        );
        assert_eq!(Row::parse_line(line.as_bytes()).unwrap(), event);
        for row in [
            reading(),
            Row::new(0, Kind::Presence, ""),
            Row {
                value: Some(-0.000123),
                ..Row::new(1, Kind::Sensor, "t")
            },
            Row {
                value: Some(1e300),
                ..Row::new(2, Kind::Sensor, "t")
            },
        ] {
            let line = row.to_line();
            assert_eq!(Row::parse_line(line.as_bytes()).unwrap(), row, "{line}");
        }
        // CRLF from a spreadsheet round trip is accepted.
        let crlf = reading().to_line().replace('\n', "\r\n");
        assert_eq!(Row::parse_line(crlf.as_bytes()).unwrap(), reading());
    }

    #[test]
    fn every_line_cut_short_is_refused() {
        let line = reading().to_line();
        let body = line.trim_end_matches('\n');
        for cut in 0..body.len() {
            if !body.is_char_boundary(cut) {
                assert!(Row::parse_line(&body.as_bytes()[..cut]).is_err());
                continue;
            }
            assert!(
                Row::parse_line(&body.as_bytes()[..cut]).is_err(),
                "accepted a line cut at {cut}: {:?}",
                &body[..cut]
            );
        }
        assert!(Row::parse_line(body.as_bytes()).is_ok());
        // Cut inside a quoted detail, too.
        let event = Row {
            detail: Some("a, b".into()),
            ..Row::new(1_700_000_004_000, Kind::Event, "gpio_error")
        }
        .to_line();
        let at = event.find("a, b").unwrap() + 2;
        assert_eq!(
            Row::parse_line(&event.as_bytes()[..at]),
            Err(LineError::Csv(CsvError::Unterminated))
        );
    }

    #[test]
    fn a_header_or_a_foreign_line_is_not_a_row() {
        assert!(Row::parse_line(HEADER.as_bytes()).is_err());
        let other_kind = reading().to_line().replace(",sensor,", ",gauge,");
        assert_eq!(
            Row::parse_line(other_kind.as_bytes()),
            Err(LineError::Kind("gauge".into()))
        );
        let leading_zero = reading()
            .to_line()
            .replace(",1700000003120", ",01700000003120");
        assert!(matches!(
            Row::parse_line(leading_zero.as_bytes()),
            Err(LineError::TimeMismatch { .. })
        ));
    }

    #[test]
    fn sanitize_bounds_text_and_drops_non_finite_values() {
        let mut r = Row {
            value: Some(f64::NAN),
            unit: Some("é".repeat(100)),
            detail: Some("x".repeat(5000)),
            source: Some(String::new()),
            ..Row::new(0, Kind::Sensor, "s")
        };
        r.sanitize();
        assert_eq!(r.value, None);
        assert_eq!(r.unit.as_ref().unwrap().len(), MAX_TEXT);
        assert_eq!(r.detail.as_ref().unwrap().len(), MAX_DETAIL);
        assert_eq!(r.source, None);
    }

    #[test]
    fn json_uses_the_column_names_and_leaves_out_absent_fields() {
        assert_eq!(
            serde_json::to_string(&reading()).unwrap(),
            r#"{"unix_ms":1700000003120,"kind":"sensor","name":"cpu","value":41.5,"unit":"°C","source":"cpu_temp","device_ms":1700000003000}"#
        );
        let back: Row = serde_json::from_str(r#"{"unix_ms":1,"kind":"presence"}"#).unwrap();
        assert_eq!(back, Row::new(1, Kind::Presence, ""));
    }
}
