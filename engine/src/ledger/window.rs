//! Which arrivals a ledger day reads, as calendar arithmetic in one place.
//!
//! A copy of an event of day D is *eligible* for D when it arrived (its `ingest_date`) between
//! D − 1 (a partner clock running a few minutes fast lands D's first events the evening
//! before) and D + the lateness horizon. A transaction belongs to the day of its winning copy.
//!
//! The bound: the copies of one transaction name days at most [`SPREAD_DAYS`] apart (a retry
//! re-stamped across midnight spans two days; a partner replay re-stamping every copy spans
//! three). So D's run also reads the eligible copies of D − 2 … D + 2, which lie in the
//! arrival days D − 3 … D + 2 + horizon: every day named by one of a transaction's copies then
//! has all of its copies in view, they all pick the same winner, and exactly one keeps it.
//! A spread beyond the bound is reported where a run sees it (`ledger_conflicts` reason
//! `spread_beyond_bound`); it cannot be settled exactly by days that cannot see each other.

use crate::error::{Result, TallyError};
use crate::schema;
use chrono::{Days, NaiveDate, NaiveTime};
use datafusion::common::ScalarValue;

/// How many days apart the copies of one transaction may name, at most, for the ledger to
/// settle it exactly (see the module docs).
pub const SPREAD_DAYS: i64 = 2;

/// The arrival windows of event day `day` with a lateness horizon of `late_days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayWindow {
    /// The event day.
    pub day: NaiveDate,
    /// Days after D whose arrivals still count.
    pub late_days: u32,
}

impl DayWindow {
    /// The window of `day`; fails when the dates it needs fall outside the calendar.
    pub fn new(day: NaiveDate, late_days: u32) -> Result<Self> {
        let w = Self { day, late_days };
        w.offset(-SPREAD_DAYS - 1)?;
        w.offset(late_days as i64 + SPREAD_DAYS + 1)?;
        Ok(w)
    }

    /// D shifted by `days` (checked in [`DayWindow::new`]).
    fn offset(&self, days: i64) -> Result<NaiveDate> {
        let moved = if days >= 0 {
            self.day.checked_add_days(Days::new(days as u64))
        } else {
            self.day.checked_sub_days(Days::new(days.unsigned_abs()))
        };
        moved.ok_or_else(|| TallyError::InvalidArgument {
            what: "date".into(),
            message: format!("{} {days:+} days is out of range", self.day),
        })
    }

    fn at(&self, days: i64) -> NaiveDate {
        self.offset(days).unwrap_or(self.day)
    }

    /// First arrival day of D's own copies: D − 1.
    pub fn first_arrival(&self) -> NaiveDate {
        self.at(-1)
    }

    /// Last arrival day of D's own copies: D + horizon.
    pub fn last_arrival(&self) -> NaiveDate {
        self.at(self.late_days as i64)
    }

    /// Every arrival day the run reads: D − 3 … D + 2 + horizon (its own and those of the
    /// days within [`SPREAD_DAYS`]).
    pub fn read_days(&self) -> Vec<NaiveDate> {
        (-SPREAD_DAYS - 1..=self.late_days as i64 + SPREAD_DAYS)
            .map(|d| self.at(d))
            .collect()
    }

    /// Whether arrival day `ingest` holds eligible copies of D itself.
    pub fn is_own(&self, ingest: NaiveDate) -> bool {
        ingest >= self.first_arrival() && ingest <= self.last_arrival()
    }

    /// Midnight (UTC) at the start of D + `days`, as a SQL parameter.
    fn midnight(&self, days: i64) -> ScalarValue {
        ScalarValue::TimestampMicrosecond(
            Some(
                self.at(days)
                    .and_time(NaiveTime::MIN)
                    .and_utc()
                    .timestamp_micros(),
            ),
            Some("UTC".into()),
        )
    }

    fn date(d: NaiveDate) -> ScalarValue {
        ScalarValue::Date32(Some(schema::date32(d)))
    }

    /// D, as a SQL value.
    pub fn day_value(&self) -> ScalarValue {
        Self::date(self.day)
    }

    /// Parameters of `sql/ledger.sql`: D, D 00:00, D + 1 00:00.
    pub fn ledger_params(&self) -> Vec<ScalarValue> {
        vec![self.day_value(), self.midnight(0), self.midnight(1)]
    }

    /// Parameters of `sql/ledger_scatter.sql`: D 00:00 and D + 1 00:00.
    pub fn scatter_params(&self) -> Vec<ScalarValue> {
        vec![self.midnight(0), self.midnight(1)]
    }

    /// Parameters of `sql/ledger_neighbours.sql`: D − 2 00:00, D 00:00, D + 1 00:00,
    /// D + 3 00:00, and the horizon in days.
    pub fn neighbour_params(&self) -> Vec<ScalarValue> {
        vec![
            self.midnight(-SPREAD_DAYS),
            self.midnight(0),
            self.midnight(1),
            self.midnight(SPREAD_DAYS + 1),
            ScalarValue::Int64(Some(self.late_days as i64)),
        ]
    }

    /// Parameters of `sql/ledger_settle.sql`: D and the bound in days.
    pub fn settle_params(&self) -> Vec<ScalarValue> {
        vec![self.day_value(), ScalarValue::Int64(Some(SPREAD_DAYS))]
    }

    /// The other days a transaction of D can be shared with: D − 2 … D + 2 but D.
    pub fn neighbour_days(&self) -> Vec<NaiveDate> {
        (-SPREAD_DAYS..=SPREAD_DAYS)
            .filter(|d| *d != 0)
            .map(|d| self.at(d))
            .collect()
    }

    /// `first..last` of the own window, for messages.
    pub fn describe(&self) -> String {
        format!(
            "ingest_date {}..{}",
            self.first_arrival(),
            self.last_arrival()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        crate::day::parse(s).unwrap()
    }

    #[test]
    fn own_window_starts_the_day_before_and_neighbours_widen_it_by_two_each_side() {
        let w = DayWindow::new(d("2026-11-02"), 3).unwrap();
        assert_eq!(w.first_arrival(), d("2026-11-01"));
        assert_eq!(w.last_arrival(), d("2026-11-05"));
        let days = w.read_days();
        assert_eq!(days.first(), Some(&d("2026-10-30")));
        assert_eq!(days.last(), Some(&d("2026-11-07")));
        assert_eq!(days.len(), 9);
        assert_eq!(
            w.neighbour_days(),
            vec![
                d("2026-10-31"),
                d("2026-11-01"),
                d("2026-11-03"),
                d("2026-11-04")
            ]
        );
        assert!(w.is_own(d("2026-11-01")) && !w.is_own(d("2026-10-31")));
    }

    #[test]
    fn days_at_the_edge_of_the_calendar_are_refused() {
        assert!(DayWindow::new(NaiveDate::MAX, 3).is_err());
        assert!(DayWindow::new(NaiveDate::MIN, 3).is_err());
    }
}
