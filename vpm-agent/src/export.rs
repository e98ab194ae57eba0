//! Files vpm writes for other tools: atomic writes, rotation, and the forecast
//! CSV format.
//!
//! Forecast CSV (`vpm forecast -o`, and `forecast-<unix time in ms>.csv` from `vpm run`):
//! `generated_at,vm,resource,horizon_s,target_time,predicted,lower,upper,model,backtest_wape`,
//! one row per (VM, resource, horizon). `generated_at` and `target_time` are unix
//! seconds; `lower`/`upper` are the bounds of the calibrated central interval
//! (default 5 %–95 %: `upper` is exceeded by about 5 % of outcomes);
//! `backtest_wape` is empty before the first model selection and `inf` when the
//! backtest's actual values were all zero but the model still erred.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::forecast::Forecast;
use crate::store::long::{format_value, quote};

/// Header of the forecast CSV.
pub const FORECAST_HEADER: &str =
    "generated_at,vm,resource,horizon_s,target_time,predicted,lower,upper,model,backtest_wape";

/// Errors writing export files.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Writing or renaming a file failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The path has no file name.
    #[error("{0} is not a file path")]
    NotAFile(PathBuf),
    /// The path is a directory.
    #[error("{0} is a directory; give a file path in it")]
    IsDir(PathBuf),
    /// The file's directory does not exist.
    #[error(
        "cannot write {path}: the directory {dir} does not exist; create it or give another path"
    )]
    NoDir {
        /// The file.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
}

/// Checks that `path` can be a file vpm writes: not a directory, in a
/// directory that exists. Commands that work for a while before writing
/// check first, so a typo costs nothing.
pub fn check_writable(path: &Path) -> Result<(), ExportError> {
    if path.is_dir() {
        return Err(ExportError::IsDir(path.to_path_buf()));
    }
    if path.file_name().is_none() {
        return Err(ExportError::NotAFile(path.to_path_buf()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(ExportError::NoDir {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// fsync, and a rename: readers see the old file or the new one, never half.
/// Errors name `path`, not the temporary file, and leave no temporary file
/// behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    check_writable(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| ExportError::NotAFile(path.to_path_buf()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let mut f = std::fs::File::create(&tmp).map_err(write_err(path))?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(path)(e));
    }
    Ok(())
}

/// Removes the oldest `<prefix>*.csv` files in `dir` beyond the newest `keep`.
/// Names embed the unix time, so name order is age order. `written`, the
/// file just exported, is always kept and counts as the newest: after a clock
/// step back (or files from a clock ahead) its name sorts first, and it must
/// not be the one removed.
pub fn rotate(dir: &Path, prefix: &str, keep: usize, written: &Path) -> Result<usize, ExportError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(write_err(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".csv"))
        })
        .filter(|p| p.file_name() != written.file_name())
        .collect();
    files.sort();
    // The file just written takes one of the `keep` places.
    let excess = files.len().saturating_sub(keep.saturating_sub(1));
    for old in files.iter().take(excess) {
        std::fs::remove_file(old).map_err(write_err(old))?;
    }
    Ok(excess)
}

/// One row of the forecast CSV.
#[derive(Clone, Debug)]
pub struct ForecastRow<'a> {
    /// When the forecast was made (unix seconds).
    pub generated_at: f64,
    /// VM name.
    pub vm: &'a str,
    /// Resource (as in the long format).
    pub resource: &'a str,
    /// The forecast.
    pub forecast: &'a Forecast,
}

/// Appends the header and `rows` as forecast CSV to `out`.
pub fn write_forecast_csv<'a, W: Write>(
    mut out: W,
    rows: impl IntoIterator<Item = ForecastRow<'a>>,
) -> io::Result<W> {
    writeln!(out, "{FORECAST_HEADER}")?;
    for r in rows {
        let f = r.forecast;
        let wape = match f.backtest_wape {
            None => String::new(),
            Some(w) if w.is_infinite() => "inf".to_owned(),
            Some(w) => format_value(w),
        };
        writeln!(
            out,
            "{:.3},{},{},{},{:.3},{},{},{},{},{}",
            r.generated_at,
            quote(r.vm),
            quote(r.resource),
            format_value(f.horizon_s),
            f.target_time,
            format_value(f.predicted),
            format_value(f.lower),
            format_value(f.upper),
            f.model.name(),
            wape
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::ModelKind;

    #[test]
    fn atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.csv");
        write_atomic(&path, b"x\n").expect("write");
        write_atomic(&path, b"y\n").expect("overwrite");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "y\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.csv")]);
    }

    #[test]
    fn a_path_that_cannot_be_a_file_is_named_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = write_atomic(dir.path(), b"x").expect_err("a directory");
        assert!(err.to_string().contains("is a directory"), "{err}");
        let missing = dir.path().join("no/such/f.csv");
        let err = write_atomic(&missing, b"x").expect_err("no directory");
        let msg = err.to_string();
        assert!(
            msg.contains("f.csv") && msg.contains("does not exist") && !msg.contains(".f.csv.tmp"),
            "{msg}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("list").count(),
            0,
            "nothing left behind"
        );
    }

    #[test]
    fn rotation_keeps_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        for t in [100, 200, 300, 400] {
            std::fs::write(dir.path().join(format!("forecast-{t}.csv")), "").expect("write");
        }
        std::fs::write(dir.path().join("telemetry-50.csv"), "").expect("write");
        let written = dir.path().join("forecast-400.csv");
        assert_eq!(
            rotate(dir.path(), "forecast-", 2, &written).expect("rotate"),
            2
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["forecast-300.csv", "forecast-400.csv", "telemetry-50.csv"]
        );
        // Files from a clock ahead: the one just written stays anyway.
        std::fs::write(dir.path().join("forecast-900.csv"), "").expect("write");
        std::fs::write(dir.path().join("forecast-150.csv"), "").expect("write");
        let written = dir.path().join("forecast-150.csv");
        rotate(dir.path(), "forecast-", 2, &written).expect("rotate");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("forecast-"))
            .collect();
        left.sort();
        assert_eq!(left, ["forecast-150.csv", "forecast-900.csv"]);
    }

    #[test]
    fn forecast_rows_follow_the_documented_schema() {
        let f = Forecast {
            horizon_s: 60.0,
            target_time: 1_700_000_060.0,
            predicted: 12.5,
            lower: 10.0,
            upper: 15.25,
            model: ModelKind::LastValue,
            backtest_wape: Some(0.125),
        };
        let out = write_forecast_csv(
            Vec::new(),
            [ForecastRow {
                generated_at: 1_700_000_000.0,
                vm: "web,01",
                resource: "pio_per_s",
                forecast: &f,
            }],
        )
        .expect("csv");
        let text = String::from_utf8(out).expect("utf8");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(FORECAST_HEADER));
        assert_eq!(
            lines.next(),
            Some(&*format!(
                "1700000000.000,\"web,01\",pio_per_s,60,1700000060.000,12.5,10,15.25,{},0.125",
                ModelKind::LastValue.name()
            ))
        );
    }
}
