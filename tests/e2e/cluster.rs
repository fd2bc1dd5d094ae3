//! Scale-out: `tally worker` processes and `--workers` callers on one lake (local disk).
//!
//! Each answer on the workers is compared with the same query run here, and with the raw
//! files; the workers' own metrics prove they ran the stages (a run that silently stayed
//! local fails).

use crate::harness::*;
use std::path::Path;
use std::process::Command;

const DAY: &str = "2026-11-02";

/// Splits every scan into many tasks, so even a small lake's plan spreads over both workers.
const SPREAD: (&str, &str) = ("DISTRIBUTED_FILE_SCAN_CONFIG_BYTES_PER_PARTITION", "1");

/// A 3-day lake with day 2's ledger built.
fn lake_with_ledger() -> tempfile::TempDir {
    let d = tempdir();
    generate(d.path(), 3, 20_000, 7);
    tally_ok(d.path(), &["ledger", "--date", DAY]);
    d
}

fn worker(dir: &Path, token: Option<&str>) -> Proc {
    let mut cmd = tally_cmd(dir);
    cmd.args([
        "worker",
        "--bind",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    match token {
        Some(t) => cmd.env("TALLY_TOKEN", t),
        None => cmd.env_remove("TALLY_TOKEN"),
    };
    Proc::spawn(&mut cmd, &["worker", "metrics"])
}

/// `tally_worker_tasks_total` of a worker.
fn tasks(w: &Proc) -> f64 {
    let out = Command::new("curl")
        .args(["-s", &w.url("metrics", "/metrics")])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("tally_worker_tasks_total "))
        .unwrap_or_else(|| panic!("no tally_worker_tasks_total in {text}"))
        .trim()
        .parse()
        .unwrap()
}

fn sql_on(
    dir: &Path,
    workers: Option<&str>,
    token: Option<&str>,
    query: &str,
) -> std::process::Output {
    let mut cmd = tally_cmd(dir);
    cmd.args(["sql", "--format", "csv", query])
        .env(SPREAD.0, SPREAD.1);
    match workers {
        Some(w) => cmd.args(["--workers", w]),
        None => cmd.env_remove("TALLY_WORKERS"),
    };
    match token {
        Some(t) => cmd.env("TALLY_TOKEN", t),
        None => cmd.env_remove("TALLY_TOKEN"),
    };
    cmd.output().unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn sql_on_two_workers_answers_as_the_local_run_and_both_workers_run_stages() {
    let d = lake_with_ledger();
    let dir = d.path();
    let (w1, w2) = (worker(dir, None), worker(dir, None));
    let workers = format!("{},{}", w1.addrs["worker"], w2.addrs["worker"]);

    // Raw Parquet: a shuffle on partner_id, checked against the files themselves.
    let per_partner = "SELECT partner_id, count(*) AS n, sum(amount) AS total \
                       FROM raw_payments GROUP BY partner_id ORDER BY partner_id";
    let here = ok(sql_on(dir, None, None, per_partner));
    let there = ok(sql_on(dir, Some(&workers), None, per_partner));
    assert_eq!(there, here);
    let want = count_and_sum_by(&read_raw(&dir.join("lake")), |r| r.partner_id.clone());
    assert_eq!(csv_count_and_sum(&there), want);

    // The Delta ledger (read as its snapshot's Parquet files) and a tally UDF on the workers.
    let ledger = "SELECT count(*) AS n, sum(amount) AS total, \
                  count(DISTINCT txn_bucket(txn_id, 16)) AS buckets FROM ledger";
    let here = ok(sql_on(dir, None, None, ledger));
    let there = ok(sql_on(dir, Some(&workers), None, ledger));
    assert_eq!(there, here);
    assert!(
        here.lines().nth(1).is_some_and(|l| l.ends_with(",16")),
        "{here}"
    );

    // EXPLAIN shows the stages; the plans were cut into them, and both workers ran some.
    let explain = ok(sql_on(
        dir,
        Some(&workers),
        None,
        &format!("EXPLAIN {per_partner}"),
    ));
    assert!(
        explain.contains("distributed_plan") && explain.contains("Stage"),
        "{explain}"
    );
    assert!(
        tasks(&w1) > 0.0 && tasks(&w2) > 0.0,
        "{} / {}",
        tasks(&w1),
        tasks(&w2)
    );
}

#[test]
fn workers_refuse_a_caller_without_their_token() {
    let d = lake_with_ledger();
    let dir = d.path();
    // Two workers: on one, datafusion-distributed keeps every stage in the caller.
    let (w1, w2) = (
        worker(dir, Some("s3cret-token")),
        worker(dir, Some("s3cret-token")),
    );
    let addr = format!("{},{}", w1.addrs["worker"], w2.addrs["worker"]);
    let query = "SELECT partner_id, count(*) FROM raw_payments GROUP BY partner_id";

    let refused = sql_on(dir, Some(&addr), None, query);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("token"), "{err}");
    assert!(!err.contains("s3cret-token"));
    let wrong = sql_on(dir, Some(&addr), Some("not-it"), query);
    assert_eq!(wrong.status.code(), Some(1));

    let here = ok(sql_on(dir, None, None, &format!("{query} ORDER BY 1")));
    let there = ok(sql_on(
        dir,
        Some(&addr),
        Some("s3cret-token"),
        &format!("{query} ORDER BY 1"),
    ));
    assert_eq!(there, here);
}

#[test]
fn unreachable_workers_are_left_out_and_none_reachable_is_an_error_naming_them() {
    let d = lake_with_ledger();
    let dir = d.path();
    // A port nothing listens on: bound, then released.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free.local_addr().unwrap().to_string();
    drop(free);

    let out = sql_on(dir, Some(&dead), None, "SELECT count(*) FROM raw_payments");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no worker reachable") && err.contains(&dead),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let (w1, w2) = (worker(dir, None), worker(dir, None));
    let some = format!("{dead},{},{}", w1.addrs["worker"], w2.addrs["worker"]);
    let query = "SELECT partner_id, count(*) FROM raw_payments GROUP BY 1 ORDER BY 1";
    let here = ok(sql_on(dir, None, None, query));
    let there = sql_on(dir, Some(&some), None, query);
    assert!(String::from_utf8_lossy(&there.stderr).contains("worker unreachable"));
    assert_eq!(ok(there), here);
    assert!(tasks(&w1) > 0.0 && tasks(&w2) > 0.0);

    let bad = sql_on(dir, Some("not a host"), None, "SELECT 1");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--workers"));
}

#[test]
fn workers_read_a_lake_in_a_bucket_through_their_own_s3_settings() {
    let s3 = s3();
    let bucket = s3.bucket("cluster-lake");
    let dir = tempdir();
    let lake = format!("s3://{bucket}/lake");
    let on_s3 = |args: &[&str]| {
        let mut c = s3.cmd(dir.path());
        c.args(["--lake", &lake]).args(args);
        c
    };
    run_ok(&mut on_s3(&[
        "generate",
        "--days",
        "2",
        "--events-per-day",
        "5000",
        "--seed",
        "3",
    ]));
    run_ok(&mut on_s3(&["ledger", "--date", "2026-11-01"]));
    let spawn = || {
        Proc::spawn(
            &mut on_s3(&[
                "worker",
                "--bind",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
            ]),
            &["worker", "metrics"],
        )
    };
    let (w1, w2) = (spawn(), spawn());
    let workers = format!("{},{}", w1.addrs["worker"], w2.addrs["worker"]);
    for query in [
        "SELECT partner_id, count(*) AS n, sum(amount) AS total FROM raw_payments GROUP BY 1 ORDER BY 1",
        "SELECT currency, count(*) AS n, sum(amount) AS total FROM ledger GROUP BY 1 ORDER BY 1",
    ] {
        let here = run_ok(on_s3(&["sql", "--format", "csv", query]).env_remove("TALLY_WORKERS"));
        let there = run_ok(
            on_s3(&["sql", "--format", "csv", "--workers", &workers, query]).env(SPREAD.0, SPREAD.1),
        );
        assert_eq!(there, here, "{query}");
    }
    assert!(tasks(&w1) > 0.0 && tasks(&w2) > 0.0);
}

#[test]
fn a_worker_lost_mid_run_is_dropped_and_the_query_runs_again_on_the_others() {
    let d = lake_with_ledger();
    let dir = d.path();
    let (w1, w2) = (worker(dir, None), worker(dir, None));
    // Stops dead (abort, as kill -9) when it is sent its first task.
    let mut doomed = tally_cmd(dir);
    doomed
        .args(["worker", "--bind", "127.0.0.1:0"])
        .env("TALLY_FAILPOINT", "worker_task");
    let w3 = Proc::spawn(&mut doomed, &["worker"]);
    let lost = w3.addrs["worker"].clone();
    let all = format!("{},{},{lost}", w1.addrs["worker"], w2.addrs["worker"]);
    let query = "SELECT partner_id, count(*) AS n, sum(amount) AS total FROM raw_payments \
                 GROUP BY 1 ORDER BY 1";
    let here = ok(sql_on(dir, None, None, query));
    let out = sql_on(dir, Some(&all), None, query);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("worker lost") && err.contains(&lost), "{err}");
    assert_eq!(ok(out), here, "printed once, and as the local run");
    assert!(tasks(&w1) > 0.0 && tasks(&w2) > 0.0);
}
