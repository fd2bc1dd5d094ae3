//! When a ledger run refuses to replace the committed day.
//!
//! A ledger rerun replaces the whole day. A rerun that read nothing (raw partitions expired by
//! a lifecycle rule, a wrong `--lake` prefix, an S3 listing that came back short) would
//! replace the real ledger with an empty one, and finance would see a day of zero revenue. So
//! a run refuses, before any work, when it finds no raw file for the day, unless told the day
//! really is empty (`--allow-empty`); and after building, it refuses a result that has lost
//! more than `--max-shrink` (default 1%) of the committed day's rows. Raw files are
//! immutable, so a legitimate rebuild only grows a day (late copies) or shrinks it a little
//! (a transaction moving to the day its winning copy names).

use super::inputs::Inputs;
use super::window::DayWindow;
use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use chrono::NaiveDate;

/// The refusal rules of one run.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// Commit the day even when no raw file was found for it.
    pub allow_empty: bool,
    /// The largest fraction of the committed day's rows a rebuild may lose (0.01 = 1%).
    pub max_shrink: f64,
}

impl Default for Guard {
    fn default() -> Self {
        Self {
            allow_empty: false,
            max_shrink: 0.01,
        }
    }
}

impl Guard {
    /// Refuses a run that found no raw file of D's own arrival window.
    pub fn check_inputs(
        &self,
        lake: &Lake,
        window: &DayWindow,
        inputs: &Inputs,
        committed_rows: Option<u64>,
    ) -> Result<()> {
        if self.allow_empty || inputs.own(window).next().is_some() {
            return Ok(());
        }
        let committed = match committed_rows {
            Some(n) if n > 0 => format!("; the committed ledger of {} has {n} rows", window.day),
            _ => String::new(),
        };
        Err(TallyError::Refused {
            message: format!(
                "ledger {}: no raw files in {} under {}{committed}; refusing to commit an empty day (pass --allow-empty if the day really has no transactions)",
                window.day,
                window.describe(),
                lake.url_of(layout::RAW_PAYMENTS)
                    .map(|u| u.to_string())
                    .unwrap_or_default(),
            ),
        })
    }

    /// Refuses a rebuild with more than `max_shrink` fewer rows than the committed day.
    pub fn check_shrink(
        &self,
        day: NaiveDate,
        committed_rows: Option<u64>,
        new_rows: u64,
        version: Option<u64>,
    ) -> Result<()> {
        let Some(committed) = committed_rows.filter(|&n| n > 0) else {
            return Ok(());
        };
        // `--allow-empty` said the day really has no transactions.
        if self.allow_empty && new_rows == 0 {
            return Ok(());
        }
        if new_rows >= committed {
            return Ok(());
        }
        let lost = (committed - new_rows) as f64 / committed as f64;
        if lost <= self.max_shrink {
            return Ok(());
        }
        Err(TallyError::Refused {
            message: format!(
                "ledger {day}: the rebuild has {new_rows} rows, {:.2}% fewer than the {committed} committed in ledger version {}; refusing to replace it (pass --max-shrink {:.0}% if the loss is expected)",
                lost * 100.0,
                version.map_or("?".to_string(), |v| v.to_string()),
                (lost * 100.0).ceil(),
            ),
        })
    }
}

/// Parses a `--max-shrink` value: `5%`, `0.05`, or `100%` to allow any loss. A bare number
/// of 1 or more is refused: `1` could mean 1% or 100%, and reading it either way silently
/// would switch the refusal off or keep it on against the operator's intent.
pub fn parse_fraction(text: &str) -> std::result::Result<f64, String> {
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{text:?} is not a fraction (like 0.05) or a percentage (like 5%)"))?;
    if !t.ends_with('%') && value >= 1.0 {
        return Err(format!(
            "{text:?} is ambiguous: write a percentage (like {t}%) or a fraction below 1 (like 0.05); 100% allows any loss"
        ));
    }
    if !value.is_finite() || !(0.0..=1.0).contains(&value) {
        return Err(format!("{text:?} is not between 0% and 100%"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrink_within_the_limit_passes_and_beyond_it_is_refused_naming_the_flag() {
        let g = Guard::default();
        let day = crate::day::parse("2026-11-01").unwrap();
        assert!(g.check_shrink(day, Some(1000), 995, Some(3)).is_ok());
        assert!(g.check_shrink(day, Some(1000), 1200, Some(3)).is_ok());
        assert!(g.check_shrink(day, None, 0, None).is_ok());
        let e = g
            .check_shrink(day, Some(1000), 0, Some(3))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2026-11-01") && e.contains("--max-shrink 100%"),
            "{e}"
        );
        assert_eq!(parse_fraction("5%").unwrap(), 0.05);
        assert_eq!(parse_fraction("1%").unwrap(), 0.01);
        assert_eq!(parse_fraction("100%").unwrap(), 1.0);
        assert_eq!(parse_fraction("0.5").unwrap(), 0.5);
        for bare in ["1", "5", "1.0", "100"] {
            let e = parse_fraction(bare).unwrap_err();
            assert!(e.contains("ambiguous") && e.contains('%'), "{bare}: {e}");
        }
        assert!(parse_fraction("NaN").is_err());
        assert!(parse_fraction("-1%").is_err());
        assert_eq!(parse_fraction("0.5").unwrap(), 0.5);
        assert!(parse_fraction("150%").is_err());
    }
}
