//! The same commands against a lake in a bucket on a real S3-compatible server (moto) on loopback.

use crate::harness::*;
use std::time::{Duration, Instant};

#[test]
fn generate_and_query_a_lake_in_a_bucket() {
    let s3 = s3();
    let bucket = s3.bucket("gen-query");
    let dir = tempdir();
    let lake = format!("s3://{bucket}/lakes/one");
    run_ok(s3.cmd(dir.path()).args([
        "--lake",
        &lake,
        "generate",
        "--days",
        "2",
        "--events-per-day",
        "3000",
        "--seed",
        "5",
    ]));

    // The same seed written locally gives the expected values, computed independently.
    let local = tempdir();
    generate(local.path(), 2, 3_000, 5);
    let rows = read_raw(&local.path().join("lake"));
    let total: i128 = rows.iter().map(|r| r.amount).sum();

    let out = run_ok(s3.cmd(dir.path()).args([
        "sql",
        "SELECT count(*) AS n, sum(amount) AS total FROM raw_payments",
        "--format",
        "csv",
        "--lake",
        &lake,
    ]));
    let row = &csv_rows(&out)[0];
    assert_eq!(row[0].parse::<usize>().unwrap(), rows.len());
    assert_eq!(row[1], cents(total));

    let tables = run_ok(s3.cmd(dir.path()).args(["tables", "--lake", &lake]));
    assert!(
        tables.contains("raw_payments") && tables.contains("s3://"),
        "{tables}"
    );
}

#[test]
fn unreachable_endpoint_fails_fast_with_one_line() {
    let dir = tempdir();
    let started = Instant::now();
    let out = tally_cmd(dir.path())
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "very-secret-value")
        .env("AWS_ALLOW_HTTP", "true")
        .args(["sql", "SELECT 1", "--lake", "s3://nowhere/lake", "-vv"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let last = err.trim().lines().last().unwrap();
    assert!(last.starts_with("error: lake s3://nowhere/lake/"), "{err}");
    assert!(!err.contains("very-secret-value"), "secret leaked: {err}");
}

#[test]
fn missing_bucket_is_a_clear_error() {
    let s3 = s3();
    let dir = tempdir();
    let out = s3
        .cmd(dir.path())
        .args(["sql", "SELECT 1", "--lake", "s3://no-such-bucket/lake"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no-such-bucket"), "{err}");
}

#[test]
fn ledger_on_s3_is_exact_and_concurrent_commits_lose_nothing() {
    let s3 = s3();
    let bucket = s3.bucket("ledger-concurrent");
    let dir = tempdir();
    let lake = format!("s3://{bucket}/lake");
    run_ok(s3.cmd(dir.path()).args([
        "--lake",
        &lake,
        "generate",
        "--days",
        "4",
        "--events-per-day",
        "3000",
        "--seed",
        "9",
    ]));
    let local = tempdir();
    generate(local.path(), 4, 3_000, 9);
    let raw = read_raw(&local.path().join("lake"));

    // No ledger yet: four processes create the tables and commit four days at the same
    // moment, as a scheduler running days in parallel does; every one commits.
    let days = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"];
    let kids: Vec<_> = days
        .iter()
        .map(|d| {
            s3.cmd(dir.path())
                .args(["ledger", "--date", d, "--lake", &lake])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (d, k) in days.iter().zip(kids) {
        let out = k.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ledger {d} failed on S3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for d in days {
        let got = crate::ledger::ledger_rows_with(s3.cmd(dir.path()).args(["--lake", &lake]), d);
        assert_eq!(got, crate::ledger::expected_ledger(&raw, d, 3), "{d} on S3");
    }
    // A rerun of one day beside the others still replaces only its own day.
    run_ok(
        s3.cmd(dir.path())
            .args(["ledger", "--date", "2026-11-02", "--lake", &lake]),
    );
    for d in days {
        let got = crate::ledger::ledger_rows_with(s3.cmd(dir.path()).args(["--lake", &lake]), d);
        assert_eq!(got, crate::ledger::expected_ledger(&raw, d, 3), "{d} on S3");
    }
}

#[test]
fn live_backfill_and_reconcile_on_s3_match_the_same_lake_on_disk() {
    let s3 = s3();
    let bucket = s3.bucket("live-loop");
    let dir = tempdir();
    let lake = format!("s3://{bucket}/lake");
    let on_s3 = |args: &[&str]| {
        let mut all = vec!["--lake", lake.as_str()];
        all.extend_from_slice(args);
        run_ok(s3.cmd(dir.path()).args(all))
    };
    on_s3(&[
        "generate",
        "--days",
        "3",
        "--events-per-day",
        "3000",
        "--seed",
        "8",
    ]);
    let live_args = [
        "live",
        "--once",
        "--start-lookback-days",
        "10",
        "--max-files-per-batch",
        "2",
        "--retention",
        "1000h",
    ];
    on_s3(&live_args);
    let backfill = [
        "backfill",
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-02",
        "--progress",
        "json",
    ];
    on_s3(&[&backfill[..], &["--jobs", "2"]].concat());
    let again = on_s3(&backfill);
    assert_eq!(again.matches("\"skipped\"").count(), 2 + 1, "{again}");
    let s3_out = on_s3(&["reconcile", "--date", "2026-11-02", "--format", "json"]);

    // The same seed on local disk, through the same commands.
    let local = tempdir();
    generate(local.path(), 3, 3_000, 8);
    tally_ok(local.path(), &live_args);
    tally_ok(local.path(), &backfill);
    let local_out = tally_ok(
        local.path(),
        &["reconcile", "--date", "2026-11-02", "--format", "json"],
    );
    let figures = |out: &str| {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v["partners"].clone()
    };
    assert_eq!(figures(&s3_out), figures(&local_out));
    let q = "SELECT sum(events), sum(amount) FROM live_view";
    assert_eq!(
        on_s3(&["sql", q, "--format", "csv"]),
        tally_ok(local.path(), &["sql", q, "--format", "csv"])
    );
}
