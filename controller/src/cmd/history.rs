//! `pifleet history`: what one device reported, read from the history directory the recorder
//! writes (`DATA_DIR/<device>/<YYYY-MM-DD>.csv`, see docs/history.md). It reads files, so it
//! runs on the broker's machine; no broker connection is made. The dashboard will serve the
//! same queries over HTTP, with the same JSON types (`pifleet_history::report`).
//!
//! Exit codes: 0 rows found; 1 none (no history for the device, none in the range, or a file
//! could not be read); 2 usage (bad time, `--csv` with `--json`, no such directory).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use pifleet_history::layout::{search_dirs, DIR_ENV};
use pifleet_history::time::format_rfc3339;
use pifleet_history::{
    parse_when, HistoryError, HistoryReader, HistoryRows, HistorySeries, Kind, Row, RowFilter,
    SkippedLine, TimeRange, HEADER,
};
use pifleet_proto::time::now_ms;
use pifleet_proto::Name;

use super::print_json;
use crate::cli::Global;
use crate::error::{CliError, EXIT_INCOMPLETE, EXIT_OK};
use crate::table;

#[derive(Args, Debug, Clone)]
pub struct HistoryArgs {
    /// The device.
    pub device: Name,
    /// Only this sensor's rows (also an input's or output's, or an event kind's).
    #[arg(value_name = "SENSOR")]
    pub name: Option<Name>,
    /// Start: a duration back from now (90s, 15m, 24h, 7d), a date (2026-11-22, midnight UTC)
    /// or an RFC 3339 time (2026-11-22T10:00:00Z).
    #[arg(long, default_value = "24h", value_name = "WHEN")]
    pub since: String,
    /// End (exclusive), in the same forms.
    #[arg(long, default_value = "now", value_name = "WHEN")]
    pub until: String,
    /// The rows as CSV, exactly as the files hold them (one header line).
    #[arg(long, conflicts_with = "buckets")]
    pub csv: bool,
    /// Downsample SENSOR into N equal time buckets (count, min, mean, max) instead of listing
    /// its rows.
    #[arg(long, value_name = "N", requires = "name")]
    pub buckets: Option<usize>,
    /// The history directory, on the machine the recorder runs on (default: where the broker
    /// records by default: $STATE_DIRECTORY/history, else $XDG_STATE_HOME/pifleet/history or
    /// ~/.local/state/pifleet/history, else /var/lib/pifleet/history; the first that exists).
    #[arg(long, env = DIR_ENV, value_name = "DATA_DIR")]
    pub dir: Option<PathBuf>,
}

/// The directory given, or the first of the default places that exists.
fn history_dir(given: Option<&PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(d) = given {
        return Ok(d.clone());
    }
    let dirs = search_dirs();
    if let Some(d) = dirs.iter().find(|d| d.is_dir()) {
        return Ok(d.clone());
    }
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(CliError::Usage(format!(
        "no history directory: looked in {} (give --dir or set {DIR_ENV}; history is recorded on \
         the broker's machine)",
        list.join(" and ")
    )))
}

pub fn exec(g: &Global, a: &HistoryArgs) -> Result<u8, CliError> {
    if g.json && a.csv {
        return Err(CliError::Usage(
            "--csv and --json are two different outputs: choose one".into(),
        ));
    }
    let usage = |e: HistoryError| CliError::Usage(e.to_string());
    let now = now_ms();
    let since = parse_when(&a.since, now).map_err(|e| usage(e.into()))?;
    let until = parse_when(&a.until, now).map_err(|e| usage(e.into()))?;
    let range = TimeRange::new(since, until).map_err(usage)?;
    let dir = history_dir(a.dir.as_ref())?;
    let reader = HistoryReader::new(&dir);
    reader.check().map_err(|e| match e {
        HistoryError::NoDir(_) | HistoryError::NotDir(_) => CliError::Usage(format!(
            "{e} (give --dir or set {DIR_ENV}; history is recorded on the broker's machine)"
        )),
        other => CliError::Usage(other.to_string()),
    })?;
    let name = a.name.as_ref().map(|n| n.to_string());

    let (found, skipped, skipped_total) = match a.buckets {
        Some(n) => {
            let name = name
                .as_deref()
                .expect("clap requires SENSOR with --buckets");
            let series = match reader.series(&a.device, name, &range, n) {
                Ok(s) => s,
                Err(e @ HistoryError::Buckets(_)) => return Err(usage(e)),
                Err(e) => return Ok(unreadable(e)),
            };
            if g.json {
                print_json(&series)?;
            } else if series.points > 0 {
                print_series(&series)?;
            }
            (series.points > 0, series.skipped, series.skipped_total)
        }
        None => {
            let filter = RowFilter { name, kind: None };
            let rows = match reader.rows(&a.device, &range, &filter) {
                Ok(r) => r,
                Err(e) => return Ok(unreadable(e)),
            };
            if g.json {
                print_json(&rows)?;
            } else if a.csv {
                print_csv(&rows.rows)?;
            } else if !rows.rows.is_empty() {
                print_rows(&rows)?;
            }
            let HistoryRows {
                rows,
                skipped,
                skipped_total,
                ..
            } = rows;
            (!rows.is_empty(), skipped, skipped_total)
        }
    };
    warn_skipped(&skipped, skipped_total);
    if found {
        return Ok(EXIT_OK);
    }
    if reader.has_device(&a.device) {
        eprintln!(
            "pifleet: no rows for {}{} from {} to {}",
            a.device,
            a.name.as_ref().map_or(String::new(), |n| format!(" {n}")),
            format_rfc3339(range.since_ms),
            format_rfc3339(range.until_ms)
        );
    } else {
        eprintln!(
            "pifleet: no history for device {} in {}",
            a.device,
            dir.display()
        );
    }
    Ok(EXIT_INCOMPLETE)
}

fn unreadable(e: HistoryError) -> u8 {
    let _ = std::io::stdout().flush();
    eprintln!("pifleet: {e}");
    EXIT_INCOMPLETE
}

fn warn_skipped(listed: &[SkippedLine], total: u64) {
    for s in listed {
        eprintln!(
            "pifleet: skipped line {} of {}: {}",
            s.line, s.file, s.reason
        );
    }
    if total > listed.len() as u64 {
        eprintln!(
            "pifleet: skipped {} more unreadable lines",
            total - listed.len() as u64
        );
    }
}

fn print_csv(rows: &[Row]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    out.write_all(HEADER.as_bytes())?;
    out.write_all(b"\n")?;
    let mut line = Vec::with_capacity(128);
    for r in rows {
        line.clear();
        r.write_line(&mut line);
        out.write_all(&line)?;
    }
    out.flush()
}

/// A value as a person reads it: `41.5 °C`, `on`, `pressed`… The CSV and JSON keep numbers.
fn human_value(r: &Row) -> String {
    let Some(v) = r.value else {
        return "-".into();
    };
    let flag = |yes: &str, no: &str| if v != 0.0 { yes } else { no }.to_string();
    match r.kind {
        Kind::Output => flag("on", "off"),
        Kind::Input => flag("active", "inactive"),
        Kind::Presence => flag("online", "offline"),
        _ => match &r.unit {
            Some(u) => format!("{v} {u}"),
            None => v.to_string(),
        },
    }
}

fn print_rows(rows: &HistoryRows) -> std::io::Result<()> {
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let cells: Vec<Vec<String>> = rows
        .rows
        .iter()
        .map(|r| {
            vec![
                format_rfc3339(r.unix_ms),
                r.kind.to_string(),
                if r.name.is_empty() {
                    "-".into()
                } else {
                    r.name.clone()
                },
                human_value(r),
                dash(&r.source),
                dash(&r.command_id),
                r.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let text = table::render(
        &[
            "TIME", "KIND", "NAME", "VALUE", "SOURCE", "COMMAND", "DETAIL",
        ],
        &cells,
    );
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// At most three decimals, without trailing zeros: `20.333`, `0.5`, `21`.
fn short(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

fn print_series(s: &HistorySeries) -> std::io::Result<()> {
    let cells: Vec<Vec<String>> = s
        .buckets
        .iter()
        .map(|b| {
            vec![
                format_rfc3339(b.start_ms),
                b.count.to_string(),
                short(b.min),
                short(b.mean),
                short(b.max),
            ]
        })
        .collect();
    let unit = s.unit.as_ref().map_or(String::new(), |u| format!(" ({u})"));
    let (min, mean, max) = (
        format!("MIN{unit}"),
        format!("MEAN{unit}"),
        format!("MAX{unit}"),
    );
    let text = table::render(&["BUCKET START", "COUNT", &min, &mean, &max], &cells);
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn values_read_as_words_for_switches_and_with_units_for_sensors() {
        let mut r = Row::new(0, Kind::Output, "led");
        r.value = Some(1.0);
        assert_eq!(human_value(&r), "on");
        r.kind = Kind::Input;
        r.value = Some(0.0);
        assert_eq!(human_value(&r), "inactive");
        r.kind = Kind::Sensor;
        r.value = Some(41.5);
        r.unit = Some("°C".into());
        assert_eq!(human_value(&r), "41.5 °C");
        r.kind = Kind::Event;
        r.value = None;
        assert_eq!(human_value(&r), "-");
        assert_eq!(short(20.0 / 3.0), "6.667");
        assert_eq!(short(21.0), "21");
        assert_eq!(short(0.5), "0.5");
        assert_eq!(short(-0.0001), "0");
    }
}
