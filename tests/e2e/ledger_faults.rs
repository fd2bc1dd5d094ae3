//! The ledger under partner and operator faults: empty and shrinking reruns, clock-skewed
//! partners, transactions spanning two days, stale runs, files landing mid-run, crashes at
//! each commit window, unreachable stores, and file statistics other engines read.

use crate::harness::ok_row as row;
use crate::harness::*;
use crate::ledger::{
    conflict_rows, delta_versions, expected_conflicts, expected_ledger, ledger_rows, run_ledger,
};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const DAY_US: i64 = 86_400_000_000;

/// `runs` rows of `day`, oldest first: (outcome, ledger_rows, rows_without_event_time).
fn runs_of(dir: &Path, day: &str) -> Vec<Vec<String>> {
    let sql = format!(
        "SELECT outcome, ledger_rows, rows_without_event_time FROM runs WHERE day = DATE '{day}' ORDER BY started_at"
    );
    csv_rows(&tally_ok(dir, &["sql", &sql, "--format", "csv"]))
}

#[test]
fn an_empty_rerun_is_refused_unless_allowed_and_runs_records_the_refusal() {
    let dir = tempdir();
    generate(dir.path(), 1, 5_000, 61);
    let day = "2026-11-01";
    let first = run_ledger(dir.path(), day, &[]);
    let rows = ledger_rows(dir.path(), day);
    let table = dir.path().join("lake/ledger");
    let versions = delta_versions(&table);
    // The raw partitions expired (a lifecycle rule) or the prefix is wrong.
    let raw = dir.path().join("lake/raw");
    std::fs::rename(&raw, dir.path().join("raw-elsewhere")).unwrap();
    let err = tally_fails(dir.path(), &["ledger", "--date", day], 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(day) && err.contains("no raw files") && err.contains("--allow-empty"),
        "{err}"
    );
    assert_eq!(delta_versions(&table), versions, "no commit");
    assert_eq!(ledger_rows(dir.path(), day), rows);
    // Backfill does not "rebuild" it either.
    let err = tally_fails(dir.path(), &["backfill", "--from", day, "--to", day], 1);
    assert!(err.contains("--allow-empty"), "{err}");
    assert_eq!(ledger_rows(dir.path(), day), rows);
    let runs = runs_of(dir.path(), day);
    assert_eq!(
        runs.iter().filter(|r| r[0] == "refused").count(),
        2,
        "{runs:?}"
    );
    // Said explicitly, the day is emptied.
    let empty = run_ledger(dir.path(), day, &["--allow-empty"]);
    assert_eq!(empty["ledger_rows"], 0);
    assert!(ledger_rows(dir.path(), day).is_empty());
    assert_ne!(first["version"], empty["version"]);
}

#[test]
fn a_rebuild_that_loses_more_than_max_shrink_is_refused() {
    let dir = tempdir();
    generate(dir.path(), 1, 20_000, 62);
    let day = "2026-11-01";
    run_ledger(dir.path(), day, &[]);
    let rows = ledger_rows(dir.path(), day);
    // One of the day's files is gone (a quarter of its transactions).
    let gone = parquet_files(&dir.path().join("lake/raw/payments/ingest_date=2026-11-01"))
        .into_iter()
        .next()
        .unwrap();
    std::fs::remove_file(&gone).unwrap();
    let err = tally_fails(dir.path(), &["ledger", "--date", day], 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("fewer") && err.contains("--max-shrink"),
        "{err}"
    );
    assert_eq!(ledger_rows(dir.path(), day), rows, "the day is as it was");
    assert_eq!(runs_of(dir.path(), day).last().unwrap()[0], "refused");
    // A bare `1` could mean 1% or 100%: refused before anything runs, with the forms to use.
    let err = tally_fails(
        dir.path(),
        &["ledger", "--date", day, "--max-shrink", "1"],
        2,
    );
    assert!(err.contains("ambiguous") && err.contains("1%"), "{err}");
    assert_eq!(ledger_rows(dir.path(), day), rows);
    let raw = read_raw(&dir.path().join("lake"));
    run_ledger(dir.path(), day, &["--max-shrink", "100%"]);
    assert_eq!(ledger_rows(dir.path(), day), expected_ledger(&raw, day, 3));
}

#[test]
fn events_arriving_the_evening_before_are_counted_and_rows_without_event_time_reported() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let d = micros("2026-11-05T00:00:00Z");
    // A partner clock three minutes fast: D's first events land on D − 1.
    write_raw(
        &lake,
        "2026-11-04",
        "evening.parquet",
        &[
            row("skew-1", "p1", d + 30_000_000, d - 150_000_000, 1_000),
            row("before", "p1", d - 600_000_000, d - 599_000_000, 2_000),
        ],
    );
    write_raw(
        &lake,
        "2026-11-05",
        "day.parquet",
        &[row(
            "on-time",
            "p1",
            d + DAY_US / 2,
            d + DAY_US / 2 + 1,
            3_000,
        )],
    );
    // Rows arriving on D without an event_time can be in no day's ledger: counted, not hidden.
    {
        use arrow::array::*;
        use std::sync::Arc;
        let ts = |v: Option<i64>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(vec![v, v]).with_timezone("UTC"))
        };
        let batch = RecordBatch::try_new(
            raw_file_schema(false),
            vec![
                Arc::new(StringArray::from(vec!["no-time-1", "no-time-2"])),
                Arc::new(StringArray::from(vec!["p1", "p1"])),
                ts(None),
                ts(Some(d + 1_000_000)),
                Arc::new(
                    Decimal128Array::from(vec![100, 200])
                        .with_precision_and_scale(18, 2)
                        .unwrap(),
                ),
                Arc::new(StringArray::from(vec!["EUR", "EUR"])),
                Arc::new(StringArray::from(vec!["ok", "ok"])),
            ],
        )
        .unwrap();
        write_parquet(
            &lake.join("raw/payments/ingest_date=2026-11-05/no-time.parquet"),
            batch,
        );
    }
    let m = run_ledger(dir.path(), "2026-11-05", &[]);
    let got = ledger_rows(dir.path(), "2026-11-05");
    assert!(
        got.contains_key("skew-1"),
        "the early arrival is in D: {got:?}"
    );
    assert!(got.contains_key("on-time") && !got.contains_key("before"));
    assert_eq!(got.len(), 2);
    assert_eq!(m["rows_without_event_time"], 2);
    assert_eq!(runs_of(dir.path(), "2026-11-05").last().unwrap()[2], "2");
    // The commit info says so too.
    let text = last_commit(&lake.join("ledger"));
    assert!(text.contains("\"rows_without_event_time\":2"), "{text}");
}

/// Copies of one transaction whose event_times straddle midnight: the day of the copy that
/// arrived first owns it; the other day leaves it out; both list it with the reason.
#[test]
fn a_transaction_with_copies_on_two_days_is_in_exactly_one_ledger() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let d1 = micros("2026-11-10T00:00:00Z");
    let d2 = d1 + DAY_US;
    let mut day1 = Vec::new();
    let mut day2 = Vec::new();
    for i in 0..200 {
        let t = d1 + i * 400_000_000;
        day1.push(row(
            &format!("a-{i}"),
            "p1",
            t,
            t + 1_000_000,
            100 + i as i128,
        ));
        day2.push(row(
            &format!("b-{i}"),
            "p2",
            d2 + i * 400_000_000,
            d2 + i * 400_000_000 + 1,
            7,
        ));
    }
    // x: first copy names 11-10 (arrives first), a retry re-stamped after midnight names 11-11.
    day1.push(row("x", "p1", d2 - 10_000_000, d2 - 9_000_000, 4_200));
    day2.push(row("x", "p1", d2 + 20_000_000, d2 + 21_000_000, 4_200));
    // y: the copy naming 11-11 arrived first (the 11-10 copy came a day late).
    day2.push(row("y", "p2", d2 + 5_000_000, d2 + 6_000_000, 900));
    write_raw(&lake, "2026-11-10", "day1.parquet", &day1);
    write_raw(&lake, "2026-11-11", "day2.parquet", &day2);
    write_raw(
        &lake,
        "2026-11-12",
        "late.parquet",
        &[row("y", "p2", d2 - 5_000_000, d2 + DAY_US, 900)],
    );
    let raw = read_raw(&lake);
    // Either order, and again: the same answer.
    for days in [["2026-11-11", "2026-11-10"], ["2026-11-10", "2026-11-11"]] {
        for day in days {
            run_ledger(dir.path(), day, &[]);
        }
        let (l1, l2) = (
            ledger_rows(dir.path(), "2026-11-10"),
            ledger_rows(dir.path(), "2026-11-11"),
        );
        assert!(l1.contains_key("x") && !l2.contains_key("x"));
        assert!(l2.contains_key("y") && !l1.contains_key("y"));
        assert_eq!(l1, expected_ledger(&raw, "2026-11-10", 3));
        assert_eq!(l2, expected_ledger(&raw, "2026-11-11", 3));
        // Both copies counted in the owning row.
        assert_eq!(l1["x"][7], "2");
        for day in ["2026-11-10", "2026-11-11"] {
            assert_eq!(
                conflict_rows(dir.path(), day),
                expected_conflicts(&raw, day, 3),
                "{day}"
            );
        }
    }
    let reasons = csv_rows(&tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT txn_id, CAST(event_date AS VARCHAR), reason, CAST(copy_event_date AS VARCHAR), is_winner FROM ledger_conflicts ORDER BY 1, 2, 4",
            "--format",
            "csv",
        ],
    ));
    let r = |a: &str, b: &str, c: &str, d: &str, e: &str| {
        vec![a.to_string(), b.into(), c.into(), d.into(), e.into()]
    };
    assert_eq!(
        reasons,
        vec![
            r("x", "2026-11-10", "owned_here", "2026-11-10", "true"),
            r("x", "2026-11-10", "owned_here", "2026-11-11", "false"),
            r(
                "x",
                "2026-11-11",
                "owned_by_other_day",
                "2026-11-10",
                "true"
            ),
            r(
                "x",
                "2026-11-11",
                "owned_by_other_day",
                "2026-11-11",
                "false"
            ),
            r(
                "y",
                "2026-11-10",
                "owned_by_other_day",
                "2026-11-10",
                "false"
            ),
            r(
                "y",
                "2026-11-10",
                "owned_by_other_day",
                "2026-11-11",
                "true"
            ),
            r("y", "2026-11-11", "owned_here", "2026-11-10", "false"),
            r("y", "2026-11-11", "owned_here", "2026-11-11", "true"),
        ]
    );
}

/// The ledger's bound: one transaction's copies name days at most two apart. `z` has copies
/// naming D − 1, D and D + 1, and its earliest copy names D + 1, while D − 1's copy arrived
/// before D's: a run of D − 1 that saw only D − 1 and D kept it, as did D + 1's. Every day
/// must now leave it to D + 1, in any order. `w`'s copies name days three apart: the middle
/// day that sees them all says so.
#[test]
fn a_transaction_with_copies_on_three_days_is_in_exactly_one_ledger() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let d0 = micros("2026-11-10T00:00:00Z");
    let (d1, d2, d3) = (d0 + DAY_US, d0 + 2 * DAY_US, d0 + 3 * DAY_US);
    let hour = 3_600_000_000;
    let mut files: Vec<(&str, Vec<RawRow>)> = vec![
        ("2026-11-10", Vec::new()),
        ("2026-11-11", Vec::new()),
        ("2026-11-12", Vec::new()),
        ("2026-11-13", Vec::new()),
    ];
    for (k, (_, rows)) in files.iter_mut().enumerate() {
        let start = d0 + k as i64 * DAY_US;
        for i in 0..50 {
            let t = start + i * 600_000_000;
            rows.push(row(
                &format!("f{k}-{i}"),
                "p1",
                t,
                t + 1_000_000,
                100 + i as i128,
            ));
        }
    }
    // z: the copy naming 11-12 (a clock running ahead) landed first, on the evening of 11-11.
    files[1]
        .1
        .push(row("z", "p2", d2 + 60_000_000, d2 - 60_000_000, 5_000));
    // Then a replay re-stamped on 11-10, an hour before the copy naming 11-11.
    files[2]
        .1
        .push(row("z", "p2", d0 + 12 * hour, d2 + 8 * hour, 5_000));
    files[2]
        .1
        .push(row("z", "p2", d1 + 12 * hour, d2 + 9 * hour, 5_000));
    // w: copies naming 11-10, 11-11 and 11-13: three days apart, beyond the bound.
    files[1]
        .1
        .push(row("w", "p3", d0 + 20 * hour, d1 + hour, 700));
    files[1]
        .1
        .push(row("w", "p3", d1 + 20 * hour, d1 + 2 * hour, 700));
    files[3]
        .1
        .push(row("w", "p3", d3 + hour, d3 + 2 * hour, 700));
    for (day, rows) in &files {
        write_raw(&lake, day, "part.parquet", rows);
    }
    let raw = read_raw(&lake);
    let days = ["2026-11-10", "2026-11-11", "2026-11-12", "2026-11-13"];
    for order in [[0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0]] {
        let mut reports = Vec::new();
        for i in order {
            reports.push((days[i], run_ledger(dir.path(), days[i], &[])));
        }
        let ledgers: Vec<_> = days.iter().map(|d| ledger_rows(dir.path(), d)).collect();
        for (day, got) in days.iter().zip(&ledgers) {
            assert_eq!(got, &expected_ledger(&raw, day, 3), "{day}");
            assert_eq!(
                conflict_rows(dir.path(), day),
                expected_conflicts(&raw, day, 3),
                "{day}"
            );
        }
        let holders: Vec<&str> = days
            .iter()
            .zip(&ledgers)
            .filter(|(_, l)| l.contains_key("z"))
            .map(|(d, _)| *d)
            .collect();
        assert_eq!(holders, vec!["2026-11-12"], "order {order:?}");
        assert_eq!(
            ledgers[2]["z"][7], "3",
            "every copy counted in the owning row"
        );
        for (day, m) in &reports {
            let beyond = if *day == "2026-11-11" { 1 } else { 0 };
            assert_eq!(m["spread_beyond_bound"], beyond, "{day}: {m}");
            // Every day read the same copies: nobody's ledger is stale (w's spread beyond the
            // bound is reported, and rebuilding would not change it).
            assert_eq!(m["days_to_rebuild"], serde_json::json!([]), "{day}: {m}");
        }
    }
    let reasons = csv_rows(&tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT DISTINCT reason FROM ledger_conflicts WHERE txn_id = 'w' AND event_date = DATE '2026-11-11'",
            "--format",
            "csv",
        ],
    ));
    assert_eq!(reasons, vec![vec!["spread_beyond_bound".to_string()]]);
}

/// A copy landing late in an old `ingest_date` folder changes which day owns a transaction:
/// the rerun of that day must name the neighbour whose committed ledger now disagrees (in its
/// output and as a `stale` row in `runs`), and a backfill over the neighbour rebuilds it.
#[test]
fn a_rerun_that_changes_ownership_names_the_neighbour_to_rebuild() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let d0 = micros("2026-11-10T00:00:00Z");
    let d1 = d0 + DAY_US;
    let mut day0 = Vec::new();
    let mut day1 = Vec::new();
    // 200 rows a day: moving one transaction stays within the rebuild's --max-shrink of 1%.
    for i in 0..200 {
        let (t0, t1) = (d0 + i * 400_000_000, d1 + i * 400_000_000);
        day0.push(row(&format!("a-{i}"), "p1", t0, t0 + 1, 10 + i as i128));
        day1.push(row(&format!("b-{i}"), "p1", t1, t1 + 1, 20 + i as i128));
    }
    // s: the copy naming 11-11 arrived first; a retry re-stamped 11-10 came after it.
    day1.push(row("s", "p2", d1 + 600_000_000, d1 + 660_000_000, 900));
    day1.push(row("s", "p2", d1 - 60_000_000, d1 + 1_200_000_000, 900));
    write_raw(&lake, "2026-11-10", "day0.parquet", &day0);
    write_raw(&lake, "2026-11-11", "day1.parquet", &day1);
    run_ledger(dir.path(), "2026-11-10", &[]);
    run_ledger(dir.path(), "2026-11-11", &[]);
    assert!(ledger_rows(dir.path(), "2026-11-11").contains_key("s"));
    assert!(!ledger_rows(dir.path(), "2026-11-10").contains_key("s"));

    // A delayed uploader lands the original copy naming 11-10 in the 11-10 folder: it arrived
    // first, so 11-10 owns s now.
    write_raw(
        &lake,
        "2026-11-10",
        "delayed.parquet",
        &[row("s", "p2", d1 - 60_000_000, d1 - 30_000_000, 900)],
    );
    let out = tally_cmd(dir.path())
        .args(["ledger", "--date", "2026-11-10", "--format", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let m: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        m["days_to_rebuild"],
        serde_json::json!([{"day": "2026-11-11", "transactions": 1}]),
        "{m}"
    );
    assert!(
        stderr.contains("rebuild it (tally ledger --date 2026-11-11"),
        "{stderr}"
    );
    assert!(ledger_rows(dir.path(), "2026-11-10").contains_key("s"));
    assert_eq!(
        runs_of(dir.path(), "2026-11-11").last().unwrap()[0],
        "stale",
        "the neighbour is marked for rebuilding"
    );
    let commit = last_commit(&lake.join("ledger"));
    assert!(
        commit.contains("\"days_to_rebuild\":[{\"day\":\"2026-11-11\",\"transactions\":1}]"),
        "{commit}"
    );

    // A backfill over the neighbour rebuilds it; then every day agrees and nothing is stale.
    let report = tally_ok(
        dir.path(),
        &[
            "backfill",
            "--from",
            "2026-11-11",
            "--to",
            "2026-11-11",
            "--progress",
            "json",
        ],
    );
    assert!(report.contains("\"built\":[\"2026-11-11\"]"), "{report}");
    let raw = read_raw(&lake);
    for day in ["2026-11-10", "2026-11-11"] {
        assert_eq!(
            ledger_rows(dir.path(), day),
            expected_ledger(&raw, day, 3),
            "{day}"
        );
    }
    assert!(!ledger_rows(dir.path(), "2026-11-11").contains_key("s"));
    let again = run_ledger(dir.path(), "2026-11-10", &[]);
    assert_eq!(again["days_to_rebuild"], serde_json::json!([]), "{again}");
    let report = tally_ok(
        dir.path(),
        &[
            "backfill",
            "--from",
            "2026-11-10",
            "--to",
            "2026-11-11",
            "--progress",
            "json",
        ],
    );
    assert!(
        report.contains("\"skipped\":[\"2026-11-10\",\"2026-11-11\"]"),
        "{report}"
    );
}

/// A run stopped (SIGSTOP: a suspended VM, a long GC pause) past its lease, while a newer run
/// takes the day over and commits, must not commit over it when it resumes.
#[test]
fn a_run_paused_past_its_lease_never_commits_over_the_newer_run() {
    let dir = tempdir();
    generate(dir.path(), 1, 5_000, 63);
    let day = "2026-11-01";
    run_ledger(dir.path(), day, &[]);
    let stale = tally_cmd(dir.path())
        .args(["ledger", "--date", day])
        .env("TALLY_LEASE_SECS", "2")
        .env("TALLY_FAILPOINT", "ledger_before_commit:stop")
        .spawn()
        .unwrap();
    wait_stopped(&stale);
    // A late file lands, and a newer run (after the stale lease expired) includes it.
    let late_at = micros("2026-11-01T12:00:00Z");
    write_raw(
        &dir.path().join("lake"),
        "2026-11-02",
        "late.parquet",
        &[row("late-one", "p9", late_at, late_at + DAY_US, 12_345)],
    );
    std::thread::sleep(Duration::from_secs(3));
    let newer = run_ledger(dir.path(), day, &[]);
    let want = ledger_rows(dir.path(), day);
    assert!(want.contains_key("late-one"));
    signal(&stale, "-CONT");
    let out = stale.wait_with_output().unwrap();
    assert!(!out.status.success(), "the stale run must fail");
    assert_eq!(
        ledger_rows(dir.path(), day),
        want,
        "the newer run's day stands"
    );
    let versions = csv_rows(&tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT max(ledger_version) FROM runs WHERE outcome = 'ok'",
            "--format",
            "csv",
        ],
    ));
    assert_eq!(versions[0][0], newer["version"].to_string());
}

/// The files read are exactly the files checked: one landing after the check waits for the
/// next run.
#[test]
fn a_file_landing_after_the_check_is_not_read_and_the_next_run_takes_it() {
    let dir = tempdir();
    generate(dir.path(), 1, 5_000, 64);
    let day = "2026-11-01";
    let run = tally_cmd(dir.path())
        .args(["ledger", "--date", day, "--format", "json"])
        .env("TALLY_FAILPOINT", "ledger_after_input_check:stop")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(&run);
    let at = micros("2026-11-01T08:00:00Z");
    write_raw(
        &dir.path().join("lake"),
        day,
        "landed-mid-run.parquet",
        &[row("mid-run", "p9", at, at + 1_000, 500)],
    );
    signal(&run, "-CONT");
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success());
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert!(!ledger_rows(dir.path(), day).contains_key("mid-run"));
    let second = run_ledger(dir.path(), day, &[]);
    assert!(ledger_rows(dir.path(), day).contains_key("mid-run"));
    assert_eq!(
        second["files_read"].as_u64().unwrap(),
        first["files_read"].as_u64().unwrap() + 1
    );
}

/// A crash (abort: no cleanup, no lease release) at each step between the first write and the
/// last commit, then a rerun: the day is exact and the conflicts belong to its version.
#[test]
fn a_crash_at_every_ledger_failpoint_then_a_rerun_is_exact() {
    let points = tally_engine::failpoint::LEDGER_POINTS;
    assert!(points.len() >= 6);
    let base = tempdir();
    generate(base.path(), 3, 5_000, 65);
    let day = "2026-11-02";
    let base_version = run_ledger(base.path(), day, &[])["version"]
        .as_u64()
        .unwrap();
    let base_rows = ledger_rows(base.path(), day);
    let base_conflicts = conflict_rows(base.path(), day);
    for &point in points {
        let dir = tempdir();
        copy_dir(base.path(), dir.path());
        let lake = dir.path().join("lake");
        // Something new for the run to commit.
        let at = micros("2026-11-02T09:00:00Z");
        write_raw(
            &lake,
            "2026-11-03",
            "late.parquet",
            &[
                row("late-one", "p9", at, at + DAY_US, 777),
                row("late-one", "p9", at, at + DAY_US + 1, 778),
            ],
        );
        let out = tally_cmd(dir.path())
            .args(["ledger", "--date", day])
            .env("TALLY_LEASE_SECS", "1")
            .env("TALLY_FAILPOINT", point)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{point}: the run must die there");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("failpoint {point}")),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Right after the crash: the day is as it was or fully committed, never half, and
        // the conflicts name the ledger version they belong to (the old one until their own
        // commit lands, which a reader can tell).
        let raw = read_raw(&lake);
        let committed = matches!(
            point,
            "ledger_after_commit" | "ledger_after_conflicts_commit" | "ledger_after_runs_row"
        );
        let (want_rows, want_conflicts) = if committed {
            (
                expected_ledger(&raw, day, 3),
                expected_conflicts(&raw, day, 3),
            )
        } else {
            (base_rows.clone(), base_conflicts.clone())
        };
        assert_eq!(
            ledger_rows(dir.path(), day),
            want_rows,
            "{point}: right after the crash"
        );
        let ledger_now = delta_versions(&lake.join("ledger")) as u64 - 1;
        assert_eq!(ledger_now > base_version, committed, "{point}");
        let text = last_commit(&lake.join("ledger_conflicts"));
        let named = text
            .split("\"ledger_version\":")
            .nth(1)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{point}: no ledger_version in {text}"));
        if named == ledger_now {
            assert_eq!(conflict_rows(dir.path(), day), want_conflicts, "{point}");
        } else {
            assert_eq!(
                (point, named),
                ("ledger_after_commit", base_version),
                "only the moment between the two commits leaves older conflicts"
            );
            assert_eq!(conflict_rows(dir.path(), day), base_conflicts, "{point}");
        }
        std::thread::sleep(Duration::from_millis(1_100));
        let m = run_ledger(dir.path(), day, &[]);
        let raw = read_raw(&lake);
        assert_eq!(
            ledger_rows(dir.path(), day),
            expected_ledger(&raw, day, 3),
            "{point}"
        );
        assert_eq!(
            conflict_rows(dir.path(), day),
            expected_conflicts(&raw, day, 3),
            "{point}"
        );
        // The conflicts commit names the ledger version it belongs to.
        let text = last_commit(&lake.join("ledger_conflicts"));
        assert!(
            text.contains(&format!("\"ledger_version\":{}", m["version"])),
            "{point}: {text}"
        );
    }
}

/// An S3 outage in the middle of the footer check is the store's fault, not a file's: the
/// error names the endpoint and says to retry (a scheduler retries it; a bad file it must not).
#[test]
fn an_outage_during_the_footer_check_says_retry_and_names_the_endpoint_not_a_file() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    // A private server: this test takes it down.
    let mut server = Command::new("sh")
        .args([
            "-c",
            &format!("exec {} -H 127.0.0.1 -p {port}", s3_server_command()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server (scripts/test installs it)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = tempdir();
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing-secret"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let created = Command::new("curl")
        .args(["-sf", "-X", "PUT", &format!("{endpoint}/outage")])
        .status()
        .unwrap()
        .success();
    assert!(created, "create bucket");
    let lake = "s3://outage/lake";
    run_ok(tally_cmd(dir.path()).envs(env).args([
        "generate",
        "--days",
        "1",
        "--events-per-day",
        "2000",
        "--lake",
        lake,
    ]));
    let run = tally_cmd(dir.path())
        .envs(env)
        .env("TALLY_FAILPOINT", "ledger_after_listing:stop")
        .args(["ledger", "--date", "2026-11-01", "--lake", lake])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(&run);
    server.kill().unwrap();
    server.wait().unwrap();
    signal(&run, "-CONT");
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap();
    assert!(last.contains(&endpoint) && last.contains("retry"), "{err}");
    assert!(!last.contains("bad raw file"), "{err}");
}

/// Spark, DuckDB and deltalake-python skip ledger files by their Delta statistics.
#[test]
fn other_readers_see_min_max_and_null_counts_of_the_ledger_files() {
    let dir = tempdir();
    generate(dir.path(), 1, 5_000, 66);
    run_ledger(dir.path(), "2026-11-01", &[]);
    let table = dir.path().join("lake/ledger");
    let script = format!(
        "import deltalake, json\n\
         a = deltalake.DeltaTable('{}').get_add_actions(flatten=True)\n\
         cols = [c for c in a.column_names if c.startswith(('min.', 'max.', 'null_count.')) or c == 'num_records']\n\
         print(json.dumps({{c: [str(v) for v in a.column(c).to_pylist()] for c in cols}}))\n",
        table.display()
    );
    let stats: serde_json::Value = serde_json::from_slice(&python(&script)).unwrap();
    for c in [
        "partner_id",
        "txn_id",
        "event_time",
        "amount",
        "first_ingest_time",
        "copies",
    ] {
        for k in ["min", "max", "null_count"] {
            let key = format!("{k}.{c}");
            let v = stats[&key]
                .as_array()
                .unwrap_or_else(|| panic!("no {key} in {stats}"));
            assert!(v.iter().all(|x| x != "None"), "{key}: {v:?}");
        }
    }
    // The statistics are right: min/max bound the file's rows (checked on txn_id over all files).
    let mins: Vec<String> = stats["min.txn_id"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let want_min = ledger_rows(dir.path(), "2026-11-01")
        .keys()
        .next()
        .unwrap()
        .clone();
    assert_eq!(mins.iter().min().unwrap(), &want_min);
    let total: u64 = stats["num_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total as usize, ledger_rows(dir.path(), "2026-11-01").len());
}

/// Under a memory limit the partitions write sorted runs early; transactions with copies on a
/// neighbouring day are then taken back out of those files to be settled. Same ledger either
/// way, and the same as the independent count.
#[test]
fn cross_day_copies_are_settled_the_same_under_a_memory_limit() {
    let dir = tempdir();
    generate(dir.path(), 3, 150_000, 67);
    let lake = dir.path().join("lake");
    let day = "2026-11-02";
    let next = micros("2026-11-03T00:00:00Z");
    // Re-stamped retries of 300 of the day's transactions, naming the next day.
    let raw = read_raw(&lake);
    let lo = micros("2026-11-02T00:00:00Z");
    let copies: Vec<RawRow> = raw
        .iter()
        .filter(|r| r.event_time >= lo && r.event_time < next && r.ingest_date == day)
        .step_by(500)
        .take(300)
        .enumerate()
        .map(|(i, r)| RawRow {
            event_time: next + i as i64 * 1_000_000,
            ingest_time: next + i as i64 * 1_000_000 + 500_000,
            ..r.clone()
        })
        .collect();
    assert_eq!(copies.len(), 300);
    write_raw(&lake, "2026-11-03", "restamped.parquet", &copies);
    let raw = read_raw(&lake);
    let want = expected_ledger(&raw, day, 3);
    let limited = run_ledger(
        dir.path(),
        day,
        &["--memory-limit", "48MiB", "--buckets", "4"],
    );
    assert_eq!(ledger_rows(dir.path(), day), want, "under the limit");
    let free = run_ledger(dir.path(), day, &[]);
    assert_eq!(ledger_rows(dir.path(), day), want);
    assert_eq!(limited["fingerprint"], free["fingerprint"]);
    assert_eq!(
        conflict_rows(dir.path(), day),
        expected_conflicts(&raw, day, 3)
    );
}

/// Days built in parallel all commit (a scheduler runs them side by side): a run that read the
/// ledger at one version still commits after another day's run committed and after a
/// metadata-only change (a column added by another writer) landed in between. A newer run of
/// the *same* day still stops a stalled one (the test above).
#[test]
fn parallel_days_commit_beside_other_days_and_metadata_changes() {
    let dir = tempdir();
    generate(dir.path(), 3, 5_000, 65);
    let (d1, d2) = ("2026-11-01", "2026-11-02");
    // The first run creates the tables, reads them, and is paused there.
    let first = tally_cmd(dir.path())
        .args(["ledger", "--date", d1])
        .env("TALLY_FAILPOINT", "ledger_after_input_check:stop")
        .spawn()
        .unwrap();
    wait_stopped(&first);
    run_ledger(dir.path(), d2, &[]);
    python(&format!(
        "import deltalake\n\
         dt = deltalake.DeltaTable({:?})\n\
         dt.alter.add_columns(deltalake.Field('note', 'string', nullable=True))\n",
        dir.path().join("lake/ledger").to_str().unwrap()
    ));
    signal(&first, "-CONT");
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the paused day must commit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = read_raw(&dir.path().join("lake"));
    for day in [d1, d2] {
        assert_eq!(
            ledger_rows(dir.path(), day),
            expected_ledger(&raw, day, 3),
            "{day}"
        );
    }
}

/// A run paused right after confirming its lease (between the confirm and the commit) past
/// its expiry, while a newer run takes the day over and commits, is stopped by the commit
/// itself when it resumes: the day is the newer run's.
#[test]
fn a_run_paused_between_its_lease_check_and_its_commit_never_commits_over_the_newer_run() {
    let dir = tempdir();
    generate(dir.path(), 1, 5_000, 66);
    let day = "2026-11-01";
    run_ledger(dir.path(), day, &[]);
    let stale = tally_cmd(dir.path())
        .args(["ledger", "--date", day])
        .env("TALLY_LEASE_SECS", "2")
        .env("TALLY_FAILPOINT", "ledger_after_fence:stop")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(&stale);
    let late_at = micros("2026-11-01T13:00:00Z");
    write_raw(
        &dir.path().join("lake"),
        "2026-11-02",
        "late.parquet",
        &[row("late-two", "p9", late_at, late_at + DAY_US, 54_321)],
    );
    std::thread::sleep(Duration::from_secs(3));
    run_ledger(dir.path(), day, &[]);
    let want = ledger_rows(dir.path(), day);
    assert!(want.contains_key("late-two"));
    signal(&stale, "-CONT");
    let out = stale.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the stale run must fail");
    assert!(err.contains("committed by another run"), "{err}");
    assert_eq!(
        ledger_rows(dir.path(), day),
        want,
        "the newer run's day stands"
    );
}
