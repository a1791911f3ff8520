//! The documented JSON of history queries: what `pifleet history --json` prints and what the
//! dashboard's HTTP API will serve, so a script, the CLI's tests and the browser decode one
//! type. Times are Unix milliseconds (UTC), like every `ts` in pifleet; absent fields are left
//! out.

use serde::{Deserialize, Serialize};

use crate::row::Row;

/// Raw rows of one device in `[since_ms, until_ms)`, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRows {
    pub device: String,
    pub since_ms: u64,
    pub until_ms: u64,
    pub rows: Vec<Row>,
    /// Lines that could not be read (at most [`MAX_SKIPPED_LISTED`] listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedLine>,
    /// How many lines were skipped in all.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_total: u64,
}

/// One numeric series (a sensor, or an input/output as 1/0) of one device, downsampled into
/// equal time buckets: `[since_ms + i × bucket_ms, since_ms + (i+1) × bucket_ms)`. Only buckets
/// holding at least one point are listed, so a gap in the data is a gap in `buckets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistorySeries {
    pub device: String,
    pub name: String,
    /// The unit of the newest point (sensors only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub since_ms: u64,
    pub until_ms: u64,
    pub bucket_ms: u64,
    /// Points in the range, all buckets together.
    pub points: u64,
    pub buckets: Vec<Bucket>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedLine>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_total: u64,
}

/// The points of one time bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// The bucket's start; it ends `bucket_ms` later.
    pub start_ms: u64,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// The earliest and the latest point's time in this bucket.
    pub first_ms: u64,
    pub last_ms: u64,
}

/// A line that was not read as a row, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedLine {
    /// Relative to the history directory: `kitchen/2026-11-22.csv`.
    pub file: String,
    /// 1-based line number.
    pub line: u64,
    pub reason: String,
}

/// How many skipped lines a report lists; a file of garbage should not make a huge answer.
pub const MAX_SKIPPED_LISTED: usize = 100;

fn is_zero(n: &u64) -> bool {
    *n == 0
}
