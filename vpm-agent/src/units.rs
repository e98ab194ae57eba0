//! Human units on the command line (`10s`, `500ms`, `2m`) and the wall clock.

use std::time::Duration;

/// A duration that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid duration {input:?}: use a number with a unit: ms, s, m or h (e.g. 500ms, 10s, 2m)"
)]
pub struct DurationError {
    /// What was given.
    pub input: String,
}

/// Parses `500ms`, `10s`, `1.5s`, `2m`, `1h`. A bare number is refused: the unit
/// is part of what the operator means.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_owned(),
    };
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| err())?;
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Current wall-clock time in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn garbage_is_refused_with_the_accepted_units() {
        for bad in ["", "10", "s", "-1s", "1x", "1.2.3s", "NaNs", "1e9999s"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.to_string().contains("ms, s, m or h"), "{e}");
        }
    }
}
