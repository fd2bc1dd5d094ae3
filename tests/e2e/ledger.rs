//! `tally ledger`: exactness against an independent HashMap dedup, idempotence, late replays,
//! conflicts, concurrency, a real kill mid-run, and bad input that must change nothing.

use crate::harness::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

const DAY_US: i64 = 86_400_000_000;

fn day_start(day: &str) -> i64 {
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros()
}

fn add_days(day: &str, n: i64) -> String {
    (chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap() + chrono::Duration::days(n))
        .to_string()
}

/// A ledger row as text fields, in the order of `LEDGER_SQL`.
pub type Row = Vec<String>;

/// The UTC event day of a timestamp, as `YYYY-MM-DD`.
fn day_of(t: i64) -> String {
    chrono::DateTime::from_timestamp_micros(t)
        .unwrap()
        .date_naive()
        .to_string()
}

/// True when `r` is an eligible copy for its own event day: it arrived between that day − 1
/// and the day + the horizon.
fn eligible(r: &RawRow, late_days: i64) -> bool {
    let d = day_of(r.event_time);
    r.ingest_date >= add_days(&d, -1) && r.ingest_date <= add_days(&d, late_days)
}

/// The winner order: earliest arrival, then the smallest content.
fn rank_key(r: &RawRow) -> (i64, &str, i128, &str, &str, i64) {
    (
        r.ingest_time,
        &r.partner_id,
        r.amount,
        &r.currency,
        &r.status,
        r.event_time,
    )
}

/// Every transaction with an eligible copy naming `day`, with its eligible copies naming a
/// day at most two days from `day` (the copies every day within the ledger's bound sees).
fn copies_of_day<'a>(
    rows: &'a [RawRow],
    day: &str,
    late_days: i64,
) -> HashMap<&'a str, Vec<&'a RawRow>> {
    let lo = day_start(day);
    let mut by_txn: HashMap<&str, Vec<&RawRow>> = HashMap::new();
    for r in rows {
        if r.event_time >= lo - 2 * DAY_US
            && r.event_time < lo + 3 * DAY_US
            && eligible(r, late_days)
        {
            by_txn.entry(&r.txn_id).or_default().push(r);
        }
    }
    by_txn.retain(|_, copies| {
        copies
            .iter()
            .any(|r| r.event_time >= lo && r.event_time < lo + DAY_US)
    });
    by_txn
}

/// The ledger of `day`, computed here from the raw files with a plain HashMap: each
/// transaction's winner is its first eligible copy over `day` and its neighbours, and the
/// transaction is in `day`'s ledger only when that copy names `day`.
pub fn expected_ledger(rows: &[RawRow], day: &str, late_days: i64) -> BTreeMap<String, Row> {
    copies_of_day(rows, day, late_days)
        .into_iter()
        .filter_map(|(id, copies)| {
            let w = copies.iter().min_by(|a, b| rank_key(a).cmp(&rank_key(b)))?;
            (day_of(w.event_time) == day).then(|| {
                (
                    id.to_string(),
                    vec![
                        id.to_string(),
                        w.partner_id.clone(),
                        w.event_time.to_string(),
                        cents(w.amount),
                        w.currency.clone(),
                        w.status.clone(),
                        copies
                            .iter()
                            .map(|c| c.ingest_time)
                            .min()
                            .unwrap()
                            .to_string(),
                        copies.len().to_string(),
                    ],
                )
            })
        })
        .collect()
}

/// `day`'s conflict rows: per transaction with more than one distinct (payload, day) among
/// its copies, one row per distinct one: (txn, partner, amount, currency, status, is_winner,
/// reason, copy day).
pub fn expected_conflicts(rows: &[RawRow], day: &str, late_days: i64) -> BTreeSet<Row> {
    let mut out = BTreeSet::new();
    for (id, copies) in copies_of_day(rows, day, late_days) {
        let w = copies
            .iter()
            .min_by(|a, b| rank_key(a).cmp(&rank_key(b)))
            .unwrap();
        let key = |r: &RawRow| {
            (
                r.partner_id.clone(),
                cents(r.amount),
                r.currency.clone(),
                r.status.clone(),
                day_of(r.event_time),
            )
        };
        let set: BTreeSet<_> = copies.iter().map(|r| key(r)).collect();
        if set.len() < 2 {
            continue;
        }
        let days: BTreeSet<_> = set.iter().map(|k| k.4.clone()).collect();
        let winner = key(w);
        let span = days
            .first()
            .zip(days.last())
            .map(|(a, b)| day_start(b) - day_start(a))
            .unwrap_or(0);
        let reason = if days.len() == 1 {
            "payload"
        } else if span > 2 * DAY_US {
            "spread_beyond_bound"
        } else if winner.4 == day {
            "owned_here"
        } else {
            "owned_by_other_day"
        };
        for k in set {
            let win = k == winner;
            out.insert(vec![
                id.to_string(),
                k.0,
                k.1,
                k.2,
                k.3,
                win.to_string(),
                reason.to_string(),
                k.4,
            ]);
        }
    }
    out
}

const LEDGER_SQL: &str = "SELECT txn_id, partner_id, CAST(event_time AS BIGINT) AS et, amount, currency, status, \
     CAST(first_ingest_time AS BIGINT) AS fi, copies FROM ledger WHERE event_date = DATE '{day}' ORDER BY txn_id";

/// The ledger of `day` as tally reports it for the lake in `dir`.
pub fn ledger_rows(dir: &Path, day: &str) -> BTreeMap<String, Row> {
    ledger_rows_with(&mut tally_cmd(dir), day)
}

pub fn conflict_rows(dir: &Path, day: &str) -> BTreeSet<Row> {
    let sql = format!(
        "SELECT txn_id, partner_id, amount, currency, status, is_winner, reason, copy_event_date FROM ledger_conflicts WHERE event_date = DATE '{day}'"
    );
    csv_rows(&tally_ok(dir, &["sql", &sql, "--format", "csv"]))
        .into_iter()
        .collect()
}

/// Runs the ledger with JSON output; returns the summary.
pub fn run_ledger(dir: &Path, day: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["ledger", "--date", day, "--format", "json"];
    args.extend_from_slice(extra);
    let out = tally_ok(dir, &args);
    serde_json::from_str(out.trim().lines().last().unwrap()).expect("json summary")
}

pub fn delta_versions(table: &Path) -> usize {
    std::fs::read_dir(table.join("_delta_log"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".json")
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn ledger_matches_an_independent_dedup_and_conflicts_are_listed() {
    let dir = tempdir();
    generate(dir.path(), 3, 20_000, 21);
    let raw = read_raw(&dir.path().join("lake"));
    for day in ["2026-11-01", "2026-11-02"] {
        let summary = run_ledger(dir.path(), day, &[]);
        let want = expected_ledger(&raw, day, 3);
        let got = ledger_rows(dir.path(), day);
        assert_eq!(got.len(), want.len(), "{day}: row count");
        for (id, w) in &want {
            assert_eq!(got.get(id), Some(w), "{day}: ledger row of {id}");
        }
        assert_eq!(summary["ledger_rows"], want.len() as u64);
        let total: i128 = want
            .values()
            .map(|w| {
                let (units, frac) = w[3].split_once('.').unwrap();
                units.parse::<i128>().unwrap() * 100 + frac.parse::<i128>().unwrap()
            })
            .sum();
        assert_eq!(
            summary["fingerprint"]["amount_sum"],
            cents(total),
            "{day}: exact amount"
        );
        let conflicts = expected_conflicts(&raw, day, 3);
        assert!(
            !conflicts.is_empty(),
            "the generator should produce conflicts"
        );
        assert_eq!(
            conflict_rows(dir.path(), day),
            conflicts,
            "{day}: conflicts"
        );
    }
}

#[test]
fn rerun_is_identical_and_leaves_other_days_alone() {
    let dir = tempdir();
    generate(dir.path(), 2, 10_000, 22);
    let a = run_ledger(dir.path(), "2026-11-01", &[]);
    let b = run_ledger(dir.path(), "2026-11-02", &[]);
    let day1 = ledger_rows(dir.path(), "2026-11-01");
    let day2 = ledger_rows(dir.path(), "2026-11-02");
    let again = run_ledger(dir.path(), "2026-11-01", &["--buckets", "5"]);
    assert_eq!(
        again["fingerprint"], a["fingerprint"],
        "re-run must reproduce the fingerprint"
    );
    assert_eq!(
        again["removed_files"].as_u64().unwrap(),
        a["added_files"].as_u64().unwrap()
    );
    assert!(again["version"].as_i64() > b["version"].as_i64());
    assert_eq!(ledger_rows(dir.path(), "2026-11-01"), day1);
    assert_eq!(ledger_rows(dir.path(), "2026-11-02"), day2);
    // The commit info carries the fingerprint and the inputs.
    let log = std::fs::read_to_string(dir.path().join(format!(
        "lake/ledger/_delta_log/{:020}.json",
        again["version"].as_i64().unwrap()
    )))
    .unwrap();
    assert!(
        log.contains("\"fingerprint\"")
            && log.contains("\"sql_hash\"")
            && log.contains("ingest_date=2026-11-01"),
        "{log}"
    );
}

#[test]
fn late_replay_is_absorbed_on_rerun_without_double_counting() {
    let dir = tempdir();
    let out = tally_ok(
        dir.path(),
        &[
            "generate",
            "--days",
            "1",
            "--events-per-day",
            "10000",
            "--seed",
            "23",
        ],
    );
    assert!(out.contains("late replay"), "{out}");
    let raw_dir = dir.path().join("lake/raw/payments");
    let replays: Vec<_> = parquet_files(&raw_dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("-replay-"))
        .collect();
    assert!(!replays.is_empty());
    // Before the replay lands.
    let parked = dir.path().join("parked");
    std::fs::create_dir_all(&parked).unwrap();
    for (i, p) in replays.iter().enumerate() {
        std::fs::rename(p, parked.join(format!("{i}.parquet"))).unwrap();
    }
    let before = run_ledger(dir.path(), "2026-11-01", &[]);
    let rows_before = ledger_rows(dir.path(), "2026-11-01");
    // The replay lands a day or two later; the re-run absorbs it.
    for (i, p) in replays.iter().enumerate() {
        std::fs::rename(parked.join(format!("{i}.parquet")), p).unwrap();
    }
    let after = run_ledger(dir.path(), "2026-11-01", &[]);
    let rows_after = ledger_rows(dir.path(), "2026-11-01");
    assert_eq!(
        before["ledger_rows"], after["ledger_rows"],
        "a replay adds no transactions"
    );
    assert_eq!(
        before["fingerprint"]["amount_sum"], after["fingerprint"]["amount_sum"],
        "…and no money"
    );
    let raw = read_raw(&dir.path().join("lake"));
    assert_eq!(rows_after, expected_ledger(&raw, "2026-11-01", 3));
    let more_copies = rows_after
        .iter()
        .filter(|(id, r)| r[7] != rows_before[*id][7])
        .count();
    assert!(more_copies > 0, "replayed copies should be counted");
}

#[test]
fn memory_limit_and_bucket_count_do_not_change_the_ledger() {
    let dir = tempdir();
    generate(dir.path(), 1, 30_000, 24);
    let a = run_ledger(dir.path(), "2026-11-01", &[]);
    let b = run_ledger(
        dir.path(),
        "2026-11-01",
        &["--memory-limit", "64MiB", "--buckets", "3"],
    );
    assert_eq!(a["fingerprint"], b["fingerprint"]);
}

#[test]
fn under_a_memory_limit_the_allocator_returns_freed_memory_sooner() {
    let dir = tempdir();
    generate(dir.path(), 1, 2_000, 5);
    let purge_delay = |extra: &[&str], env: Option<&str>| {
        let mut cmd = tally_cmd(dir.path());
        cmd.env_remove("MIMALLOC_PURGE_DELAY");
        if let Some(v) = env {
            cmd.env("MIMALLOC_PURGE_DELAY", v);
        }
        let out = cmd
            .args(["-v", "ledger", "--date", "2026-11-01", "--format", "json"])
            .args(extra)
            .output()
            .expect("run tally");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        stderr
            .lines()
            .find(|l| l.contains("allocator purge delay"))
            .map(|l| l.rsplit('=').next().unwrap_or("").trim().to_string())
    };
    // With a limit, tally restarts itself once with a 100 ms purge delay...
    assert_eq!(
        purge_delay(&["--memory-limit", "256MiB"], None).as_deref(),
        Some("100")
    );
    // ...unless the caller chose one; and without a limit nothing changes.
    assert_eq!(
        purge_delay(&["--memory-limit", "256MiB"], Some("250")).as_deref(),
        Some("250")
    );
    assert_eq!(purge_delay(&[], None), None);
}

/// A partner resends every transaction of `day` with the amount one cent more, into the
/// folder of the next day, the `i`-th (in `txn_id` order) claiming the arrival
/// `arrival(i, original arrival)`. Returns every raw row, resends included.
fn resend_every_transaction(
    dir: &Path,
    day: &str,
    arrival: impl Fn(usize, i64) -> i64,
) -> Vec<RawRow> {
    let lake = dir.join("lake");
    let lo = day_start(day);
    let mut raw = read_raw(&lake);
    let mut resent: BTreeMap<String, RawRow> = BTreeMap::new();
    for r in raw
        .iter()
        .filter(|r| r.event_time >= lo && r.event_time < lo + DAY_US)
    {
        resent.entry(r.txn_id.clone()).or_insert_with(|| r.clone());
    }
    let resent: Vec<RawRow> = resent
        .into_values()
        .enumerate()
        .map(|(i, r)| RawRow {
            amount: r.amount + 1,
            ingest_time: arrival(i, r.ingest_time),
            ingest_date: add_days(day, 1),
            ..r
        })
        .collect();
    write_raw(&lake, &add_days(day, 1), "resend.parquet", &resent);
    raw.extend(resent);
    raw
}

#[test]
fn a_day_resent_with_changed_amounts_is_settled_in_full_with_or_without_a_memory_limit() {
    // A partner resends every transaction of the day with a corrected amount: every
    // transaction is disputed. A third of the resends arrive a day later (the original wins),
    // a third claim an arrival a second before the original (the resend wins), and a third the
    // very instant of the original (a tie: the smaller payload wins, which only the settlement
    // SQL decides; the others a partition settles on its own). Each transaction must be
    // settled by the first arrival, every variant listed, and a memory limit must not change
    // any of it.
    let dir = tempdir();
    generate(dir.path(), 1, 20_000, 27);
    let day = "2026-11-01";
    let raw = resend_every_transaction(dir.path(), day, |i, t| match i % 3 {
        0 => t - 1_000_000,
        1 => t,
        _ => t + DAY_US,
    });

    let want = expected_ledger(&raw, day, 3);
    let conflicts = expected_conflicts(&raw, day, 3);
    let a = run_ledger(dir.path(), day, &[]);
    assert_eq!(
        a["disputed"],
        want.len() as u64,
        "every transaction is disputed"
    );
    assert_eq!(ledger_rows(dir.path(), day), want);
    assert_eq!(conflict_rows(dir.path(), day), conflicts);

    assert_eq!(a["disputes_spilled"], 0);

    let b = run_ledger(
        dir.path(),
        day,
        &["--memory-limit", "64MiB", "--buckets", "3"],
    );
    assert_eq!(a["fingerprint"], b["fingerprint"]);
    assert_eq!(ledger_rows(dir.path(), day), want);
    assert_eq!(conflict_rows(dir.path(), day), conflicts);
}

#[test]
fn disputed_variants_past_the_memory_limit_go_to_disk_and_settle_the_same() {
    // A partner bug resends every transaction of the day a day later with the amount one
    // cent off. Under a pool too small to hold the variants they are spilled to disk and read
    // back when their partition settles: same ledger, same conflicts as without a limit.
    let dir = tempdir();
    generate(dir.path(), 1, 30_000, 28);
    let day = "2026-11-01";
    let raw = resend_every_transaction(dir.path(), day, |_, t| t + DAY_US);
    let want = expected_ledger(&raw, day, 3);
    let conflicts = expected_conflicts(&raw, day, 3);

    let a = run_ledger(dir.path(), day, &["--buckets", "2"]);
    assert_eq!(a["disputes_spilled"], 0);
    // One pass: the variants of the whole day meet the limit (more passes would each hold less).
    let b = run_ledger(
        dir.path(),
        day,
        &["--memory-limit", "16MiB", "--buckets", "2", "--passes", "1"],
    );
    assert!(
        b["disputes_spilled"].as_u64().unwrap() > 0,
        "the variants were spilled: {b}"
    );
    assert_eq!(a["fingerprint"], b["fingerprint"]);
    assert_eq!(ledger_rows(dir.path(), day), want);
    assert_eq!(conflict_rows(dir.path(), day), conflicts);
}

#[test]
fn a_day_split_into_passes_is_the_same_ledger_with_the_same_conflicts() {
    // A day too large for memory is deduplicated in passes, each a range of transaction keys.
    // Copies on neighbouring days, disputes settled in a partition and ties settled by the SQL
    // must come out exactly as in one pass, with or without a memory limit.
    let dir = tempdir();
    generate(dir.path(), 3, 20_000, 29);
    let day = "2026-11-02";
    let raw = resend_every_transaction(dir.path(), day, |i, t| match i % 4 {
        0 => t - 1_000_000,
        1 => t,
        2 => t + DAY_US,
        // a quarter resent with the same arrival order as the first copy but a day later
        _ => t + 2 * DAY_US,
    });
    let want = expected_ledger(&raw, day, 3);
    let conflicts = expected_conflicts(&raw, day, 3);
    assert!(
        conflicts
            .iter()
            .any(|c| c[6] == "owned_here" || c[6] == "owned_by_other_day"),
        "the day should share transactions with its neighbours"
    );

    let one = run_ledger(dir.path(), day, &["--passes", "1"]);
    assert_eq!(one["passes"], 1);
    assert_eq!(ledger_rows(dir.path(), day), want);
    assert_eq!(conflict_rows(dir.path(), day), conflicts);

    let five = run_ledger(dir.path(), day, &["--passes", "5", "--buckets", "3"]);
    assert_eq!(five["passes"], 5);
    assert!(five["added_files"].as_u64().unwrap() >= 5, "{five}");
    assert_eq!(five["fingerprint"], one["fingerprint"]);
    assert_eq!(five["disputed"], one["disputed"]);
    assert_eq!(ledger_rows(dir.path(), day), want);
    assert_eq!(conflict_rows(dir.path(), day), conflicts);

    // Passes under a memory limit (how many a limit needs is a unit test of `passes::needed`).
    let limited = run_ledger(
        dir.path(),
        day,
        &["--memory-limit", "64MiB", "--buckets", "2", "--passes", "3"],
    );
    assert_eq!(limited["passes"], 3);
    assert_eq!(limited["fingerprint"], one["fingerprint"]);
    assert_eq!(ledger_rows(dir.path(), day), want);
    assert_eq!(conflict_rows(dir.path(), day), conflicts);
}

#[test]
fn explain_shows_hash_partitioning_on_the_txn_key() {
    let dir = tempdir();
    generate(dir.path(), 1, 1_000, 25);
    let out = tally_ok(dir.path(), &["ledger", "--date", "2026-11-01", "--explain"]);
    // The dedup key is txn_key(txn_id), the hash behind txn_bucket; the shuffle is on it alone.
    assert!(out.contains("txn_key(txn_id"), "{out}");
    assert!(out.contains("Hash([txn_key@"), "{out}");
    assert!(!out.contains("Hash([partner_id"), "{out}");
    assert!(
        !dir.path().join("lake/ledger/_delta_log").exists(),
        "explain must not write"
    );
}

#[test]
fn concurrent_runs_for_different_days_both_commit() {
    let dir = tempdir();
    generate(dir.path(), 3, 10_000, 26);
    run_ledger(dir.path(), "2026-11-01", &[]); // create the table first
    let spawn = |d: &str| {
        tally_cmd(dir.path())
            .args(["ledger", "--date", d])
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn("2026-11-02"), spawn("2026-11-03"));
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    let raw = read_raw(&dir.path().join("lake"));
    for d in ["2026-11-01", "2026-11-02", "2026-11-03"] {
        assert_eq!(
            ledger_rows(dir.path(), d),
            expected_ledger(&raw, d, 3),
            "{d}"
        );
    }
}

#[test]
fn killed_mid_write_leaves_the_previous_ledger_intact() {
    let dir = tempdir();
    generate(dir.path(), 1, 200_000, 27);
    let first = run_ledger(dir.path(), "2026-11-01", &[]);
    let rows = ledger_rows(dir.path(), "2026-11-01");
    let table = dir.path().join("lake/ledger");
    let partition = table.join("event_date=2026-11-01");
    let versions = delta_versions(&table);
    let entries = |p: &Path| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    for attempt in 0..3 {
        let before = entries(&partition);
        let mut child = tally_cmd(dir.path())
            .args(["ledger", "--date", "2026-11-01"])
            .spawn()
            .unwrap();
        // Wait for the run to start writing its new files (staged or finished), then SIGKILL.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while entries(&partition) == before && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(
            entries(&partition) > before,
            "attempt {attempt}: no new file appeared"
        );
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "attempt {attempt}: the run finished before the kill"
        );
        assert_eq!(
            delta_versions(&table),
            versions,
            "attempt {attempt}: a commit landed"
        );
        assert_eq!(
            ledger_rows(dir.path(), "2026-11-01"),
            rows,
            "attempt {attempt}"
        );
    }
    let again = run_ledger(dir.path(), "2026-11-01", &[]);
    assert_eq!(again["fingerprint"], first["fingerprint"]);
}

fn assert_bad_input_changes_nothing(dir: &Path, needle: &str) {
    let table = dir.join("lake/ledger");
    let versions = delta_versions(&table);
    let rows = ledger_rows(dir, "2026-11-01");
    let err = tally_fails(dir, &["ledger", "--date", "2026-11-01"], 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(delta_versions(&table), versions, "no new Delta version");
    assert_eq!(ledger_rows(dir, "2026-11-01"), rows);
}

/// A Spark-style `_temporary/` attempt (half-written) and a hidden file in a raw partition are
/// not data: the ledger ignores them, as the SQL table does.
#[test]
fn temporary_and_hidden_raw_files_are_not_read() {
    let dir = tempdir();
    generate(dir.path(), 1, 2_000, 29);
    let before = run_ledger(dir.path(), "2026-11-01", &[]);
    let raw_rows = read_raw(&dir.path().join("lake")).len();
    let part = dir.path().join("lake/raw/payments/ingest_date=2026-11-01");
    std::fs::create_dir_all(part.join("_temporary/0")).unwrap();
    std::fs::write(
        part.join("_temporary/0/part-0.parquet"),
        b"PAR1 half written",
    )
    .unwrap();
    std::fs::write(part.join(".part-1.parquet"), b"PAR1 half written").unwrap();
    let after = run_ledger(dir.path(), "2026-11-01", &[]);
    assert_eq!(after["fingerprint"], before["fingerprint"]);
    assert_eq!(after["files_read"], before["files_read"], "{after}");
    let count = |dir: &Path| {
        csv_rows(&tally_ok(
            dir,
            &[
                "sql",
                "SELECT count(*) FROM raw_payments",
                "--format",
                "csv",
            ],
        ))[0][0]
            .clone()
    };
    assert_eq!(count(dir.path()), raw_rows.to_string());
}

#[test]
fn bad_input_fails_naming_it_and_changes_nothing() {
    use arrow::array::{Decimal128Array, StringArray, TimestampMicrosecondArray};
    use std::sync::Arc;
    let dir = tempdir();
    generate(dir.path(), 1, 2_000, 28);
    run_ledger(dir.path(), "2026-11-01", &[]);
    let part = dir.path().join("lake/raw/payments/ingest_date=2026-11-02");
    std::fs::create_dir_all(&part).unwrap();

    // A corrupt file.
    let corrupt = part.join("corrupt.parquet");
    std::fs::write(&corrupt, b"PAR1 definitely not parquet").unwrap();
    assert_bad_input_changes_nothing(dir.path(), "corrupt.parquet");
    std::fs::remove_file(&corrupt).unwrap();

    // A file whose amount is a float.
    let float_file = part.join("float-amount.parquet");
    write_float_amount_file(&float_file, "txf", day_start("2026-11-01") + 1_000);
    assert_bad_input_changes_nothing(dir.path(), "float-amount.parquet");
    std::fs::remove_file(&float_file).unwrap();

    // A file with a null txn_id.
    let t = day_start("2026-11-01") + 1_000;
    let s = |v: Option<&str>| Arc::new(StringArray::from(vec![v])) as arrow::array::ArrayRef;
    let tsa = || {
        Arc::new(TimestampMicrosecondArray::from(vec![t]).with_timezone("UTC"))
            as arrow::array::ArrayRef
    };
    let schema = raw_file_schema(true);
    let amount = Arc::new(
        Decimal128Array::from(vec![150i128])
            .with_precision_and_scale(18, 2)
            .unwrap(),
    );
    let batch = arrow::array::RecordBatch::try_new(
        schema,
        vec![
            s(None),
            s(Some("p")),
            tsa(),
            tsa(),
            amount,
            s(Some("USD")),
            s(Some("ok")),
        ],
    )
    .unwrap();
    let null_file = part.join("null-txn.parquet");
    write_parquet(&null_file, batch);
    assert_bad_input_changes_nothing(dir.path(), "null-txn.parquet");
    std::fs::remove_file(&null_file).unwrap();

    // A bad date.
    let err = tally_fails(dir.path(), &["ledger", "--date", "2026-11-31"], 1);
    assert!(err.contains("2026-11-31"), "{err}");
}

/// The ledger of `day` read through a prepared command (e.g. one pointed at S3).
pub fn ledger_rows_with(cmd: &mut std::process::Command, day: &str) -> BTreeMap<String, Row> {
    let sql = LEDGER_SQL.replace("{day}", day);
    csv_rows(&run_ok(cmd.args(["sql", sql.as_str(), "--format", "csv"])))
        .into_iter()
        .map(|r| (r[0].clone(), r))
        .collect()
}

/// What `tally ledger` promises about its files, read from the files themselves: rows ordered by
/// (`partner_id`, `txn_id`) so both prune, row groups of at most 128k rows, min/max statistics
/// on the sort keys, a `txn_id` bloom filter that holds every id of its row group, and the
/// column encodings chosen for size (delta-packed timestamps, zstd elsewhere).
#[test]
fn ledger_files_are_sorted_with_statistics_bloom_filters_and_delta_encodings() {
    use parquet::basic::{Compression, Encoding};
    use parquet::file::properties::ReaderProperties;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::serialized_reader::ReadOptionsBuilder;

    let dir = tempdir();
    generate(dir.path(), 2, 20_000, 31);
    run_ledger(dir.path(), "2026-11-01", &["--buckets", "3"]);
    let files = parquet_files(&dir.path().join("lake/ledger"));
    // One file per bucket, and one for the transactions settled as disputed.
    assert!(files.len() >= 3, "one file per bucket: {files:?}");
    for file in &files {
        let options = ReadOptionsBuilder::new()
            .with_reader_properties(
                ReaderProperties::builder()
                    .set_read_bloom_filter(true)
                    .build(),
            )
            .build();
        let reader =
            SerializedFileReader::new_with_options(std::fs::File::open(file).unwrap(), options)
                .unwrap();
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let column = |name: &str| {
            (0..schema.num_columns())
                .find(|&i| schema.column(i).name() == name)
                .unwrap_or_else(|| panic!("{file:?} has no column {name}"))
        };
        let (txn, partner, event_time, amount) = (
            column("txn_id"),
            column("partner_id"),
            column("event_time"),
            column("amount"),
        );
        let mut previous: Option<(String, String)> = None;
        for (g, meta) in reader.metadata().row_groups().iter().enumerate() {
            assert!(
                meta.num_rows() <= 131_072,
                "{file:?}: row group {g} too big"
            );
            let chunk = |i: usize| meta.column(i);
            // Plain ids, no dictionary: the widest reader support (see part_writer). PLAIN alone
            // would also be listed for a dictionary page, so the others are ruled out.
            let txn_encodings: Vec<Encoding> = chunk(txn).encodings().collect();
            assert!(
                txn_encodings.contains(&Encoding::PLAIN)
                    && !txn_encodings.iter().any(|e| matches!(
                        e,
                        Encoding::RLE_DICTIONARY
                            | Encoding::PLAIN_DICTIONARY
                            | Encoding::DELTA_LENGTH_BYTE_ARRAY
                            | Encoding::DELTA_BYTE_ARRAY
                    )),
                "{file:?}: txn_id encodings {txn_encodings:?}"
            );
            for i in [event_time, amount] {
                assert!(chunk(i)
                    .encodings()
                    .any(|e| e == Encoding::DELTA_BINARY_PACKED));
                assert_eq!(chunk(i).compression(), Compression::UNCOMPRESSED);
            }
            assert!(matches!(chunk(txn).compression(), Compression::ZSTD(_)));
            for i in [txn, partner] {
                let stats = chunk(i).statistics().expect("statistics");
                assert!(stats.min_bytes_opt().is_some() && stats.max_bytes_opt().is_some());
            }
            let bloom = reader
                .get_row_group(g)
                .unwrap()
                .get_column_bloom_filter(txn)
                .cloned()
                .expect("txn_id bloom filter");
            // The rows of this row group, in file order.
            let rows = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(file).unwrap(),
            )
            .unwrap()
            .with_row_groups(vec![g])
            .build()
            .unwrap();
            for batch in rows {
                let batch = batch.unwrap();
                let ids = batch.column_by_name("txn_id").unwrap();
                let partners = batch.column_by_name("partner_id").unwrap();
                for r in 0..batch.num_rows() {
                    let key = (string_at(partners.as_ref(), r), string_at(ids.as_ref(), r));
                    assert!(
                        bloom.check(&key.1.as_str()),
                        "{file:?}: {} not in the filter",
                        key.1
                    );
                    if let Some(p) = &previous {
                        assert!(p < &key, "{file:?}: {p:?} before {key:?}");
                    }
                    previous = Some(key);
                }
            }
        }
    }
}

/// The statistics of the ledger's Delta `add`s are bounds readers can use: a 36-character UUID
/// `txn_id` gets a 32-character prefix as its minimum and an incremented prefix as its maximum
/// (not no bounds at all), and the largest `Decimal(18,2)` amount is written digit for digit
/// (a float would print 1e16). A lookup by id still finds its row through those bounds.
#[test]
fn ledger_file_statistics_bound_uuid_ids_and_exact_amounts() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let day = "2026-11-01";
    let at = micros("2026-11-01T10:00:00Z");
    let ids = [
        "0b5e9c1e-4f7a-4c3e-9d2b-8a1f3e6c7d90",
        "0b5e9c1e-4f7a-4c3e-9d2b-8a1f3e6cffff",
        "f0000000-0000-4000-8000-000000000001",
    ];
    let rows: Vec<RawRow> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            ok_row(
                id,
                "p1",
                at + i as i64,
                at + 1_000_000,
                999_999_999_999_999_999 - i as i128,
            )
        })
        .collect();
    write_raw(&lake, day, "uuids.parquet", &rows);
    run_ledger(dir.path(), day, &[]);
    let mut stats: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(lake.join("ledger/_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let action: serde_json::Value = serde_json::from_str(line).unwrap();
                if let Some(s) = action["add"]["stats"].as_str() {
                    stats.push(s.to_string());
                }
            }
        }
    }
    assert!(!stats.is_empty(), "no add with stats");
    // Read as text: a JSON parser would turn the amounts into floats. The rows spread over
    // files by txn_id hash; the largest and smallest amounts are a bound of some file.
    let all = stats.join("\n");
    assert!(
        all.contains(":9999999999999999.99"),
        "exact max amount: {all}"
    );
    assert!(
        all.contains(":9999999999999999.97"),
        "exact min amount: {all}"
    );
    assert!(!all.contains("e16") && !all.contains("E16"), "{all}");
    let bounds: Vec<(String, String)> = stats
        .iter()
        .map(|s| {
            let v: serde_json::Value = serde_json::from_str(s).unwrap();
            let lo = v["minValues"]["txn_id"].as_str().expect("txn_id min");
            let hi = v["maxValues"]["txn_id"].as_str().expect("txn_id max");
            assert_eq!(lo.chars().count(), 32, "{lo}");
            assert_eq!(hi.chars().count(), 32, "{hi}");
            (lo.to_string(), hi.to_string())
        })
        .collect();
    for id in ids {
        assert!(
            bounds
                .iter()
                .any(|(lo, hi)| lo.as_str() <= id && id < hi.as_str()),
            "{id} is in no file's bounds: {bounds:?}"
        );
    }
    for id in ids {
        let sql = format!("SELECT count(*) FROM ledger WHERE txn_id = '{id}'");
        assert_eq!(
            tally_ok(dir.path(), &["sql", &sql, "--format", "csv"])
                .lines()
                .nth(1),
            Some("1")
        );
    }
}

/// A raw lake kept as a Delta table is read through its log: after a `DELETE` of one partner's
/// rows (made by deltalake-python, which rewrites the files) and with an uncommitted file of a
/// crashed writer in the day's folder, the ledger bills exactly the snapshot's rows: none of
/// the deleted partner's, no copy counted twice from a replaced file, nothing uncommitted.
/// A raw Delta table not partitioned by `ingest_date` is refused in one line.
#[test]
fn a_raw_delta_table_is_read_through_its_log_not_its_folders() {
    let dir = tempdir();
    let day = "2026-11-01";
    generate(dir.path(), 2, 3000, 33);
    let lake = dir.path().join("lake");
    let oracle = dir.path().join("oracle");
    std::fs::rename(lake.join("raw/payments"), dir.path().join("plain")).unwrap();
    let script = format!(
        r#"
import deltalake, pyarrow as pa, pyarrow.dataset as ds, pyarrow.parquet as pq, os, shutil
from urllib.parse import urlparse, unquote
part = ds.partitioning(pa.schema([("ingest_date", pa.string())]), flavor="hive")
t = ds.dataset({plain:?}, format="parquet", partitioning=part).to_table()
dest = {dest:?}
deltalake.write_deltalake(dest, t, partition_by=["ingest_date"])
dt = deltalake.DeltaTable(dest)
partner = t.filter(ds.field("ingest_date") == {day:?}).column("partner_id")[0].as_py()
dt.delete(f"partner_id = '{{partner}}'")
dt = deltalake.DeltaTable(dest)
# A crashed writer's file: rows of the day in the folder, never committed.
active = [unquote(urlparse(u).path) for u in dt.file_uris() if "ingest_date={day}" in u]
shutil.copy(active[0], os.path.join(os.path.dirname(active[0]), "part-99999-crashed.parquet"))
snap = dt.to_pyarrow_table()
for d in set(snap.column("ingest_date").to_pylist()):
    rows = snap.filter(ds.field("ingest_date") == d).drop_columns(["ingest_date"])
    os.makedirs(f"{oracle}/raw/payments/ingest_date={{d}}", exist_ok=True)
    pq.write_table(rows, f"{oracle}/raw/payments/ingest_date={{d}}/snapshot.parquet")
print(partner)
"#,
        plain = dir.path().join("plain").to_str().unwrap(),
        dest = lake.join("raw/payments").to_str().unwrap(),
        oracle = oracle.to_str().unwrap(),
    );
    let partner = String::from_utf8(python(&script))
        .unwrap()
        .trim()
        .to_string();
    let snapshot = read_raw(&oracle);
    assert!(snapshot.iter().all(|r| r.partner_id != partner));
    run_ledger(dir.path(), day, &[]);
    let got = ledger_rows(dir.path(), day);
    assert!(!got.is_empty());
    assert!(
        got.values().all(|r| r[1] != partner),
        "the deleted partner {partner} was billed"
    );
    assert_eq!(got, expected_ledger(&snapshot, day, 3));

    // Not partitioned by arrival day: the ledger cannot tell a file's window.
    let flat = tempdir();
    generate(flat.path(), 1, 500, 34);
    let flat_lake = flat.path().join("lake");
    std::fs::rename(flat_lake.join("raw/payments"), flat.path().join("plain")).unwrap();
    python(&format!(
        "import deltalake, pyarrow.dataset as ds\n\
         t = ds.dataset({:?}, format='parquet').to_table()\n\
         deltalake.write_deltalake({:?}, t)\n",
        flat.path().join("plain").to_str().unwrap(),
        flat_lake.join("raw/payments").to_str().unwrap()
    ));
    let err = tally_fails(flat.path(), &["ledger", "--date", day], 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("raw_payments") && err.contains("not partitioned by ingest_date"),
        "{err}"
    );
}

/// Every key index under the lake, by path.
fn key_indexes(lake: &Path) -> BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![lake.join("_tally/key_index")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".keys.parquet") {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn key_indexes_are_reused_and_a_wrong_or_broken_one_is_rebuilt_not_trusted() {
    let dir = tempdir();
    generate(dir.path(), 3, 20_000, 23);
    let lake = dir.path().join("lake");
    let day = "2026-11-02";
    // Thirty of the day's transactions get a re-stamped copy naming a neighbouring day, among
    // unrelated rows, so the lookup must pick single rows out of a file: a copy naming 11-01
    // that arrived first (11-01 owns it) or one naming 11-03 that arrived last (D keeps it).
    let generated = read_raw(&lake);
    let mut before = Vec::new();
    let mut after = Vec::new();
    for (i, r) in generated
        .iter()
        .filter(|r| day_of(r.event_time) == day && eligible(r, 3))
        .take(30)
        .enumerate()
    {
        let pad = |n: i64| {
            ok_row(
                &format!("pad-{i}-{n}"),
                "p9",
                r.event_time - DAY_US + n,
                r.event_time + n,
                100,
            )
        };
        let mut copy = r.clone();
        if i % 2 == 0 {
            copy.event_time -= DAY_US;
            copy.ingest_time = copy.event_time + 1;
            before.extend([pad(1), copy, pad(2)]);
        } else {
            copy.event_time += DAY_US;
            copy.ingest_time = r.ingest_time + 5 * DAY_US;
            after.extend([pad(3), copy, pad(4)]);
        }
    }
    write_raw(&lake, "2026-11-01", "restamped.parquet", &before);
    write_raw(&lake, "2026-11-03", "restamped.parquet", &after);
    let raw = read_raw(&lake);
    let want = expected_ledger(&raw, day, 3);
    let want_conflicts = expected_conflicts(&raw, day, 3);
    assert!(
        want_conflicts.iter().any(|r| r[7] != day),
        "the generator should give the day transactions shared with a neighbouring day"
    );
    let check = |label: &str| {
        let summary = run_ledger(dir.path(), day, &[]);
        assert_eq!(ledger_rows(dir.path(), day), want, "{label}: ledger rows");
        assert_eq!(
            conflict_rows(dir.path(), day),
            want_conflicts,
            "{label}: conflicts"
        );
        summary
    };
    // Cold: every index is built from the raw files and left beside the lake.
    let cold = check("cold");
    let built = key_indexes(&lake);
    assert!(built.len() >= 5, "indexes written: {:?}", built.keys());
    // Warm: read, not rebuilt (same bytes), same answer.
    let warm = check("warm");
    assert_eq!(warm["fingerprint"], cold["fingerprint"]);
    assert_eq!(key_indexes(&lake), built);
    // Each index replaced by another file's (it names another raw file's size and row count),
    // one by garbage, one removed: each is rebuilt, never used.
    let paths: Vec<_> = built.keys().cloned().collect();
    for (i, p) in paths.iter().enumerate() {
        let other = &built[&paths[(i + 1) % paths.len()]];
        std::fs::write(p, other).unwrap();
    }
    std::fs::write(&paths[0], b"PAR1 not an index PAR1").unwrap();
    std::fs::remove_file(&paths[1]).unwrap();
    let forged = check("forged");
    assert_eq!(forged["fingerprint"], cold["fingerprint"]);
    assert_eq!(key_indexes(&lake), built, "every index rebuilt as it was");
}
