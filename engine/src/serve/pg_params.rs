//! Exact `numeric` parameters on the Postgres wire.
//!
//! datafusion-postgres binds a `numeric` parameter compared with a `Decimal128(p, s)` column by
//! rescaling it to `s`, which rounds: `WHERE amount = $1` with `10.005` matched `10.01`. Money
//! is exact, so a parameter with more significant decimals than the column (or more digits than
//! its precision) is refused with SQLSTATE 22003 before the query runs, never rounded.

use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::LogicalPlan;
use datafusion_postgres::pgwire;
use pgwire::api::portal::Portal;
use pgwire::api::Type;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use rust_decimal::Decimal;

/// Refuses a portal whose `numeric` parameters would be rounded to their column's type.
pub fn check_exact<S: Clone>(portal: &Portal<S>, plan: &LogicalPlan) -> PgWireResult<()> {
    let Ok(types) = plan.get_parameter_types() else {
        return Ok(()); // the crate reports the same failure when it binds
    };
    for i in 0..portal.parameter_len() {
        let Some(Some(DataType::Decimal128(precision, scale))) = types.get(&format!("${}", i + 1))
        else {
            continue;
        };
        let hinted = portal.statement.parameter_types.get(i).cloned().flatten();
        let pg_type = match hinted {
            Some(t) if t != Type::UNKNOWN => t,
            _ => Type::NUMERIC,
        };
        if pg_type != Type::NUMERIC {
            continue;
        }
        let Ok(Some(value)) = portal.parameter::<Decimal>(i, &pg_type) else {
            continue; // NULL, or a decoding error the crate reports itself
        };
        if let Some(why) = inexact(value, *precision, *scale) {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "22003".into(),
                format!(
                    "parameter ${} = {value} {why} for NUMERIC({precision}, {scale}): it would be rounded; tally compares money exactly",
                    i + 1
                ),
            ))));
        }
    }
    Ok(())
}

/// Why `value` does not fit `Decimal128(precision, scale)` exactly, if it does not.
fn inexact(value: Decimal, precision: u8, scale: i8) -> Option<&'static str> {
    let scale = u32::try_from(scale).unwrap_or(0);
    let normal = value.normalize();
    if normal.scale() > scale {
        return Some("has more decimals than the column");
    }
    let mut rescaled = normal;
    rescaled.rescale(scale);
    let digits = rescaled
        .mantissa()
        .unsigned_abs()
        .checked_ilog10()
        .map_or(1, |d| d + 1);
    (digits > u32::from(precision)).then_some("has more digits than the column")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn only_values_that_fit_exactly_pass() {
        assert_eq!(inexact(d("10.01"), 18, 2), None);
        assert_eq!(
            inexact(d("10.010000"), 18, 2),
            None,
            "trailing zeros are exact"
        );
        assert_eq!(inexact(d("-3"), 18, 2), None);
        assert_eq!(inexact(d("0"), 18, 2), None);
        assert!(inexact(d("10.005"), 18, 2).is_some());
        assert!(inexact(d("0.001"), 18, 2).is_some());
        assert!(inexact(d("1234567890123456.78"), 18, 2).is_none());
        assert!(inexact(d("12345678901234567.89"), 18, 2).is_some());
    }
}
