//! Reading vpm's long CSV format ([`super::long`]), streamed, with errors that
//! name the file, the line and the column.
//!
//! [`Records`] reads a file row by row (through any [`BufRead`]) and checks each
//! row on its own; [`read`] and [`read_path`] collect the rows into per-series
//! [`Trace`]s and apply the rules between rows (order, duplicates).
//!
//! # Rules
//!
//! - **Header.** The first non-blank line must be `timestamp,vm,pid,resource,value`
//!   (a UTF-8 byte-order mark, spaces around names and letter case are tolerated).
//!   An empty file, or a header with no rows after it, is an error.
//! - **Records.** Exactly five fields, quoted per RFC 4180 as [`super::long::Writer`]
//!   writes them: a quoted field may hold commas, doubled quotes (`""`) and line
//!   breaks. Blank lines are skipped. Line numbers count physical lines from 1; a
//!   record that spans lines is named by its first line. Line endings `\n` or `\r\n`.
//! - **timestamp** (column 1): unix seconds, integer or fractional (`1764016609.250`),
//!   or RFC 3339 with `Z` or an offset (`2026-11-24T10:00:00Z`,
//!   `2026-11-24T11:00:00.5+01:00`; a space instead of `T` is accepted). Read to the
//!   millisecond (the format's precision). It must lie in 1970 .. year 5138
//!   (`0 <= t < 1e11`): a larger number is most likely milliseconds and is refused
//!   with that hint.
//! - **vm**, **resource** (columns 2, 4): any non-empty text.
//! - **pid** (column 3): an integer `0..=4294967295`; empty reads as 0 (the pid is
//!   informational: series are keyed by vm and resource).
//! - **value** (column 5): a finite decimal number, `0 <= v <= 1e15`
//!   ([`DEFAULT_MAX_VALUE`], configurable in [`ReadOptions`]). `NaN`, `inf`, a
//!   value above the cap, or an empty or unparsable field is an error. A negative
//!   value is an error unless [`NegativeValues::ClampToZero`] is chosen, which reads
//!   it as 0 and counts it in [`ReadSummary`] (with the first line) so the caller
//!   can say so.
//! - **Order.** Rows of different series (vm, resource) interleave freely. Within
//!   a series, rows may come in any order (concatenated exports, merged files):
//!   they are sorted by time, and [`ReadSummary::out_of_order_rows`] counts the
//!   rows that came earlier than a row before them.
//! - **Repeated headers** (exports concatenated with `cat`): a later line that
//!   is the header is skipped and counted in [`ReadSummary::headers_skipped`].
//! - **Duplicates** (same series, same millisecond): an exact copy (same value)
//!   is dropped and counted in [`ReadSummary::duplicate_rows_dropped`] (an export
//!   concatenated twice); a conflicting one (different value) is an error naming
//!   both lines, because no choice between two readings would be safe.
//!
//! Every failure is an [`InputError`] with `file`, `line` and `column`, shown as
//! `trace.csv:17: column 5 (value): "NaN" is not a finite number`. Nothing here
//! panics on any input.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use super::long::{HEADER, Row};

/// Column names, in file order (column `n` is `COLUMNS[n - 1]`).
pub const COLUMNS: [&str; 5] = ["timestamp", "vm", "pid", "resource", "value"];

/// Largest value accepted by default: 1e15 (a petabyte, or 10^15 events/s).
/// Beyond it a value is surely a unit or parsing mistake, and past 2^53 ≈ 9e15
/// an `f64` no longer holds every integer.
pub const DEFAULT_MAX_VALUE: f64 = 1e15;

/// Timestamps must be below this (unix seconds; the year 5138). Larger numbers
/// are most likely milliseconds.
pub const MAX_TIMESTAMP_S: f64 = 1e11;

/// Longest record accepted, in bytes (a record spans lines only inside quotes,
/// so this bounds memory on a file with an unbalanced quote).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// What to do with a negative value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NegativeValues {
    /// An error naming the line (the default: rates and gauges cannot be negative).
    #[default]
    Reject,
    /// Read as 0 and counted in [`ReadSummary`] (for traces whose generator leaves
    /// small negative noise, such as the datacenter samples in `shared/data`).
    ClampToZero,
}

/// How strictly to read.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadOptions {
    /// Negative values: error or clamp.
    pub negative: NegativeValues,
    /// Largest accepted value ([`DEFAULT_MAX_VALUE`]).
    pub max_value: f64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            negative: NegativeValues::Reject,
            max_value: DEFAULT_MAX_VALUE,
        }
    }
}

/// A problem in the input, located by [`InputError`].
#[derive(Debug, thiserror::Error)]
pub enum InputErrorKind {
    /// The file could not be opened.
    #[error("cannot open")]
    Open(#[source] io::Error),
    /// Reading failed part-way.
    #[error("read failed")]
    Read(#[source] io::Error),
    /// Nothing but blank lines.
    #[error("empty file; expected the header \"{HEADER}\"")]
    Empty,
    /// The first line is not the header.
    #[error("expected the header \"{HEADER}\", found {found:?}")]
    Header {
        /// The line as found (cut to 80 characters).
        found: String,
    },
    /// A header and no rows.
    #[error("no data rows after the header")]
    NoRows,
    /// Not five fields.
    #[error("expected 5 columns ({HEADER}), found {found}")]
    ColumnCount {
        /// Fields found.
        found: usize,
    },
    /// A quoted field still open at the end of the file.
    #[error("quoted field opened on this line is never closed")]
    UnterminatedQuote,
    /// A record longer than [`MAX_RECORD_BYTES`].
    #[error("record longer than {limit} bytes (an unbalanced quote?)")]
    RecordTooLong {
        /// The limit.
        limit: usize,
    },
    /// A quote inside an unquoted field.
    #[error("stray quote in an unquoted field (quote the whole field and double inner quotes)")]
    StrayQuote,
    /// Something other than a comma or the line end after a closing quote.
    #[error("unexpected {found:?} after a closing quote")]
    AfterQuote {
        /// The character found.
        found: char,
    },
    /// Not UTF-8.
    #[error("not valid UTF-8 text")]
    NotUtf8,
    /// An empty required field.
    #[error("empty")]
    EmptyField,
    /// Not a number at all.
    #[error("{} is not a number", shown(text))]
    NotANumber {
        /// The field.
        text: String,
    },
    /// NaN or infinite.
    #[error("{} is not a finite number", shown(text))]
    NotFinite {
        /// The field.
        text: String,
    },
    /// Below zero.
    #[error(
        "{} is negative; values are rates or gauges (>= 0) (vpm forecast/eval --clamp-negative reads them as 0)",
        shown(text)
    )]
    Negative {
        /// The field.
        text: String,
    },
    /// Above the cap.
    #[error("{} is above the cap of {cap:e} (a unit mistake?)", shown(text))]
    TooLarge {
        /// The field.
        text: String,
        /// The cap in force.
        cap: f64,
    },
    /// Neither unix seconds nor RFC 3339.
    #[error(
        "{} is not a timestamp: expected unix seconds (1764016609.250) or RFC 3339 (2026-11-24T10:00:00Z)",
        shown(text)
    )]
    BadTimestamp {
        /// The field.
        text: String,
    },
    /// Before 1970.
    #[error("{} is before 1970 (unix seconds must be >= 0)", shown(text))]
    TimestampBefore1970 {
        /// The field.
        text: String,
    },
    /// Too far in the future (a number).
    #[error(
        "{} is past the year 5138; timestamps are unix seconds, not milliseconds",
        shown(text)
    )]
    TimestampTooLarge {
        /// The field.
        text: String,
    },
    /// Too far in the future (an RFC 3339 date).
    #[error("{} is past the year 5138, the latest date vpm reads", shown(text))]
    DateTooLate {
        /// The field.
        text: String,
    },
    /// Not a u32.
    #[error("{} is not a process id (an integer 0..=4294967295)", shown(text))]
    BadPid {
        /// The field.
        text: String,
    },
    /// Two different values for one series at one time.
    #[error(
        "duplicate timestamp {timestamp:.3} for vm {vm:?}, resource {resource:?}: line {first_line} has {first_value}, this line has {value}"
    )]
    ConflictingDuplicate {
        /// The VM.
        vm: String,
        /// The resource.
        resource: String,
        /// Unix seconds.
        timestamp: f64,
        /// The earlier line.
        first_line: u64,
        /// Its value.
        first_value: f64,
        /// This line's value.
        value: f64,
    },
}

/// An input error, located: `file:line: column n (name): problem`.
#[derive(Debug)]
pub struct InputError {
    /// The file as named by the caller.
    pub file: String,
    /// 1-based physical line (the first line of a multi-line record); `None` when
    /// the file could not be opened.
    pub line: Option<u64>,
    /// 1-based column ([`COLUMNS`]), when the problem is in one field.
    pub column: Option<usize>,
    /// What is wrong (boxed: keeps `Result<_, InputError>` small).
    pub kind: Box<InputErrorKind>,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(c) = self.column {
            match c.checked_sub(1).and_then(|i| COLUMNS.get(i)) {
                Some(name) => write!(f, "column {c} ({name}): ")?,
                None => write!(f, "column {c}: ")?,
            }
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for InputError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The kind's own message is part of ours; its cause comes next in the chain.
        std::error::Error::source(&*self.kind)
    }
}

/// One checked row and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// 1-based line where the record starts.
    pub line: u64,
    /// The row (`timestamp` is `timestamp_ms / 1000`).
    pub row: Row,
    /// The timestamp in unix milliseconds.
    pub timestamp_ms: i64,
    /// The value was negative and read as 0 ([`NegativeValues::ClampToZero`]).
    pub clamped: bool,
}

/// Streams [`Record`]s from a long CSV, checking each row; stops after the
/// first error. Memory is one record, whatever the file size.
pub struct Records<R> {
    src: R,
    file: String,
    opts: ReadOptions,
    /// Physical lines consumed.
    line: u64,
    /// Raw bytes of the current record.
    raw: Vec<u8>,
    /// Unquoted bytes of the current record's fields, and where each ends.
    fields: Vec<u8>,
    ends: Vec<usize>,
    rows: u64,
    blank_lines: u64,
    headers_skipped: u64,
    done: bool,
}

impl<R: BufRead> Records<R> {
    /// Reads and checks the header. `file` names the input in errors.
    pub fn new(src: R, file: impl Into<String>, opts: ReadOptions) -> Result<Self, InputError> {
        let mut me = Self {
            src,
            file: file.into(),
            opts,
            line: 0,
            raw: Vec::new(),
            fields: Vec::new(),
            ends: Vec::new(),
            rows: 0,
            blank_lines: 0,
            headers_skipped: 0,
            done: false,
        };
        let Some(line) = me.next_fields()? else {
            return Err(me.error(Some(1), None, InputErrorKind::Empty));
        };
        if !me.is_header(line)? {
            let found: String = String::from_utf8_lossy(&me.raw)
                .trim_end()
                .chars()
                .take(80)
                .collect();
            return Err(me.error(Some(line), None, InputErrorKind::Header { found }));
        }
        Ok(me)
    }

    /// Whether the current record is the header (the column names, in any
    /// case, fields trimmed).
    fn is_header(&self, line: u64) -> Result<bool, InputError> {
        if self.ends.len() != COLUMNS.len() {
            return Ok(false);
        }
        for (i, name) in COLUMNS.iter().enumerate() {
            if !self.field_str(i, line)?.trim().eq_ignore_ascii_case(name) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Header lines skipped after the first (exports concatenated with `cat`).
    pub fn headers_skipped(&self) -> u64 {
        self.headers_skipped
    }

    /// The file name used in errors.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Rows returned so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Blank lines skipped so far.
    pub fn blank_lines(&self) -> u64 {
        self.blank_lines
    }

    fn error(&self, line: Option<u64>, column: Option<usize>, kind: InputErrorKind) -> InputError {
        InputError {
            file: self.file.clone(),
            line,
            column,
            kind: Box::new(kind),
        }
    }

    /// Reads one physical line, appending to `raw`; `Ok(false)` at end of file.
    /// A record past [`MAX_RECORD_BYTES`] is an error before it is all read
    /// (a file without newlines must not fill the memory).
    fn read_line(&mut self) -> Result<bool, InputError> {
        let room = (MAX_RECORD_BYTES + 1).saturating_sub(self.raw.len()) as u64;
        match std::io::Read::take(&mut self.src, room).read_until(b'\n', &mut self.raw) {
            Ok(0) => Ok(false),
            Ok(_) => {
                self.line += 1;
                if self.raw.len() > MAX_RECORD_BYTES && self.raw.last() != Some(&b'\n') {
                    return Err(self.error(
                        Some(self.line),
                        None,
                        InputErrorKind::RecordTooLong {
                            limit: MAX_RECORD_BYTES,
                        },
                    ));
                }
                Ok(true)
            }
            Err(e) => Err(self.error(Some(self.line + 1), None, InputErrorKind::Read(e))),
        }
    }

    /// Reads the next non-blank record into `fields`/`ends`; returns its first
    /// line, or `None` at end of file.
    fn next_fields(&mut self) -> Result<Option<u64>, InputError> {
        loop {
            self.raw.clear();
            if !self.read_line()? {
                return Ok(None);
            }
            // A byte-order mark (spreadsheets, PowerShell) before the header,
            // which may be quoted.
            if self.line == 1 && self.raw.starts_with(b"\xEF\xBB\xBF") {
                self.raw.drain(..3);
            }
            if self.raw.iter().all(|b| b.is_ascii_whitespace()) {
                self.blank_lines += 1;
                continue;
            }
            let start = self.line;
            loop {
                match split_fields(&self.raw, &mut self.fields, &mut self.ends) {
                    Ok(Split::Complete) => return Ok(Some(start)),
                    Ok(Split::OpenQuote { column }) => {
                        if self.raw.len() > MAX_RECORD_BYTES {
                            return Err(self.error(
                                Some(start),
                                Some(column),
                                InputErrorKind::RecordTooLong {
                                    limit: MAX_RECORD_BYTES,
                                },
                            ));
                        }
                        if !self.read_line()? {
                            return Err(self.error(
                                Some(start),
                                Some(column),
                                InputErrorKind::UnterminatedQuote,
                            ));
                        }
                    }
                    Err((kind, column)) => return Err(self.error(Some(start), Some(column), kind)),
                }
            }
        }
    }

    /// Field `i` (0-based) of the current record as text.
    fn field_str(&self, i: usize, line: u64) -> Result<&str, InputError> {
        let from = if i == 0 {
            0
        } else {
            self.ends.get(i - 1).copied().unwrap_or(0)
        };
        let to = self.ends.get(i).copied().unwrap_or(from);
        let bytes = self.fields.get(from..to).unwrap_or_default();
        std::str::from_utf8(bytes)
            .map_err(|_| self.error(Some(line), Some(i + 1), InputErrorKind::NotUtf8))
    }

    fn parse_current(&self, line: u64) -> Result<Record, InputError> {
        let found = self.ends.len();
        if found != COLUMNS.len() {
            // Point at the first missing or the first extra column.
            let column = if found < COLUMNS.len() {
                found + 1
            } else {
                COLUMNS.len() + 1
            };
            return Err(self.error(
                Some(line),
                Some(column),
                InputErrorKind::ColumnCount { found },
            ));
        }
        let at = |col: usize, kind| self.error(Some(line), Some(col), kind);
        let timestamp_ms = parse_timestamp(self.field_str(0, line)?).map_err(|k| at(1, k))?;
        let vm = self.field_str(1, line)?;
        if vm.is_empty() {
            return Err(at(2, InputErrorKind::EmptyField));
        }
        let pid = parse_pid(self.field_str(2, line)?).map_err(|k| at(3, k))?;
        let resource = self.field_str(3, line)?;
        if resource.is_empty() {
            return Err(at(4, InputErrorKind::EmptyField));
        }
        let (value, clamped) =
            parse_value(self.field_str(4, line)?, &self.opts).map_err(|k| at(5, k))?;
        Ok(Record {
            line,
            row: Row {
                timestamp: timestamp_ms as f64 / 1000.0,
                vm: vm.to_owned(),
                pid,
                resource: resource.to_owned(),
                value,
            },
            timestamp_ms,
            clamped,
        })
    }
}

impl<R: BufRead> Iterator for Records<R> {
    type Item = Result<Record, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut next = self.next_fields();
        // Exports concatenated with `cat` repeat the header: skip it.
        while let Ok(Some(line)) = next {
            match self.is_header(line) {
                Ok(true) => {
                    self.headers_skipped += 1;
                    next = self.next_fields();
                }
                Ok(false) => break,
                Err(e) => {
                    next = Err(e);
                    break;
                }
            }
        }
        let result = match next {
            Ok(Some(line)) => self.parse_current(line),
            Ok(None) => {
                self.done = true;
                if self.rows == 0 {
                    return Some(Err(self.error(
                        Some(self.line + 1),
                        None,
                        InputErrorKind::NoRows,
                    )));
                }
                return None;
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => self.rows += 1,
            Err(_) => self.done = true,
        }
        Some(result)
    }
}

/// How far [`split_fields`] got.
#[derive(Debug, PartialEq, Eq)]
enum Split {
    /// The record is complete.
    Complete,
    /// A quoted field (in this 1-based column) runs past the end: read another line.
    OpenQuote { column: usize },
}

/// Splits one record (its raw bytes, possibly several lines, with the line
/// end) into unquoted field bytes `out` and field end offsets `ends`.
fn split_fields(
    raw: &[u8],
    out: &mut Vec<u8>,
    ends: &mut Vec<usize>,
) -> Result<Split, (InputErrorKind, usize)> {
    #[derive(Clone, Copy, PartialEq)]
    enum St {
        Start,
        Unquoted,
        Quoted,
        /// A quote inside a quoted field: an escaped quote or the end of the field.
        QuoteInQuoted,
    }
    out.clear();
    ends.clear();
    let mut st = St::Start;
    let mut i = 0;
    let column = |ends: &Vec<usize>| ends.len() + 1;
    while let Some(&b) = raw.get(i) {
        let line_end = b == b'\n' || (b == b'\r' && raw.get(i + 1) == Some(&b'\n'));
        match st {
            St::Start | St::Unquoted if line_end => {
                ends.push(out.len());
                return Ok(Split::Complete);
            }
            St::Start | St::Unquoted if b == b',' => {
                ends.push(out.len());
                st = St::Start;
            }
            St::Start if b == b'"' => st = St::Quoted,
            St::Start | St::Unquoted => {
                if b == b'"' {
                    return Err((InputErrorKind::StrayQuote, column(ends)));
                }
                out.push(b);
                st = St::Unquoted;
            }
            St::Quoted => {
                if b == b'"' {
                    st = St::QuoteInQuoted;
                } else {
                    out.push(b);
                }
            }
            St::QuoteInQuoted => {
                if b == b'"' {
                    out.push(b'"');
                    st = St::Quoted;
                } else if b == b',' {
                    ends.push(out.len());
                    st = St::Start;
                } else if line_end {
                    ends.push(out.len());
                    return Ok(Split::Complete);
                } else {
                    let found = char::from_u32(u32::from(b)).unwrap_or('?');
                    return Err((InputErrorKind::AfterQuote { found }, column(ends)));
                }
            }
        }
        i += 1;
    }
    // End of input without a line end (the last line of a file).
    if st == St::Quoted {
        return Ok(Split::OpenQuote {
            column: column(ends),
        });
    }
    ends.push(out.len());
    Ok(Split::Complete)
}

/// Parses a timestamp (unix seconds or RFC 3339) to unix milliseconds.
/// A field as errors show it: quoted, at most 80 characters.
fn shown(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

pub fn parse_timestamp(text: &str) -> Result<i64, InputErrorKind> {
    let t = text.trim();
    if t.is_empty() {
        return Err(InputErrorKind::EmptyField);
    }
    let numeric = looks_numeric(t);
    let seconds = if numeric {
        let v: f64 = t
            .parse()
            .map_err(|_| InputErrorKind::BadTimestamp { text: t.to_owned() })?;
        if !v.is_finite() {
            return Err(InputErrorKind::NotFinite { text: t.to_owned() });
        }
        v
    } else {
        parse_rfc3339(t).ok_or_else(|| InputErrorKind::BadTimestamp { text: t.to_owned() })?
    };
    if seconds < 0.0 {
        return Err(InputErrorKind::TimestampBefore1970 { text: t.to_owned() });
    }
    if seconds >= MAX_TIMESTAMP_S {
        let text = t.to_owned();
        return Err(if numeric {
            InputErrorKind::TimestampTooLarge { text }
        } else {
            InputErrorKind::DateTooLate { text }
        });
    }
    // In range, so the product fits an i64 with room to spare.
    Ok((seconds * 1000.0).round() as i64)
}

/// A number as Rust parses it, including `NaN` / `inf` spellings, so those get
/// the "not finite" message instead of "not a timestamp".
fn looks_numeric(t: &str) -> bool {
    let lower = t.trim_start_matches(['+', '-']).to_ascii_lowercase();
    matches!(lower.as_str(), "nan" | "inf" | "infinity")
        || t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'-' | b'e' | b'E'))
}

/// RFC 3339 date-time to unix seconds: `YYYY-MM-DD(T|t| )HH:MM:SS[.frac](Z|z|±HH:MM)`.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    if b.len() < 20
        || !sep(4, b"-")
        || !sep(7, b"-")
        || !sep(10, b"Tt ")
        || !sep(13, b":")
        || !sep(16, b":")
    {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // 60 is a leap second: RFC 3339 allows it; it reads as the next second.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac = 0.0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        frac = format!("0.{}", s.get(start..i)?).parse().ok()?;
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && sep(i + 3, b":") => {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(secs as f64 + frac)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a value; `Ok((v, true))` when a negative value was clamped to 0.
pub fn parse_value(text: &str, opts: &ReadOptions) -> Result<(f64, bool), InputErrorKind> {
    let t = text.trim();
    if t.is_empty() {
        return Err(InputErrorKind::EmptyField);
    }
    let v: f64 = t
        .parse()
        .map_err(|_| InputErrorKind::NotANumber { text: t.to_owned() })?;
    if !v.is_finite() {
        return Err(InputErrorKind::NotFinite { text: t.to_owned() });
    }
    if v > opts.max_value {
        return Err(InputErrorKind::TooLarge {
            text: t.to_owned(),
            cap: opts.max_value,
        });
    }
    if v < 0.0 {
        return match opts.negative {
            NegativeValues::Reject => Err(InputErrorKind::Negative { text: t.to_owned() }),
            NegativeValues::ClampToZero => Ok((0.0, true)),
        };
    }
    // -0.0 reads as 0.
    Ok((v.abs(), false))
}

/// Parses a pid; empty reads as 0.
pub fn parse_pid(text: &str) -> Result<u32, InputErrorKind> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(0);
    }
    t.parse()
        .map_err(|_| InputErrorKind::BadPid { text: t.to_owned() })
}

/// The samples of one series (vm, resource), sorted by time, without duplicates.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesSamples {
    /// VM name.
    pub vm: String,
    /// Resource name.
    pub resource: String,
    /// The pid of the series' last row in the file.
    pub pid: u32,
    /// Unix seconds (millisecond precision), strictly increasing.
    pub timestamps: Vec<f64>,
    /// Values, finite and `>= 0`.
    pub values: Vec<f64>,
}

impl SeriesSamples {
    /// The median spacing between rows in seconds, `None` with fewer than two rows.
    pub fn median_interval_s(&self) -> Option<f64> {
        let mut gaps: Vec<f64> = self.timestamps.windows(2).map(|w| w[1] - w[0]).collect();
        if gaps.is_empty() {
            return None;
        }
        gaps.sort_by(f64::total_cmp);
        gaps.get(gaps.len() / 2).copied()
    }
}

/// What [`read`] did besides returning rows, so callers can report it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadSummary {
    /// Data rows read (including dropped duplicates).
    pub rows: u64,
    /// Distinct (vm, resource) series.
    pub series: usize,
    /// Rows that came after a later-stamped row of the same series (now sorted).
    pub out_of_order_rows: u64,
    /// Exact duplicates dropped (same series, time and value).
    pub duplicate_rows_dropped: u64,
    /// Negative values read as 0 ([`NegativeValues::ClampToZero`]).
    pub negative_clamped: u64,
    /// The first line with a clamped value.
    pub first_clamped_line: Option<u64>,
    /// Blank lines skipped.
    pub blank_lines: u64,
    /// Header lines skipped after the first (concatenated exports).
    pub headers_skipped: u64,
}

/// A whole long CSV, by series.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// The file as named by the caller.
    pub file: String,
    /// Series sorted by (vm, resource).
    pub series: Vec<SeriesSamples>,
    /// What the reader handled.
    pub summary: ReadSummary,
}

impl Trace {
    /// The median over series of each series' median row spacing (seconds):
    /// the natural step of an evenly spaced file.
    pub fn median_interval_s(&self) -> Option<f64> {
        let mut m: Vec<f64> = self
            .series
            .iter()
            .filter_map(SeriesSamples::median_interval_s)
            .collect();
        m.sort_by(f64::total_cmp);
        m.get(m.len() / 2).copied()
    }

    /// Finds a series.
    pub fn get(&self, vm: &str, resource: &str) -> Option<&SeriesSamples> {
        self.series
            .iter()
            .find(|s| s.vm == vm && s.resource == resource)
    }
}

/// Opens and reads a long CSV file (see the module rules).
pub fn read_path(path: &Path, opts: &ReadOptions) -> Result<Trace, InputError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| InputError {
        file: name.clone(),
        line: None,
        column: None,
        kind: Box::new(InputErrorKind::Open(e)),
    })?;
    read(BufReader::new(file), &name, opts)
}

/// Reads a long CSV from `src` (named `file` in errors) into per-series samples.
pub fn read<R: BufRead>(src: R, file: &str, opts: &ReadOptions) -> Result<Trace, InputError> {
    struct Acc {
        vm: String,
        resource: String,
        pid: u32,
        /// (ms, value, line)
        samples: Vec<(i64, f64, u64)>,
        /// The latest time read so far.
        latest: i64,
    }
    let mut records = Records::new(src, file, opts.clone())?;
    let mut index: HashMap<String, HashMap<String, usize>> = HashMap::new();
    let mut accs: Vec<Acc> = Vec::new();
    let mut summary = ReadSummary::default();
    for rec in records.by_ref() {
        let rec = rec?;
        summary.rows += 1;
        if rec.clamped {
            summary.negative_clamped += 1;
            summary.first_clamped_line.get_or_insert(rec.line);
        }
        if !index.contains_key(rec.row.vm.as_str()) {
            index.insert(rec.row.vm.clone(), HashMap::new());
        }
        let Some(by_res) = index.get_mut(rec.row.vm.as_str()) else {
            continue;
        };
        let i = match by_res.get(rec.row.resource.as_str()) {
            Some(&i) => i,
            None => {
                by_res.insert(rec.row.resource.clone(), accs.len());
                accs.push(Acc {
                    vm: rec.row.vm.clone(),
                    resource: rec.row.resource.clone(),
                    pid: rec.row.pid,
                    samples: Vec::new(),
                    latest: i64::MIN,
                });
                accs.len() - 1
            }
        };
        let Some(acc) = accs.get_mut(i) else { continue };
        acc.pid = rec.row.pid;
        // Earlier than any row before it, not only the one just before.
        if rec.timestamp_ms < acc.latest {
            summary.out_of_order_rows += 1;
        }
        acc.latest = acc.latest.max(rec.timestamp_ms);
        acc.samples
            .push((rec.timestamp_ms, rec.row.value, rec.line));
    }
    summary.blank_lines = records.blank_lines();
    summary.headers_skipped = records.headers_skipped();

    let mut series = Vec::with_capacity(accs.len());
    for mut acc in accs {
        // Stable by (time, line): duplicates end up adjacent, the first in file order first.
        acc.samples.sort_by_key(|&(t, _, line)| (t, line));
        let mut timestamps = Vec::with_capacity(acc.samples.len());
        let mut values: Vec<f64> = Vec::with_capacity(acc.samples.len());
        let mut prev: Option<(i64, f64, u64)> = None;
        for &(t, v, line) in &acc.samples {
            if let Some((pt, pv, pline)) = prev
                && pt == t
            {
                if pv == v {
                    summary.duplicate_rows_dropped += 1;
                    continue;
                }
                return Err(InputError {
                    file: file.to_owned(),
                    line: Some(line),
                    column: Some(1),
                    kind: Box::new(InputErrorKind::ConflictingDuplicate {
                        vm: acc.vm,
                        resource: acc.resource,
                        timestamp: t as f64 / 1000.0,
                        first_line: pline,
                        first_value: pv,
                        value: v,
                    }),
                });
            }
            prev = Some((t, v, line));
            timestamps.push(t as f64 / 1000.0);
            values.push(v);
        }
        series.push(SeriesSamples {
            vm: acc.vm,
            resource: acc.resource,
            pid: acc.pid,
            timestamps,
            values,
        });
    }
    series.sort_by(|a, b| (&a.vm, &a.resource).cmp(&(&b.vm, &b.resource)));
    summary.series = series.len();
    Ok(Trace {
        file: file.to_owned(),
        series,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::long::Writer;
    use std::path::PathBuf;

    const H: &str = "timestamp,vm,pid,resource,value\n";

    fn read_str(text: &str) -> Result<Trace, InputError> {
        read(text.as_bytes(), "t.csv", &ReadOptions::default())
    }

    /// The error for `text`, checking its typed location against its message.
    fn err(text: &str, line: u64, column: Option<usize>) -> String {
        let e = read_str(text).expect_err("should fail");
        assert_eq!(e.file, "t.csv");
        assert_eq!(e.line, Some(line), "{e}");
        assert_eq!(e.column, column, "{e}");
        e.to_string()
    }

    #[test]
    fn reads_rows_by_series_sorted() {
        let t = read_str(&format!(
            "{H}1700000000,a,1,cpu,0.5\n1700000000,b,2,cpu,1\n1700000010.250,a,1,cpu,0.75\n"
        ))
        .expect("read");
        assert_eq!(t.summary.rows, 3);
        assert_eq!(t.summary.series, 2);
        assert_eq!(
            t.summary.out_of_order_rows, 0,
            "interleaved series are normal"
        );
        let a = t.get("a", "cpu").expect("a");
        assert_eq!(a.timestamps, vec![1_700_000_000.0, 1_700_000_010.25]);
        assert_eq!(a.values, vec![0.5, 0.75]);
        assert_eq!(a.pid, 1);
    }

    #[test]
    fn nan_and_inf_name_line_and_column() {
        let m = err(
            &format!("{H}1700000000,a,1,cpu,1\n1700000001,a,1,cpu,NaN\n"),
            3,
            Some(5),
        );
        assert_eq!(
            m,
            "t.csv:3: column 5 (value): \"NaN\" is not a finite number"
        );
        let m = err(&format!("{H}1700000000,a,1,cpu,inf\n"), 2, Some(5));
        assert!(m.contains("\"inf\" is not a finite number"), "{m}");
        let m = err(&format!("{H}1700000000,a,1,cpu,-Infinity\n"), 2, Some(5));
        assert!(m.contains("not a finite number"), "{m}");
    }

    #[test]
    fn negative_values_are_errors_unless_clamped() {
        let text = format!("{H}1700000000,a,1,cpu,1\n1700000010,a,1,cpu,-0.5\n");
        let m = err(&text, 3, Some(5));
        assert!(
            m.starts_with("t.csv:3: column 5 (value): \"-0.5\" is negative"),
            "{m}"
        );
        let opts = ReadOptions {
            negative: NegativeValues::ClampToZero,
            ..ReadOptions::default()
        };
        let t = read(text.as_bytes(), "t.csv", &opts).expect("clamped");
        assert_eq!(t.series[0].values, vec![1.0, 0.0]);
        assert_eq!(t.summary.negative_clamped, 1);
        assert_eq!(t.summary.first_clamped_line, Some(3));
        // Negative zero is zero, not negative.
        let t = read_str(&format!("{H}1700000000,a,1,cpu,-0\n")).expect("-0");
        assert_eq!(t.series[0].values, vec![0.0]);
        assert!(t.series[0].values[0].is_sign_positive());
    }

    #[test]
    fn empty_files_and_header_only_are_errors() {
        assert_eq!(
            err("", 1, None),
            format!("t.csv:1: empty file; expected the header \"{HEADER}\"")
        );
        err("\n  \n\r\n", 1, None);
        assert_eq!(err(H, 2, None), "t.csv:2: no data rows after the header");
        err(&format!("{H}\n\n"), 4, None);
    }

    #[test]
    fn a_missing_or_wrong_header_is_named() {
        let m = err("1700000000,a,1,cpu,1\n", 1, None);
        assert!(m.starts_with("t.csv:1: expected the header \"timestamp,vm,pid,resource,value\", found \"1700000000,a,1,cpu,1\""), "{m}");
        err("time,vm,pid,resource,value\n1,a,1,cpu,1\n", 1, None);
        err("timestamp,vm,resource,value\n1,a,cpu,1\n", 1, None);
        // Tolerated: BOM, case, spaces, CRLF.
        let t = read_str("\u{feff}Timestamp, vm ,PID,resource,value\r\n1700000000,a,1,cpu,1\r\n")
            .expect("lenient header");
        assert_eq!(t.series[0].values, vec![1.0]);
        assert_eq!(
            t.series[0].resource, "cpu",
            "CR is not part of the last field"
        );
        // A BOM before a quoted header (PowerShell's Export-Csv).
        let t = read_str(
            "\u{feff}\"timestamp\",\"vm\",\"pid\",\"resource\",\"value\"\n\"1700000000\",\"a\",\"1\",\"cpu\",\"2\"\n",
        )
        .expect("quoted header after a BOM");
        assert_eq!(t.series[0].values, vec![2.0]);
    }

    #[test]
    fn huge_values_are_refused() {
        let m = err(&format!("{H}1700000000,a,1,mem_bytes,2e15\n"), 2, Some(5));
        assert!(m.contains("\"2e15\" is above the cap of 1e15"), "{m}");
        let t = read_str(&format!("{H}1700000000,a,1,mem_bytes,1e15\n")).expect("at the cap");
        assert_eq!(t.series[0].values, vec![1e15]);
        let m = err(&format!("{H}1700000000,a,1,cpu,1e400\n"), 2, Some(5));
        assert!(m.contains("not a finite number"), "{m}");
    }

    #[test]
    fn wrong_column_counts_point_at_the_column() {
        let m = err(&format!("{H}1700000000,a,1,cpu\n"), 2, Some(5));
        assert_eq!(
            m,
            "t.csv:2: column 5 (value): expected 5 columns (timestamp,vm,pid,resource,value), found 4"
        );
        let m = err(&format!("{H}1700000000,a,1,cpu,1,2\n"), 2, Some(6));
        assert_eq!(
            m,
            "t.csv:2: column 6: expected 5 columns (timestamp,vm,pid,resource,value), found 6"
        );
        err(&format!("{H}1700000000\n"), 2, Some(2));
    }

    #[test]
    fn unparsable_fields_are_named() {
        let m = err(&format!("{H}1700000000,a,1,cpu,12abc\n"), 2, Some(5));
        assert_eq!(m, "t.csv:2: column 5 (value): \"12abc\" is not a number");
        assert_eq!(
            err(&format!("{H}1700000000,a,1,cpu,\n"), 2, Some(5)),
            "t.csv:2: column 5 (value): empty"
        );
        let m = err(&format!("{H}yesterday,a,1,cpu,1\n"), 2, Some(1));
        assert!(
            m.starts_with("t.csv:2: column 1 (timestamp): \"yesterday\" is not a timestamp"),
            "{m}"
        );
        let m = err(&format!("{H}1700000000000,a,1,cpu,1\n"), 2, Some(1));
        assert!(m.contains("not milliseconds"), "{m}");
        let m = err(&format!("{H}9999-12-31T23:59:59Z,a,1,cpu,1\n"), 2, Some(1));
        assert!(
            m.contains("past the year 5138") && !m.contains("milliseconds"),
            "{m}"
        );
        let m = err(&format!("{H}-5,a,1,cpu,1\n"), 2, Some(1));
        assert!(m.contains("before 1970"), "{m}");
        err(&format!("{H}NaN,a,1,cpu,1\n"), 2, Some(1));
        let m = err(&format!("{H}1700000000,a,x1,cpu,1\n"), 2, Some(3));
        assert!(m.contains("\"x1\" is not a process id"), "{m}");
        err(&format!("{H}1700000000,a,-1,cpu,1\n"), 2, Some(3));
        err(&format!("{H}1700000000,,1,cpu,1\n"), 2, Some(2));
        err(&format!("{H}1700000000,a,1,\"\",1\n"), 2, Some(4));
        // Empty pid reads as 0; spaces around numbers are fine.
        let t = read_str(&format!("{H} 1700000000 ,a,, cpu , 2 \n")).expect("lenient");
        assert_eq!(t.series[0].pid, 0);
        assert_eq!(t.series[0].resource, " cpu ", "names are kept verbatim");
        assert_eq!(t.series[0].values, vec![2.0]);
    }

    #[test]
    fn quoting_errors_are_named() {
        let m = err(
            &format!("{H}1700000000,\"a,1,cpu,1\n1700000001,b,1,cpu,1\n"),
            2,
            Some(2),
        );
        assert!(m.contains("never closed"), "{m}");
        let m = err(&format!("{H}1700000000,a\"b,1,cpu,1\n"), 2, Some(2));
        assert!(m.contains("stray quote"), "{m}");
        let m = err(&format!("{H}1700000000,\"a\"b,1,cpu,1\n"), 2, Some(2));
        assert!(m.contains("unexpected 'b' after a closing quote"), "{m}");
        let bytes = [H.as_bytes(), b"1700000000,\xff,1,cpu,1\n"].concat();
        let e = read(bytes.as_slice(), "t.csv", &ReadOptions::default()).expect_err("utf8");
        assert_eq!((e.line, e.column), (Some(2), Some(2)));
        assert!(e.to_string().contains("not valid UTF-8"));
    }

    #[test]
    fn quoted_fields_round_trip_and_keep_line_numbers() {
        let mut w = Writer::new(Vec::new()).expect("header");
        let hostile = "we,b \"x\"\nline2";
        for (i, vm) in [hostile, "plain"].iter().enumerate() {
            w.write(&Row {
                timestamp: 1_700_000_000.0 + i as f64,
                vm: (*vm).into(),
                pid: 7,
                resource: "dev:mmio:0xfebf1000_per_s".into(),
                value: 1.5,
            })
            .expect("row");
        }
        let mut text = String::from_utf8(w.into_inner()).expect("utf8");
        // A bad row after the two-line record is on physical line 5.
        text.push_str("1700000002,plain,7,cpu,NaN\n");
        let t = read(text.as_bytes(), "t.csv", &ReadOptions::default());
        let e = t.expect_err("line 5 is bad");
        assert_eq!((e.line, e.column), (Some(5), Some(5)), "{e}");
        let good: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
        let t = read_str(&good).expect("read");
        assert!(
            t.get(hostile, "dev:mmio:0xfebf1000_per_s").is_some(),
            "{:?}",
            t.series
        );
        assert!(t.get("plain", "dev:mmio:0xfebf1000_per_s").is_some());
    }

    #[test]
    fn unsorted_rows_within_a_series_are_sorted_and_counted() {
        let t = read_str(&format!(
            "{H}1700000020,a,1,cpu,3\n1700000000,a,1,cpu,1\n1700000010,b,1,cpu,9\n1700000010,a,1,cpu,2\n"
        ))
        .expect("read");
        assert_eq!(t.get("a", "cpu").expect("a").values, vec![1.0, 2.0, 3.0]);
        // a's 0 and 10 both came after its 20 (not only the row just before).
        assert_eq!(t.summary.out_of_order_rows, 2);
    }

    #[test]
    fn a_record_without_an_end_stops_at_the_limit_and_errors_are_short() {
        // No newline for more than the limit: an error, not all of it read.
        let long = format!(
            "{H}1700000000,a,1,cpu,{}",
            "9".repeat(MAX_RECORD_BYTES + 10)
        );
        let e = read_str(&long).expect_err("too long");
        assert!(e.to_string().contains("t.csv:2"), "{e}");
        assert!(
            matches!(*e.kind, InputErrorKind::RecordTooLong { .. }),
            "{e}"
        );
        // A long field is cut in the message.
        let e = read_str(&format!("{H}1700000000,a,1,cpu,{}\n", "x".repeat(5000)))
            .expect_err("not a number");
        assert!(e.to_string().len() < 300, "{}", e.to_string().len());
    }

    #[test]
    fn concatenated_exports_repeat_their_header() {
        let one = format!("{H}1700000000,a,1,cpu,1\n");
        let t = read_str(&format!("{one}{one}{H}1700000010,a,1,cpu,2\n")).expect("read");
        assert_eq!(t.get("a", "cpu").expect("a").values.len(), 2);
        assert_eq!(t.summary.headers_skipped, 2);
        assert_eq!(t.summary.duplicate_rows_dropped, 1);
        // A header with nothing after it is still "no rows".
        assert!(read_str(&format!("{H}{H}")).is_err());
    }

    #[test]
    fn duplicates_exact_are_dropped_conflicting_are_errors() {
        let t = read_str(&format!(
            "{H}1700000000,a,1,cpu,1\n1700000010,a,1,cpu,2\n1700000000,a,1,cpu,1\n1700000000,b,1,cpu,5\n"
        ))
        .expect("read");
        assert_eq!(t.get("a", "cpu").expect("a").values, vec![1.0, 2.0]);
        assert_eq!(t.summary.duplicate_rows_dropped, 1);
        // Same instant in two spellings, two values.
        let m = err(
            &format!(
                "{H}1700000000,a,1,cpu,1\n1700000010,a,1,cpu,2\n2023-11-14T22:13:20Z,a,1,cpu,1.5\n"
            ),
            4,
            Some(1),
        );
        assert_eq!(
            m,
            "t.csv:4: column 1 (timestamp): duplicate timestamp 1700000000.000 for vm \"a\", resource \"cpu\": line 2 has 1, this line has 1.5"
        );
    }

    #[test]
    fn rfc3339_and_unix_timestamps() {
        let ms = |s: &str| parse_timestamp(s).expect(s);
        assert_eq!(ms("2026-11-24T10:00:00Z"), 1_795_514_400_000);
        assert_eq!(ms("2026-11-24T11:00:00+01:00"), 1_795_514_400_000);
        assert_eq!(ms("2026-11-24T05:30:00-04:30"), 1_795_514_400_000);
        assert_eq!(ms("2026-11-24t10:00:00.250z"), 1_795_514_400_250);
        assert_eq!(ms("2026-11-24 10:00:00.5Z"), 1_795_514_400_500);
        assert_eq!(ms("1970-01-01T00:00:00Z"), 0);
        assert_eq!(ms("2024-02-29T00:00:00Z"), 1_709_164_800_000);
        assert_eq!(ms("1795514400"), 1_795_514_400_000);
        assert_eq!(ms("1795514400.250"), 1_795_514_400_250);
        assert_eq!(ms("1.7955144e9"), 1_795_514_400_000);
        for bad in [
            "2026-11-24",
            "2026-11-24T10:00:00",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T10:00:00+2:00",
            "2026-11-24T10:00:00.Z",
            "2026-11-24T10:00:00Zjunk",
            "next tuesday",
        ] {
            assert!(
                matches!(
                    parse_timestamp(bad),
                    Err(InputErrorKind::BadTimestamp { .. })
                ),
                "{bad}: {:?}",
                parse_timestamp(bad)
            );
        }
        assert!(matches!(
            parse_timestamp("1969-12-31T23:59:59Z"),
            Err(InputErrorKind::TimestampBefore1970 { .. })
        ));
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = read_path(Path::new("/nonexistent/trace.csv"), &ReadOptions::default())
            .expect_err("missing");
        assert_eq!(e.to_string(), "/nonexistent/trace.csv: cannot open");
        assert!(
            std::error::Error::source(&e).is_some(),
            "the io::Error is the source"
        );
    }

    #[test]
    fn records_stream_row_by_row() {
        let text = format!("{H}1700000000,a,1,cpu,1\n\n1700000001,a,1,cpu,oops\n");
        let mut r = Records::new(text.as_bytes(), "t.csv", ReadOptions::default()).expect("header");
        let first = r.next().expect("one").expect("ok");
        assert_eq!((first.line, first.timestamp_ms), (2, 1_700_000_000_000));
        let e = r.next().expect("two").expect_err("bad");
        assert_eq!(e.line, Some(4));
        assert!(r.next().is_none(), "stops after an error");
        assert_eq!(r.blank_lines(), 1);
    }

    #[test]
    fn every_row_of_the_shared_datacenter_samples_parses() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/datacenter_synthetic_days.csv");
        if !path.exists() {
            eprintln!(
                "skipped: {} is absent (it sits next to the checkout on dev and CI machines)",
                path.display()
            );
            return;
        }
        // Two rows of the Alibaba disk series hold small negative noise: strict reading
        // names the first; clamping reads every row and says how many it clamped.
        let e = read_path(&path, &ReadOptions::default()).expect_err("negative noise");
        assert_eq!((e.line, e.column), (Some(8611), Some(5)), "{e}");
        let opts = ReadOptions {
            negative: NegativeValues::ClampToZero,
            ..ReadOptions::default()
        };
        let t = read_path(&path, &opts).expect("clamped read");
        assert_eq!(t.summary.rows, 20_736);
        assert_eq!(t.summary.series, 72);
        assert_eq!(t.summary.negative_clamped, 2);
        assert_eq!(t.summary.first_clamped_line, Some(8611));
        assert_eq!(t.summary.duplicate_rows_dropped, 0);
        assert_eq!(t.median_interval_s(), Some(300.0));
        for s in &t.series {
            assert_eq!(s.values.len(), 288, "{} {}", s.vm, s.resource);
            assert!(s.values.iter().all(|v| v.is_finite() && *v >= 0.0));
        }
    }
}
