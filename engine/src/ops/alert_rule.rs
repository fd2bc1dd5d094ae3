//! The per-partner error-rate rule, as a pure state machine over what each batch adds to
//! `live_view`, so it can be tested without a lake and gives the same answer on every run.
//!
//! **The rule** (SPEC "Alerts", with the flapping rule it leaves open):
//! - A partner *fires* when one of its minutes of event time has at least `min_events` events
//!   and `errors / events >= error_rate`. This is checked as soon as the minute's totals reach
//!   it, even while the minute is still filling: the alert must leave within seconds.
//! - While an episode is firing, more failing minutes send nothing.
//! - It *resolves* on the first later minute that is **closed** (the stream has moved past it:
//!   some partner has events in a later minute), has at least `min_events` events and is under
//!   the rate. A minute still filling never resolves, so a minute that looks healthy for its
//!   first few events does not flap an alert off and on; a quiet minute (fewer than
//!   `min_events`) is no evidence either way and leaves the state as it is.
//! - A new episode can start only on a minute after the one that resolved the last.

use crate::live::PartnerMinute;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const MINUTE_US: i64 = 60_000_000;

/// The thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertRule {
    /// Error rate (0..1] that fires.
    pub error_rate: f64,
    /// Fewest events a minute needs to fire or resolve.
    pub min_events: u64,
}

impl AlertRule {
    fn judges(&self, events: u64) -> bool {
        events >= self.min_events.max(1)
    }

    fn failing(&self, events: u64, errors: u64) -> bool {
        self.judges(events) && errors as f64 / events as f64 >= self.error_rate
    }
}

/// `firing` or `resolved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// An episode started.
    Firing,
    /// The episode ended.
    Resolved,
}

impl AlertState {
    /// The SPEC's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One state change of one partner, with the minute that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Firing or resolved.
    pub state: AlertState,
    /// The partner.
    pub partner_id: String,
    /// The minute that crossed (or fell back under) the rate, µs since the epoch.
    pub window_start_us: i64,
    /// Its events when judged.
    pub events: u64,
    /// Its errors when judged.
    pub errors: u64,
    /// `errors / events`.
    pub error_rate: f64,
    /// The rule's rate.
    pub threshold: f64,
    /// When tally decided (µs since the epoch).
    pub detected_at_us: i64,
}

/// Where one partner stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartnerState {
    /// Firing since minute `since`; `last_bad` is the newest failing minute seen.
    Firing { since: i64, last_bad: i64 },
    /// Not firing; only minutes after `after` may start an episode.
    Quiet { after: i64 },
}

/// The rule's memory: recent minute totals per partner and each partner's state.
#[derive(Debug)]
pub struct AlertEvaluator {
    rule: AlertRule,
    /// Minutes this far behind the newest are forgotten (they can no longer change: the live
    /// watermark sends their late rows to `live_late`).
    keep_us: i64,
    minutes: BTreeMap<(String, i64), (u64, u64)>,
    states: HashMap<String, PartnerState>,
    newest_minute: Option<i64>,
}

impl AlertEvaluator {
    /// An evaluator that remembers `keep_minutes` minutes behind the newest.
    pub fn new(rule: AlertRule, keep_minutes: i64) -> Self {
        Self {
            rule,
            keep_us: keep_minutes.max(2) * MINUTE_US,
            minutes: BTreeMap::new(),
            states: HashMap::new(),
            newest_minute: None,
        }
    }

    /// The rule.
    pub fn rule(&self) -> AlertRule {
        self.rule
    }

    /// Sets a partner's state (on restart, from the `alerts` table).
    pub fn restore(&mut self, partner: &str, state: PartnerState) {
        self.states.insert(partner.to_string(), state);
    }

    /// Adds minute totals that were already judged (on restart, from `live_view`) without
    /// judging them now: the next batch that touches the partner judges them with its own.
    pub fn seed(&mut self, minutes: &[PartnerMinute]) {
        for m in minutes {
            let e = self
                .minutes
                .entry((m.partner_id.clone(), m.window_start_us))
                .or_default();
            e.0 += m.events;
            e.1 += m.errors;
            self.newest_minute = Some(
                self.newest_minute
                    .map_or(m.window_start_us, |n| n.max(m.window_start_us)),
            );
        }
    }

    /// Partners firing now, with the minute their episode started.
    pub fn firing(&self) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = self
            .states
            .iter()
            .filter_map(|(p, s)| match s {
                PartnerState::Firing { since, .. } => Some((p.clone(), *since)),
                PartnerState::Quiet { .. } => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Adds a batch's minutes and returns the state changes they cause, in partner order.
    pub fn apply(&mut self, added: &[PartnerMinute], now_us: i64) -> Vec<Alert> {
        self.seed(added);
        let mut touched: BTreeSet<String> = added.iter().map(|m| m.partner_id.clone()).collect();
        // Firing partners are judged again as minutes close, even without new events.
        for (p, s) in &self.states {
            if matches!(s, PartnerState::Firing { .. }) {
                touched.insert(p.clone());
            }
        }
        let mut alerts = Vec::new();
        for partner in touched {
            self.judge(&partner, now_us, &mut alerts);
        }
        if let Some(newest) = self.newest_minute {
            let oldest = newest - self.keep_us;
            self.minutes.retain(|(_, m), _| *m >= oldest);
        }
        alerts
    }

    fn judge(&mut self, partner: &str, now_us: i64, alerts: &mut Vec<Alert>) {
        let newest = self.newest_minute.unwrap_or(i64::MIN);
        let mut state = self
            .states
            .get(partner)
            .copied()
            .unwrap_or(PartnerState::Quiet { after: i64::MIN });
        let lo = (partner.to_string(), i64::MIN);
        let hi = (partner.to_string(), i64::MAX);
        for ((_, minute), &(events, errors)) in self.minutes.range(lo..=hi) {
            let minute = *minute;
            let alert = |state| Alert {
                state,
                partner_id: partner.to_string(),
                window_start_us: minute,
                events,
                errors,
                error_rate: if events == 0 {
                    0.0
                } else {
                    errors as f64 / events as f64
                },
                threshold: self.rule.error_rate,
                detected_at_us: now_us,
            };
            match state {
                PartnerState::Quiet { after } if minute > after => {
                    if self.rule.failing(events, errors) {
                        alerts.push(alert(AlertState::Firing));
                        state = PartnerState::Firing {
                            since: minute,
                            last_bad: minute,
                        };
                    }
                }
                PartnerState::Quiet { .. } => {}
                PartnerState::Firing { since, last_bad } => {
                    if self.rule.failing(events, errors) {
                        state = PartnerState::Firing {
                            since,
                            last_bad: last_bad.max(minute),
                        };
                    } else if minute > last_bad && minute < newest && self.rule.judges(events) {
                        alerts.push(alert(AlertState::Resolved));
                        state = PartnerState::Quiet { after: minute };
                    }
                }
            }
        }
        self.states.insert(partner.to_string(), state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(partner: &str, minute: i64, events: u64, errors: u64) -> PartnerMinute {
        PartnerMinute {
            window_start_us: minute * MINUTE_US,
            partner_id: partner.into(),
            events,
            errors,
        }
    }

    fn eval() -> AlertEvaluator {
        AlertEvaluator::new(
            AlertRule {
                error_rate: 0.5,
                min_events: 20,
            },
            10,
        )
    }

    fn states(alerts: &[Alert]) -> Vec<(&str, AlertState, i64)> {
        alerts
            .iter()
            .map(|a| {
                (
                    a.partner_id.as_str(),
                    a.state,
                    a.window_start_us / MINUTE_US,
                )
            })
            .collect()
    }

    #[test]
    fn fires_once_per_episode_and_resolves_on_a_closed_healthy_minute() {
        let mut e = eval();
        assert!(e.apply(&[pm("a", 1, 30, 3)], 0).is_empty());
        // Minute 2 crosses while still filling: fire at once.
        let fired = e.apply(&[pm("a", 2, 20, 12)], 0);
        assert_eq!(states(&fired), vec![("a", AlertState::Firing, 2)]);
        assert_eq!(fired[0].events, 20);
        assert_eq!(fired[0].errors, 12);
        assert!((fired[0].error_rate - 0.6).abs() < 1e-9);
        // More failures, same episode: nothing.
        assert!(e
            .apply(&[pm("a", 2, 10, 10), pm("a", 3, 40, 30)], 0)
            .is_empty());
        // A healthy minute 4 still filling does not resolve.
        assert!(e.apply(&[pm("a", 4, 25, 1)], 0).is_empty());
        // Once another partner's minute 5 arrives, minute 4 is closed: resolve.
        let resolved = e.apply(&[pm("b", 5, 1, 0)], 0);
        assert_eq!(states(&resolved), vec![("a", AlertState::Resolved, 4)]);
        assert!(e.firing().is_empty());
        // A new failing minute is a new episode.
        let again = e.apply(&[pm("a", 6, 20, 20)], 0);
        assert_eq!(states(&again), vec![("a", AlertState::Firing, 6)]);
        assert_eq!(e.firing(), vec![("a".to_string(), 6 * MINUTE_US)]);
    }

    #[test]
    fn too_few_events_neither_fire_nor_resolve() {
        let mut e = eval();
        assert!(e.apply(&[pm("a", 1, 19, 19)], 0).is_empty());
        assert_eq!(
            states(&e.apply(&[pm("a", 1, 1, 1)], 0)),
            vec![("a", AlertState::Firing, 1)]
        );
        // Quiet minutes, closed, but under min_events: still firing.
        assert!(e.apply(&[pm("a", 2, 3, 0), pm("a", 3, 2, 0)], 0).is_empty());
        assert_eq!(e.firing().len(), 1);
    }

    #[test]
    fn a_restored_episode_is_not_fired_again() {
        let mut e = eval();
        e.restore(
            "a",
            PartnerState::Firing {
                since: MINUTE_US,
                last_bad: MINUTE_US,
            },
        );
        assert!(e.apply(&[pm("a", 2, 50, 50)], 0).is_empty());
        let out = e.apply(&[pm("a", 3, 50, 0), pm("a", 4, 1, 0)], 0);
        assert_eq!(states(&out), vec![("a", AlertState::Resolved, 3)]);
    }

    #[test]
    fn seeded_minutes_are_judged_with_the_next_batch() {
        let mut e = eval();
        e.seed(&[pm("a", 1, 15, 15)]);
        assert!(e.firing().is_empty());
        let out = e.apply(&[pm("a", 1, 5, 5)], 0);
        assert_eq!(states(&out), vec![("a", AlertState::Firing, 1)]);
        assert_eq!(out[0].events, 20);
    }

    #[test]
    fn partners_are_independent_and_old_minutes_are_forgotten() {
        let mut e = eval();
        let out = e.apply(&[pm("a", 1, 20, 10), pm("b", 1, 20, 9)], 0);
        assert_eq!(states(&out), vec![("a", AlertState::Firing, 1)]);
        e.apply(&[pm("c", 100, 1, 0)], 0);
        assert!(e.minutes.keys().all(|(_, m)| *m >= 90 * MINUTE_US));
    }
}
