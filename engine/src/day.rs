//! Calendar days as jobs take them: `YYYY-MM-DD`, UTC.

use crate::error::{Result, TallyError};
use chrono::NaiveDate;

/// Parses `YYYY-MM-DD`; the error names the bad value.
pub fn parse(text: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").map_err(|e| TallyError::InvalidArgument {
        what: "date".into(),
        message: format!("{text:?} is not a calendar day YYYY-MM-DD ({e})"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_names_bad_values() {
        assert_eq!(
            super::parse("2026-11-21").unwrap().to_string(),
            "2026-11-21"
        );
        let e = super::parse("2026-02-30").unwrap_err().to_string();
        assert!(e.contains("2026-02-30"), "{e}");
    }
}
