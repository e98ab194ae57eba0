//! vpm's long CSV format: `timestamp,vm,pid,resource,value`, one row per
//! tick × VM × resource. Every later command reads it; the README defines it.
//!
//! Fields are quoted (RFC 4180) whenever they contain a comma, a quote, or a
//! line break, so no VM name can break a row; names are also sanitized by
//! [`crate::identity`] before they get here.

use std::io::{self, Write};

/// The header line, without the newline.
pub const HEADER: &str = "timestamp,vm,pid,resource,value";

/// One sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Unix seconds at the end of the tick (millisecond precision).
    pub timestamp: f64,
    /// VM name.
    pub vm: String,
    /// VMM process id.
    pub pid: u32,
    /// Resource name with its unit, e.g. `pio_per_s`, `mem_bytes`.
    pub resource: String,
    /// Per-second rate over the tick for counters, current value for gauges.
    pub value: f64,
}

/// Quotes `field` for CSV when it needs it.
pub fn quote(field: &str) -> std::borrow::Cow<'_, str> {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\"")).into()
    } else {
        field.into()
    }
}

/// Formats a value: integers without a fraction, others with up to 6
/// decimals, and values below 0.001 with 6 significant digits (so a small
/// rate is not written as 0).
pub fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let decimals = if v != 0.0 && v.abs() < 1e-3 {
        // 6 significant digits: 4e-7 → 0.0000004.
        let magnitude = v.abs().log10().floor() as i32;
        usize::try_from(5 - magnitude).unwrap_or(6).min(30)
    } else {
        6
    };
    let s = format!("{v:.decimals$}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Writes rows in the long format.
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// Starts a file: writes the header.
    pub fn new(mut out: W) -> io::Result<Self> {
        writeln!(out, "{HEADER}")?;
        Ok(Self { out })
    }

    /// Continues a file that already has its header.
    pub fn append(out: W) -> Self {
        Self { out }
    }

    /// Writes one row.
    pub fn write(&mut self, row: &Row) -> io::Result<()> {
        writeln!(
            self.out,
            "{:.3},{},{},{},{}",
            row.timestamp,
            quote(&row.vm),
            row.pid,
            quote(&row.resource),
            format_value(row.value)
        )
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Returns the underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_quoted_so_rows_stay_five_fields() {
        let mut w = Writer::new(Vec::new()).expect("header");
        w.write(&Row {
            timestamp: 1_700_000_000.5,
            vm: "a,\"b\"\nc".into(),
            pid: 7,
            resource: "pio_per_s".into(),
            value: 12.0,
        })
        .expect("row");
        let text = String::from_utf8(w.into_inner()).expect("utf8");
        assert_eq!(
            text,
            "timestamp,vm,pid,resource,value\n1700000000.500,\"a,\"\"b\"\"\nc\",7,pio_per_s,12\n"
        );
    }

    #[test]
    fn values_are_compact() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(1.0 / 3.0), "0.333333");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(4e-7), "0.0000004");
        assert_eq!(format_value(1.0 / 3.0 * 1e-4), "0.0000333333");
        assert_eq!(format_value(0.000999), "0.000999");
    }
}
