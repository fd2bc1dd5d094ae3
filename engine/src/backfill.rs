//! `tally backfill --from D1 --to D2` and the single-day `tally ledger`: ledger days as tasks.
//!
//! Each day takes its lease ([`crate::day_lock`]), compares the inputs key of its arrival
//! window with its last good run in `runs` ([`crate::runs`]) and either skips or builds the
//! ledger, then appends a row to `runs` whatever happened. A killed or interrupted backfill
//! therefore resumes by being run again: finished days are skipped, the rest are redone (a
//! ledger day is one atomic commit, so there is no half-built day to repair). Up to `jobs`
//! days run at once; a failed day does not stop the others.

use crate::config::Config;
use crate::day_lock::{self, Fence};
use crate::error::{Result, TallyError};
use crate::lake::{layout, Lake};
use crate::ledger::{self, LedgerJob, LedgerMetrics};
use crate::runs::{self, Outcome, RunRecord};
use crate::session::{SessionOptions, TallySession};
use chrono::{Days, NaiveDate};
use deltalake::DeltaTable;
use futures::StreamExt;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What happened to one day.
#[derive(Debug, Clone)]
pub enum DayOutcome {
    /// Built and committed.
    Built(Box<LedgerMetrics>),
    /// Inputs unchanged since the last good run.
    Skipped,
    /// Failed; the message names the file or value at fault.
    Failed(String),
}

/// One day's result.
#[derive(Debug, Clone)]
pub struct DayRun {
    /// The event day.
    pub day: NaiveDate,
    /// What happened.
    pub outcome: DayOutcome,
    /// Wall time, including waiting for the day's lease.
    pub elapsed: Duration,
}

impl DayRun {
    /// Raw rows read (0 when skipped or failed).
    pub fn rows_read(&self) -> u64 {
        match &self.outcome {
            DayOutcome::Built(m) => m.rows_read,
            _ => 0,
        }
    }
}

/// What a backfill did.
#[derive(Debug, Clone, Default)]
pub struct BackfillSummary {
    /// Days built.
    pub built: Vec<NaiveDate>,
    /// Days skipped as unchanged.
    pub skipped: Vec<NaiveDate>,
    /// Days that failed, with the reason.
    pub failed: Vec<(NaiveDate, String)>,
    /// Days not started because the run was interrupted.
    pub not_started: Vec<NaiveDate>,
}

/// Ledger days over a range. Configure with `with_*`, then [`BackfillJob::run`].
pub struct BackfillJob {
    lake: Lake,
    config: Config,
    days: Vec<NaiveDate>,
    jobs: usize,
    late_days: u32,
    buckets: u32,
    passes: Option<usize>,
    memory_limit: Option<usize>,
    guard: ledger::Guard,
    shutdown: Option<watch::Receiver<bool>>,
    run_id: String,
}

impl BackfillJob {
    /// Every day from `from` to `to`, inclusive.
    pub fn new(lake: &Lake, config: &Config, from: NaiveDate, to: NaiveDate) -> Result<Self> {
        if to < from {
            return Err(TallyError::InvalidArgument {
                what: "range".into(),
                message: format!("--to {to} is before --from {from}"),
            });
        }
        let mut days = Vec::new();
        let mut d = from;
        while d <= to {
            days.push(d);
            d = d
                .checked_add_days(Days::new(1))
                .ok_or_else(|| TallyError::InvalidArgument {
                    what: "range".into(),
                    message: format!("{d} + 1 day is out of range"),
                })?;
        }
        Ok(Self {
            lake: lake.clone(),
            config: config.clone(),
            days,
            jobs: 1,
            late_days: config.ledger.late_days,
            buckets: config.ledger.buckets,
            passes: None,
            memory_limit: None,
            guard: ledger::Guard::default(),
            shutdown: None,
            run_id: format!("{:016x}", rand::random::<u64>()),
        })
    }

    /// Days built at once.
    pub fn with_jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }

    /// Lateness horizon of each day.
    pub fn with_late_days(mut self, days: u32) -> Self {
        self.late_days = days;
        self
    }

    /// Hash buckets of each day's plan.
    pub fn with_buckets(mut self, buckets: u32) -> Self {
        self.buckets = buckets;
        self
    }

    /// Passes over each day's transaction keys (by default one per 16M raw rows; under a
    /// memory limit one per 4M, or more if it needs them).
    pub fn with_passes(mut self, passes: Option<usize>) -> Self {
        self.passes = passes;
        self
    }

    /// Memory limit of each day's plan.
    pub fn with_memory_limit(mut self, limit: Option<usize>) -> Self {
        self.memory_limit = limit;
        self
    }

    /// When each day refuses to replace its committed ledger.
    pub fn with_guard(mut self, guard: ledger::Guard) -> Self {
        self.guard = guard;
        self
    }

    /// Stop starting new days when this turns `true` (days under way finish).
    pub fn with_shutdown(mut self, rx: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(rx);
        self
    }

    /// The days, in order.
    pub fn days(&self) -> &[NaiveDate] {
        &self.days
    }

    /// Runs every day, calling `on_day` as each finishes.
    pub async fn run(self, mut on_day: impl FnMut(&DayRun)) -> Result<BackfillSummary> {
        let mut summary = BackfillSummary::default();
        // Create the tables once, before days run in parallel and race to create them.
        for (name, schema, parts) in [
            (
                layout::LEDGER,
                &crate::schema::LEDGER,
                &[crate::schema::EVENT_DATE][..],
            ),
            (
                layout::LEDGER_CONFLICTS,
                &crate::schema::LEDGER_CONFLICTS,
                &[crate::schema::EVENT_DATE][..],
            ),
            (layout::RUNS, &crate::schema::RUNS, &[][..]),
        ] {
            let url = self.lake.url_of(name)?;
            crate::delta::open_or_create(&self.lake, &url, name, schema, parts, &[]).await?;
        }
        let stopping =
            |rx: &Option<watch::Receiver<bool>>| rx.as_ref().is_some_and(|r| *r.borrow());
        let mut started = Vec::new();
        let job = &self;
        let shutdown = self.shutdown.clone();
        let mut runs = futures::stream::iter(self.days.iter().copied())
            .take_while(|_| futures::future::ready(!stopping(&shutdown)))
            .map(|day| {
                started.push(day);
                async move { job.run_day(day, false).await }
            })
            .buffer_unordered(self.jobs);
        while let Some(r) = runs.next().await {
            match &r.outcome {
                DayOutcome::Built(_) => summary.built.push(r.day),
                DayOutcome::Skipped => summary.skipped.push(r.day),
                DayOutcome::Failed(e) => summary.failed.push((r.day, e.clone())),
            }
            on_day(&r);
        }
        drop(runs);
        summary.not_started = self
            .days
            .iter()
            .filter(|d| !started.contains(d))
            .copied()
            .collect();
        summary.failed.sort();
        Ok(summary)
    }

    /// One day: lease, skip check, ledger, `runs` row (written before the lease is released,
    /// so the next holder sees it). Never returns an error: a failure is the day's outcome
    /// (and its `runs` row).
    async fn run_day(&self, day: NaiveDate, force: bool) -> DayRun {
        let t0 = Instant::now();
        let started_at = chrono::Utc::now().timestamp_micros();
        let wait = Duration::from_secs(24 * 3600);
        let (outcome, records, lock) =
            match day_lock::acquire(&self.lake, day, &self.run_id, wait).await {
                Ok(lock) => {
                    let result = self.build_day(day, force, lock.fence()).await;
                    let (o, r) = self.record(day, started_at, result, "backfill");
                    (o, r, Some(lock))
                }
                Err(e) => {
                    let (o, r) = self.record(day, started_at, Err(e), "backfill");
                    (o, r, None)
                }
            };
        append_run(&self.lake, day, records, None).await;
        if let Some(lock) = lock {
            lock.release().await;
        }
        DayRun {
            day,
            outcome,
            elapsed: t0.elapsed(),
        }
    }

    /// Skip check and ledger, under the day's lease.
    async fn build_day(
        &self,
        day: NaiveDate,
        force: bool,
        fence: Fence,
    ) -> Result<(Option<LedgerMetrics>, String)> {
        let window = ledger::window::DayWindow::new(day, self.late_days)?;
        let listed = ledger::inputs::list(&self.lake, &window).await?;
        let key = ledger::inputs_key(&listed, self.late_days);
        if !force && runs::last_good_key(&self.lake, day).await?.as_deref() == Some(&key) {
            return Ok((None, key));
        }
        let opts = SessionOptions::for_ledger(self.memory_limit, self.buckets);
        let session = TallySession::open(&self.lake, &self.config, &opts).await?;
        let m = LedgerJob::new(&session, day)
            .with_late_days(self.late_days)
            .with_buckets(self.buckets)
            .with_passes(self.passes)
            .with_guard(self.guard)
            .with_fence(fence)
            .run()
            .await?;
        let key = m.inputs_key.clone();
        Ok((Some(m), key))
    }

    /// The day's `runs` row, then a `stale` row for each neighbouring day a built day found
    /// settling shared transactions otherwise.
    fn record(
        &self,
        day: NaiveDate,
        started_at: i64,
        result: Result<(Option<LedgerMetrics>, String)>,
        command: &'static str,
    ) -> (DayOutcome, Vec<RunRecord>) {
        let now = chrono::Utc::now().timestamp_micros();
        let mut r = RunRecord::new(&self.run_id, command, day, started_at, now, Outcome::Failed);
        let mut stale = Vec::new();
        let outcome = match result {
            Ok((Some(m), key)) => {
                r.outcome = Outcome::Ok;
                r.inputs_key = Some(key);
                r.input_files = Some(m.files_read as i64);
                r.rows_read = Some(m.rows_read as i64);
                r.ledger_rows = Some(m.ledger_rows as i64);
                r.ledger_amount_cents = Some(m.fingerprint.amount_cents);
                r.row_hash = Some(format!("{:016x}", m.fingerprint.row_hash));
                r.ledger_version = Some(m.version as i64);
                r.rows_without_event_time = Some(m.rows_without_event_time as i64);
                r.conflicts_version = Some(m.conflicts_version as i64);
                for s in &m.stale_days {
                    let mut row =
                        RunRecord::new(&self.run_id, command, s.day, now, now, Outcome::Stale);
                    row.error = Some(format!(
                        "the ledger of {} (version {}) settled {} transaction(s) shared with this day otherwise: rebuild this day",
                        m.day, m.version, s.transactions
                    ));
                    stale.push(row);
                }
                DayOutcome::Built(Box::new(m))
            }
            Ok((None, key)) => {
                r.outcome = Outcome::Skipped;
                r.inputs_key = Some(key);
                DayOutcome::Skipped
            }
            Err(e) => {
                if matches!(e, TallyError::Refused { .. }) {
                    r.outcome = Outcome::Refused;
                }
                let msg = crate::lake::one_line(&e.to_string());
                r.error = Some(msg.clone());
                DayOutcome::Failed(msg)
            }
        };
        (outcome, std::iter::once(r).chain(stale).collect())
    }
}

/// Appends a day's `runs` rows (to `opened`, the table opened ahead, when there is one), in
/// one commit. A failure is logged, not returned: the day's outcome stands either way.
async fn append_run(
    lake: &Lake,
    day: NaiveDate,
    records: Vec<RunRecord>,
    opened: Option<JoinHandle<Result<DeltaTable>>>,
) {
    let records = records.as_slice();
    let table = match opened {
        Some(handle) => handle.await.ok().and_then(|t| t.ok()),
        None => None,
    };
    let appended = match table {
        Some(table) => runs::append_to(&table, records).await,
        // Not opened ahead, or opening failed: open now (and report that error if it recurs).
        None => runs::append(lake, records).await,
    };
    if let Err(e) = appended {
        tracing::error!(%day, error = %e, "could not record the run in `runs`");
    }
}

/// `tally ledger --date D`: one day, always built (no skip), failing fast if another run holds
/// the day; recorded in `runs` like a backfill day. Errors are returned as they are.
pub async fn ledger_day(
    session: &TallySession,
    config: &Config,
    day: NaiveDate,
    job: LedgerJob<'_>,
) -> Result<LedgerMetrics> {
    let lake = session.lake();
    let bf = BackfillJob::new(lake, config, day, day)?;
    let started_at = chrono::Utc::now().timestamp_micros();
    let lock = day_lock::acquire(lake, day, &bf.run_id, Duration::ZERO).await?;
    // `runs` is opened while the day is built: recording the outcome then only commits. Its log
    // replay took 40 ms after the build, with both cores idle, on the bench lake.
    let runs_table = tokio::spawn({
        let lake = lake.clone();
        async move { runs::open(&lake).await }
    });
    let result = job.with_fence(lock.fence()).run().await;
    let (shared, error) = match result {
        Ok(m) => {
            let key = m.inputs_key.clone();
            (Ok((Some(m), key)), None)
        }
        Err(e) => {
            let text = crate::lake::one_line(&e.to_string());
            let shared = match e {
                TallyError::Refused { .. } => TallyError::Refused { message: text },
                _ => TallyError::Internal(text),
            };
            (Err(shared), Some(e))
        }
    };
    let (outcome, records) = bf.record(day, started_at, shared, "ledger");
    append_run(lake, day, records, Some(runs_table)).await;
    crate::failpoint::hit("ledger_after_runs_row");
    lock.release().await;
    match (outcome, error) {
        (DayOutcome::Built(m), _) => Ok(*m),
        (_, Some(e)) => Err(e),
        _ => Err(TallyError::Internal(
            "ledger run ended without a result".into(),
        )),
    }
}
