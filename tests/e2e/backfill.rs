//! `tally backfill`: every day built exactly as an independent dedup says, unchanged days
//! skipped, changed ones rebuilt, failed days named, a killed backfill resumed, and two
//! backfills never building one day at once.

use crate::harness::*;
use crate::ledger::{expected_ledger, ledger_rows};
use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;

/// Runs a backfill with JSON progress; returns (exit code, per-day objects, summary, stderr).
fn backfill(
    dir: &Path,
    from: &str,
    to: &str,
    extra: &[&str],
) -> (i32, Vec<serde_json::Value>, serde_json::Value, String) {
    let mut args = vec!["backfill", "--from", from, "--to", to, "--progress", "json"];
    args.extend_from_slice(extra);
    let out = tally(dir, &args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut days = Vec::new();
    let mut summary = serde_json::Value::Null;
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v.get("summary").is_some() {
            summary = v["summary"].clone();
        } else {
            days.push(v);
        }
    }
    (
        out.status.code().unwrap(),
        days,
        summary,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn outcomes(days: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = days
        .iter()
        .map(|d| {
            (
                d["day"].as_str().unwrap().to_string(),
                d["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn backfill_builds_exact_days_then_skips_unchanged_and_rebuilds_changed_ones() {
    let dir = tempdir();
    generate(dir.path(), 3, 4_000, 31);
    let lake = dir.path().join("lake");
    let (code, days, _, err) = backfill(dir.path(), "2026-11-01", "2026-11-03", &["--jobs", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        outcomes(&days),
        pairs(&[
            ("2026-11-01", "built"),
            ("2026-11-02", "built"),
            ("2026-11-03", "built")
        ])
    );
    let raw = read_raw(&lake);
    for day in ["2026-11-01", "2026-11-02", "2026-11-03"] {
        assert_eq!(
            ledger_rows(dir.path(), day),
            expected_ledger(&raw, day, 3),
            "{day}"
        );
    }

    let (code, days, _, _) = backfill(dir.path(), "2026-11-01", "2026-11-03", &[]);
    assert_eq!(code, 0);
    assert!(days.iter().all(|d| d["outcome"] == "skipped"), "{days:?}");

    // New arrivals on 2026-11-06 change the read windows of 11-03 (late_days = 3) and of the
    // days within two of it whose copies it may share: 11-01 and 11-02 (they read 11-03's
    // copies, up to 11-06).
    let t = micros("2026-11-03T12:00:00Z");
    let late = RawRow {
        txn_id: "late-resend-1".into(),
        partner_id: "partner-0001".into(),
        event_time: t,
        ingest_time: t + 3 * 86_400_000_000,
        amount: 12_345,
        currency: "EUR".into(),
        status: "ok".into(),
        ingest_date: String::new(),
        file: Default::default(),
    };
    write_raw(&lake, "2026-11-06", "late.parquet", &[late]);
    let (code, days, _, _) = backfill(dir.path(), "2026-11-01", "2026-11-03", &[]);
    assert_eq!(code, 0);
    assert_eq!(
        outcomes(&days),
        pairs(&[
            ("2026-11-01", "built"),
            ("2026-11-02", "built"),
            ("2026-11-03", "built")
        ])
    );
    let (code, days, _, _) = backfill(dir.path(), "2026-11-01", "2026-11-03", &[]);
    assert_eq!(code, 0);
    assert!(days.iter().all(|d| d["outcome"] == "skipped"), "{days:?}");
    let raw = read_raw(&lake);
    assert_eq!(
        ledger_rows(dir.path(), "2026-11-03"),
        expected_ledger(&raw, "2026-11-03", 3)
    );
    assert!(ledger_rows(dir.path(), "2026-11-03").contains_key("late-resend-1"));

    // The run log has one row per day run, with outcomes.
    let log = csv_rows(&tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT outcome, count(*) FROM runs GROUP BY outcome ORDER BY outcome",
            "--format",
            "csv",
        ],
    ));
    assert_eq!(
        log,
        vec![
            vec!["ok".to_string(), "6".into()],
            vec!["skipped".into(), "6".into()]
        ]
    );
}

#[test]
fn a_failed_day_is_named_the_others_build_and_a_rerun_resumes() {
    let dir = tempdir();
    generate(dir.path(), 3, 3_000, 32);
    let lake = dir.path().join("lake");
    // A corrupt file arriving on 11-08 is in the read window of 11-03 only (of 11-01..11-03:
    // 11-02 reads up to 11-07, the last arrival day of 11-04's copies).
    let bad_dir = lake.join("raw/payments/ingest_date=2026-11-08");
    std::fs::create_dir_all(&bad_dir).unwrap();
    std::fs::write(bad_dir.join("broken.parquet"), b"PAR1 not parquet").unwrap();
    let (code, days, summary, err) = backfill(dir.path(), "2026-11-01", "2026-11-03", &[]);
    assert_eq!(code, 1);
    assert_eq!(
        outcomes(&days),
        pairs(&[
            ("2026-11-01", "built"),
            ("2026-11-02", "built"),
            ("2026-11-03", "failed")
        ])
    );
    assert!(
        err.contains("2026-11-03") && err.contains("broken.parquet"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(summary["failed"][0]["day"], "2026-11-03");
    assert!(
        ledger_rows(dir.path(), "2026-11-03").is_empty(),
        "the failed day wrote nothing"
    );

    std::fs::remove_file(bad_dir.join("broken.parquet")).unwrap();
    let (code, days, _, err) = backfill(dir.path(), "2026-11-01", "2026-11-03", &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        outcomes(&days),
        pairs(&[
            ("2026-11-01", "skipped"),
            ("2026-11-02", "skipped"),
            ("2026-11-03", "built")
        ])
    );
    let raw = read_raw(&lake);
    assert_eq!(
        ledger_rows(dir.path(), "2026-11-03"),
        expected_ledger(&raw, "2026-11-03", 3)
    );
}

#[test]
fn a_killed_backfill_resumes_where_it_stopped() {
    let dir = tempdir();
    generate(dir.path(), 4, 20_000, 33);
    let mut child = tally_cmd(dir.path())
        .args([
            "backfill",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-04",
            "--progress",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill -9 right after the first day is reported.
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["outcome"], "built");

    let (code, days, _, err) = backfill(dir.path(), "2026-11-01", "2026-11-04", &[]);
    assert_eq!(code, 0, "{err}");
    let done = first["day"].as_str().unwrap();
    for d in &days {
        let want = if d["day"] == done { "skipped" } else { "built" };
        assert!(
            d["outcome"] == want || (d["outcome"] == "skipped" && d["day"] != done),
            "{d}"
        );
    }
    assert!(days
        .iter()
        .any(|d| d["day"] == done && d["outcome"] == "skipped"));
    let raw = read_raw(&dir.path().join("lake"));
    for day in ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"] {
        assert_eq!(
            ledger_rows(dir.path(), day),
            expected_ledger(&raw, day, 3),
            "{day}"
        );
    }
}

#[test]
fn two_backfills_never_build_the_same_day_at_once() {
    let dir = tempdir();
    generate(dir.path(), 3, 20_000, 34);
    let spawn = || {
        tally_cmd(dir.path())
            .args([
                "backfill",
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-03",
                "--progress",
                "json",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for c in [a, b] {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Each day was built once; the other backfill waited for the lease, then skipped it.
    let rows = csv_rows(&tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT CAST(day AS VARCHAR), outcome, CAST(started_at AS BIGINT), CAST(finished_at AS BIGINT) FROM runs ORDER BY 1, 3",
            "--format",
            "csv",
        ],
    ));
    for day in ["2026-11-01", "2026-11-02", "2026-11-03"] {
        let runs: Vec<&Vec<String>> = rows.iter().filter(|r| r[0] == day).collect();
        assert_eq!(runs.len(), 2, "{rows:?}");
        let built: Vec<_> = runs.iter().filter(|r| r[1] == "ok").collect();
        assert_eq!(built.len(), 1, "{day}: {rows:?}");
        assert!(runs.iter().any(|r| r[1] == "skipped"), "{day}: {rows:?}");
    }
    let raw = read_raw(&dir.path().join("lake"));
    assert_eq!(
        ledger_rows(dir.path(), "2026-11-02"),
        expected_ledger(&raw, "2026-11-02", 3)
    );
}
