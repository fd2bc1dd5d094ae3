//! `tally live`: exact totals, dedup within the TTL, late rows, crash recovery, retention,
//! quarantine and clean shutdown — through the real binary on real Delta tables.

use crate::harness::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub(crate) const MINUTE: i64 = 60_000_000;

/// (window_start µs, partner, currency) → (events, errors, amount in cents).
pub(crate) type Totals = BTreeMap<(i64, String, String), (u64, u64, i128)>;

pub(crate) fn expected(rows: &[RawRow]) -> Totals {
    let mut t = Totals::new();
    for r in rows {
        let e = t
            .entry((
                r.event_time.div_euclid(MINUTE) * MINUTE,
                r.partner_id.clone(),
                r.currency.clone(),
            ))
            .or_default();
        e.0 += 1;
        e.1 += u64::from(r.status != "ok");
        e.2 += r.amount;
    }
    t
}

/// A live table read back through `tally sql` (the per-key view).
pub(crate) fn read_totals(dir: &Path, table: &str) -> Totals {
    let lake = dir.join("lake");
    if !lake.join(table).join("_delta_log").is_dir() {
        return Totals::new();
    }
    totals_through(|args| tally_ok(dir, args), table)
}

/// A live table read back through `tally sql` run by `sql` (any lake, e.g. on S3).
pub(crate) fn totals_through(sql: impl Fn(&[&str]) -> String, table: &str) -> Totals {
    let query = format!(
        "SELECT CAST(window_start AS BIGINT), partner_id, currency, events, errors, CAST(amount * 100 AS DECIMAL(38,0)) FROM {table} ORDER BY 1, 2, 3"
    );
    csv_rows(&sql(&["sql", &query, "--format", "csv"]))
        .into_iter()
        .map(|r| {
            (
                (r[0].parse().unwrap(), r[1].clone(), r[2].clone()),
                (
                    r[3].parse().unwrap(),
                    r[4].parse().unwrap(),
                    r[5].parse().unwrap(),
                ),
            )
        })
        .collect()
}

pub(crate) fn row(
    txn: &str,
    partner: &str,
    event: i64,
    ingest: i64,
    cents: i128,
    status: &str,
) -> RawRow {
    RawRow {
        status: status.into(),
        ..ok_row(txn, partner, event, ingest, cents)
    }
}

/// `n` distinct transactions from `start`, one every `step` µs, over 5 partners, ~7% errors.
pub(crate) fn traffic(prefix: &str, start: i64, step: i64, n: usize) -> Vec<RawRow> {
    (0..n)
        .map(|i| {
            let t = start + i as i64 * step;
            let mut r = row(
                &format!("{prefix}-{i}"),
                &format!("p{}", i % 5),
                t,
                t + 1_500_000,
                100 + (i as i128 * 37) % 10_000,
                if i % 14 == 3 { "declined" } else { "ok" },
            );
            // Two currencies per partner: the view must keep their amounts apart.
            if i % 3 == 0 {
                r.currency = "JPY".into();
            }
            r
        })
        .collect()
}

fn live_once(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["live", "--once", "--format", "json"];
    args.extend_from_slice(extra);
    let out = tally_ok(dir, &args);
    let last = out.lines().last().unwrap();
    serde_json::from_str::<serde_json::Value>(last).unwrap()["summary"].clone()
}

#[test]
fn totals_match_an_independent_count_on_duplicate_free_input() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let start = micros("2026-11-20T10:00:00Z");
    let rows = traffic("a", start, 700_000, 3_000); // 35 minutes
    for (i, chunk) in rows.chunks(1_000).enumerate() {
        write_raw(&lake, "2026-11-20", &format!("f{i}.parquet"), chunk);
    }
    let s = live_once(dir.path(), &[]);
    assert_eq!(s["rows"], 3_000);
    assert_eq!(s["applied"], 3_000);
    assert_eq!(s["deduped"], 0);
    assert_eq!(read_totals(dir.path(), "live_view"), expected(&rows));
    assert!(read_totals(dir.path(), "live_late").is_empty());

    // Nothing new: a second run does nothing and changes nothing.
    let again = live_once(dir.path(), &[]);
    assert_eq!(again["batches"], 0);
    assert_eq!(read_totals(dir.path(), "live_view"), expected(&rows));
}

/// A backlog larger than one batch whose files landed in the reverse of their name order,
/// over more than the 15-minute file window: the files taken first (by name) are the newest,
/// and the ones left for later batches must not be mistaken for long-forgotten ones.
#[test]
fn a_backlog_taken_in_name_order_leaves_no_older_file_behind() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let start = micros("2026-11-20T10:00:00Z");
    let rows = traffic("b", start, 1_000_000, 600);
    let landed = std::time::SystemTime::now() - Duration::from_secs(3600);
    for (i, chunk) in rows.chunks(100).enumerate() {
        // f0 landed last, f5 first, 10 minutes apart: 50 minutes in all.
        let name = format!("f{i}.parquet");
        write_raw(&lake, "2026-11-20", &name, chunk);
        let path = lake.join("raw/payments/ingest_date=2026-11-20").join(&name);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(landed + Duration::from_secs(600 * (5 - i) as u64))
            .unwrap();
    }
    let s = live_once(dir.path(), &["--max-files-per-batch", "2"]);
    assert_eq!(s["rows"], 600, "{s}");
    assert_eq!(s["batches"], 3, "{s}");
    assert_eq!(read_totals(dir.path(), "live_view"), expected(&rows));
    // And a later run finds nothing left.
    assert_eq!(live_once(dir.path(), &[])["batches"], 0);
}

/// One event stamped far in the future (a partner clock gone wrong) is a bad row: counted, not
/// applied, and it does not move the watermark — later rows still land in `live_view`.
#[test]
fn an_event_far_ahead_of_its_arrival_does_not_stall_the_view() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let start = micros("2026-11-20T10:00:00Z");
    let first = traffic("c", start, 1_000_000, 100);
    let mut with_bad = first.clone();
    let mut bad = row(
        "c-bad",
        "p1",
        micros("2099-01-01T00:00:00Z"),
        start,
        500,
        "ok",
    );
    bad.ingest_time = start + 2_000_000;
    with_bad.push(bad);
    write_raw(&lake, "2026-11-20", "f0.parquet", &with_bad);
    let later = traffic("d", start + 100_000_000, 1_000_000, 100);
    write_raw(&lake, "2026-11-20", "f1.parquet", &later);
    let s = live_once(dir.path(), &["--max-files-per-batch", "1"]);
    assert_eq!(s["bad_rows"], 1, "{s}");
    assert_eq!(s["applied"], 200, "{s}");
    assert_eq!(s["late"], 0, "{s}");
    let all: Vec<RawRow> = first.into_iter().chain(later).collect();
    assert_eq!(read_totals(dir.path(), "live_view"), expected(&all));

    // A restart rebuilds the same state: nothing is counted again.
    assert_eq!(live_once(dir.path(), &[])["batches"], 0);
    assert_eq!(read_totals(dir.path(), "live_view"), expected(&all));
}

/// One partner whose clock runs 50 minutes ahead (within the hour a row may be ahead of its
/// landing) has its rows applied, but does not move the watermark past the landing time: the
/// other partners' next, on-time rows are applied, not sent to `live_late`.
#[test]
fn a_partner_ahead_of_the_clock_does_not_send_the_others_late() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let start = micros("2026-11-20T10:00:00Z");
    let mut first = traffic("a", start, 1_000_000, 300); // 10:00 .. 10:05
    first.extend((0..50).map(|i| {
        let landed = start + 5 * MINUTE;
        row(
            &format!("ahead-{i}"),
            "fast",
            landed + 50 * MINUTE + i,
            landed,
            250,
            "ok",
        )
    }));
    write_raw(&lake, "2026-11-20", "a.parquet", &first);
    live_once(dir.path(), &[]);
    let second = traffic("b", start + 5 * MINUTE, 1_000_000, 300); // 10:05 .. 10:10
    write_raw(&lake, "2026-11-20", "b.parquet", &second);
    let s = live_once(dir.path(), &[]);
    assert_eq!(s["late"], 0, "{s}");
    let mut all = first.clone();
    all.extend(second);
    assert_eq!(read_totals(dir.path(), "live_view"), expected(&all));
    assert!(read_totals(dir.path(), "live_late").is_empty());
}

#[test]
fn retries_within_the_ttl_collapse_and_late_rows_land_in_live_late() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let start = micros("2026-11-20T10:00:00Z");
    let first = traffic("a", start, 600_000, 3_000); // 10:00 .. 10:30
    write_raw(&lake, "2026-11-20", "a.parquet", &first);
    live_once(dir.path(), &[]);

    // Next file: webhook retries of the last 5 minutes (same event_time, landing later), new
    // on-time events, and events from 09:00 that arrive behind the watermark (10:28).
    let mut retries: Vec<RawRow> = first
        .iter()
        .filter(|r| r.event_time >= start + 25 * MINUTE)
        .cloned()
        .collect();
    for r in &mut retries {
        r.ingest_time += 3 * MINUTE;
    }
    let on_time = traffic("b", start + 30 * MINUTE, 1_000_000, 200);
    let late = traffic("c", start - 60 * MINUTE, 1_000_000, 300);
    let mut second = retries.clone();
    second.extend(on_time.iter().cloned());
    second.extend(late.iter().cloned());
    write_raw(&lake, "2026-11-20", "b.parquet", &second);
    let s = live_once(dir.path(), &[]);
    assert_eq!(s["deduped"], retries.len() as u64);
    assert_eq!(s["late"], 300);

    let mut applied = first.clone();
    applied.extend(on_time);
    assert_eq!(read_totals(dir.path(), "live_view"), expected(&applied));
    assert_eq!(read_totals(dir.path(), "live_late"), expected(&late));
}

/// A tiny xorshift so the kill moments vary run to run but are printed for reproduction.
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn kill_9_at_random_moments_then_restart_counts_everything_once() {
    // A generated lake (retries, a late replay) processed in many small batches.
    let reference = tempdir();
    generate(reference.path(), 4, 40_000, 11);
    let crashed = tempdir();
    copy_dir(&reference.path().join("lake"), &crashed.path().join("lake"));
    let args = [
        "live",
        "--once",
        "--max-files-per-batch",
        "1",
        "--compact-every",
        "4",
        "--start-lookback-days",
        "10",
        "--retention",
        "1000h",
    ];
    let t0 = Instant::now();
    tally_ok(reference.path(), &args);
    let full_run_ms = t0.elapsed().as_millis() as u64;
    let want_view = read_totals(reference.path(), "live_view");
    let want_late = read_totals(reference.path(), "live_late");
    let raw = read_raw(&reference.path().join("lake"));
    let distinct: std::collections::HashSet<&str> = raw.iter().map(|r| r.txn_id.as_str()).collect();
    let counted: u64 = want_view
        .values()
        .chain(want_late.values())
        .map(|v| v.0)
        .sum();
    assert!(counted >= distinct.len() as u64 && counted <= raw.len() as u64);

    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill seed {seed}");
    let mut killed_mid_run = 0;
    for _ in 0..30 {
        if killed_mid_run >= 6 {
            break;
        }
        let mut child = tally_cmd(crashed.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Kill within the first sixth of a full run, so several kills land before it finishes.
        let wait = Duration::from_millis(10 + next_rand(&mut seed) % (full_run_ms / 6).max(20));
        std::thread::sleep(wait);
        match child.try_wait().unwrap() {
            None => killed_mid_run += 1,
            Some(status) => {
                let out = child.wait_with_output().unwrap();
                assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                continue;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // The table stays readable between crashes.
        if crashed.path().join("lake/live_view/_delta_log").is_dir() {
            tally_ok(crashed.path(), &["sql", "SELECT count(*) FROM live_view"]);
        }
    }
    assert!(
        killed_mid_run >= 6,
        "only {killed_mid_run} kills landed mid-run"
    );
    tally_ok(crashed.path(), &args);
    assert_eq!(read_totals(crashed.path(), "live_view"), want_view);
    assert_eq!(read_totals(crashed.path(), "live_late"), want_late);
}

/// A crash (abort) at each step between a batch's first write and its last commit, and in
/// the roll-up between the two tables, then a restart: the same totals as a run that never
/// crashed.
#[test]
fn a_crash_at_every_live_failpoint_then_restart_counts_everything_once() {
    let reference = tempdir();
    generate(reference.path(), 2, 4_000, 12);
    let args = [
        "live",
        "--once",
        "--max-files-per-batch",
        "2",
        "--compact-every",
        "2",
        "--start-lookback-days",
        "10",
        "--retention",
        "1000h",
    ];
    let base = tempdir();
    copy_dir(&reference.path().join("lake"), &base.path().join("lake"));
    tally_ok(reference.path(), &args);
    let want_view = read_totals(reference.path(), "live_view");
    let want_late = read_totals(reference.path(), "live_late");
    assert!(
        !want_late.is_empty(),
        "the lake must exercise live_late too"
    );
    for &point in tally_engine::failpoint::LIVE_POINTS {
        let dir = tempdir();
        copy_dir(&base.path().join("lake"), &dir.path().join("lake"));
        let out = tally_cmd(dir.path())
            .args(args)
            .env("TALLY_FAILPOINT", point)
            .env("TALLY_LEASE_SECS", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&format!("failpoint {point}")),
            "{point}: {err}"
        );
        std::thread::sleep(Duration::from_millis(1_100));
        tally_ok(dir.path(), &args);
        assert_eq!(read_totals(dir.path(), "live_view"), want_view, "{point}");
        assert_eq!(read_totals(dir.path(), "live_late"), want_late, "{point}");
    }
}

#[test]
fn retention_keeps_only_recent_windows_and_rollup_keeps_totals() {
    let dir = tempdir();
    generate(dir.path(), 2, 5_000, 3);
    live_once(
        dir.path(),
        &[
            "--retention",
            "2h",
            "--compact-every",
            "1",
            "--start-lookback-days",
            "10",
        ],
    );
    let view = read_totals(dir.path(), "live_view");
    let newest = view.keys().map(|k| k.0).max().unwrap();
    let oldest = view.keys().map(|k| k.0).min().unwrap();
    assert!(
        newest - oldest <= 2 * 60 * MINUTE,
        "oldest window {oldest}, newest {newest}"
    );

    // Without retention the same recent windows hold the same totals.
    let full = tempdir();
    generate(full.path(), 2, 5_000, 3);
    live_once(full.path(), &["--start-lookback-days", "10"]);
    let all = read_totals(full.path(), "live_view");
    let recent: Totals = all.into_iter().filter(|(k, _)| k.0 >= oldest).collect();
    assert_eq!(view, recent);
}

#[test]
fn a_bad_file_is_quarantined_named_and_skipped() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let rows = traffic("a", micros("2026-11-20T10:00:00Z"), 1_000_000, 500);
    write_raw(&lake, "2026-11-20", "good.parquet", &rows);
    std::fs::write(
        lake.join("raw/payments/ingest_date=2026-11-20/broken.parquet"),
        b"PAR1 not really",
    )
    .unwrap();
    let err = tally_fails(dir.path(), &["live", "--once"], 1);
    assert!(err.contains("broken.parquet"), "{err}");
    assert_eq!(read_totals(dir.path(), "live_view"), expected(&rows));
    // Recorded as processed: the next run does not stall on it.
    let s = live_once(dir.path(), &[]);
    assert_eq!(s["batches"], 0);
    // And for good, in live_quarantine (path, reason, no row count: no readable footer).
    assert_eq!(
        quarantine_rows(dir.path()),
        [(
            "raw/payments/ingest_date=2026-11-20/broken.parquet".to_string(),
            true,
            String::new()
        )]
    );
}

/// `live_quarantine` as (path, has a reason, rows or "").
fn quarantine_rows(dir: &Path) -> Vec<(String, bool, String)> {
    let sql = "SELECT path, length(reason) > 10, rows FROM live_quarantine ORDER BY path";
    csv_rows(&tally_ok(dir, &["sql", sql, "--format", "csv"]))
        .into_iter()
        .map(|r| (r[0].clone(), r[1] == "true", r[2].clone()))
        .collect()
}

/// Waits (at most 30 s) until a running `tally live` has committed its first batch.
fn wait_for_first_batch(lake: &Path) {
    let t = Instant::now();
    while !lake
        .join("live_view/_delta_log/00000000000000000001.json")
        .exists()
    {
        assert!(t.elapsed() < Duration::from_secs(30), "no batch committed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_second_live_is_refused_and_sigterm_exits_cleanly() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    write_raw(
        &lake,
        "2026-11-20",
        "a.parquet",
        &traffic("a", micros("2026-11-20T10:00:00Z"), 1_000_000, 100),
    );
    let mut child = tally_cmd(dir.path())
        .args(["live", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_first_batch(&lake);
    // One live mode per lake: a second one is refused while the first runs.
    let err = tally_fails(dir.path(), &["live", "--once"], 1);
    assert!(
        err.contains("another run") && err.contains(&child.id().to_string()),
        "{err}"
    );
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

/// Writes `rows` as one commit to a Delta raw table at `lake/raw/payments` (partitioned by
/// `ingest_date`), through the engine's Delta helpers, as another writer would.
fn append_delta_raw(lake: &Path, day: &str, rows: &[RawRow]) {
    use arrow::array::{ArrayRef, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let tmp = tempdir();
    write_raw(tmp.path(), day, "x.parquet", rows);
    let file = tmp
        .path()
        .join(format!("raw/payments/ingest_date={day}/x.parquet"));
    let batch = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(file).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap()
    .next()
    .unwrap()
    .unwrap();
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("ingest_date", DataType::Utf8, true));
    let schema = Arc::new(Schema::new(fields));
    let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
    cols.push(Arc::new(StringArray::from(vec![day; batch.num_rows()])));
    let with_day = arrow::array::RecordBatch::try_new(Arc::clone(&schema), cols).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lake =
            tally_engine::lake::Lake::open(lake.to_str().unwrap(), &Default::default()).unwrap();
        let url = lake.url_of("raw/payments").unwrap();
        let table = tally_engine::delta::open_or_create(
            &lake,
            &url,
            "raw_payments",
            &schema,
            &["ingest_date"],
            &[],
        )
        .await
        .unwrap();
        tally_engine::delta::append(&table, vec![with_day], Default::default())
            .await
            .unwrap();
    });
}

#[test]
fn a_delta_raw_table_is_followed_by_its_versions() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let start = micros("2026-11-20T10:00:00Z");
    let first = traffic("a", start, 1_000_000, 400);
    append_delta_raw(&lake, "2026-11-20", &first);
    let s = live_once(dir.path(), &[]);
    assert_eq!(s["applied"], 400);
    assert_eq!(read_totals(dir.path(), "live_view"), expected(&first));

    let second = traffic("b", start + 400_000_000, 1_000_000, 300);
    append_delta_raw(&lake, "2026-11-20", &second);
    let s = live_once(dir.path(), &[]);
    assert_eq!(s["applied"], 300, "only the new version's files: {s}");
    let mut all = first;
    all.extend(second);
    assert_eq!(read_totals(dir.path(), "live_view"), expected(&all));
    assert_eq!(live_once(dir.path(), &[])["batches"], 0);

    // A compaction (OPTIMIZE) rewrites rows already read: its files carry dataChange=false
    // and are not read again, as Spark's Delta source skips them.
    compact_delta_raw(&lake.join("raw/payments"));
    let s = live_once(dir.path(), &[]);
    assert_eq!(s["rows"], 0, "a rewrite is not new data: {s}");
    assert_eq!(read_totals(dir.path(), "live_view"), expected(&all));
    assert!(read_totals(dir.path(), "live_late").is_empty());
}

/// Commits what OPTIMIZE would to a Delta table: every data file rewritten under a new name
/// (the same rows), the old ones removed, all with dataChange=false.
fn compact_delta_raw(table: &Path) {
    let log = table.join("_delta_log");
    let versions: Vec<u64> = std::fs::read_dir(&log)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json")?.parse().ok()
        })
        .collect();
    let next = versions.iter().max().unwrap() + 1;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut actions = Vec::new();
    for file in parquet_files(table) {
        let rel = file
            .strip_prefix(table)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let day = rel
            .split('/')
            .next()
            .unwrap()
            .trim_start_matches("ingest_date=");
        let copy = rel.replace(".parquet", "-compacted.parquet");
        std::fs::copy(&file, table.join(&copy)).unwrap();
        let size = std::fs::metadata(&file).unwrap().len();
        actions.push(
            serde_json::json!({"remove": {"path": rel, "deletionTimestamp": now,
            "dataChange": false, "partitionValues": {"ingest_date": day}, "size": size}}),
        );
        actions.push(
            serde_json::json!({"add": {"path": copy, "partitionValues": {"ingest_date": day},
            "size": size, "modificationTime": now, "dataChange": false}}),
        );
    }
    let text: String = actions.iter().map(|a| format!("{a}\n")).collect();
    std::fs::write(log.join(format!("{next:020}.json")), text).unwrap();
}

#[test]
fn live_without_a_raw_lake_fails_naming_it_and_creates_nothing() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("lake")).unwrap();
    let err = tally_fails(dir.path(), &["live", "--once"], 1);
    assert!(err.contains("raw/payments"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("lake")).unwrap().count(),
        0
    );
}

/// `live_view` and `live_late` together: every row read lands in one of them.
fn view_and_late(dir: &Path) -> Totals {
    let mut all = read_totals(dir, "live_view");
    for (k, v) in read_totals(dir, "live_late") {
        let e = all.entry(k).or_default();
        e.0 += v.0;
        e.1 += v.1;
        e.2 += v.2;
    }
    all
}

fn set_mtime(path: &Path, t: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// `tally live --once` in JSON: every batch line, then the summary.
fn live_once_lines(dir: &Path) -> (Vec<serde_json::Value>, serde_json::Value) {
    let out = tally_ok(dir, &["live", "--once", "--format", "json"]);
    let mut lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = lines.pop().unwrap()["summary"].clone();
    (lines, summary)
}

/// Every landed file is read once, whatever its mtime, folder or clock (issue 34, items 1-4):
/// a copy with an old mtime, a future-dated folder and a future mtime (read, named, steering
/// nothing), a file landing late in a partition three days back, a partition after a gap, the
/// same file uploaded again (skipped) and a changed file under a read path (quarantined). After
/// each, `live_view` + `live_late` equal an independent count of every file read.
#[test]
fn every_landed_file_is_read_once_whatever_its_mtime_folder_or_clock() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let part = |day: &str| lake.join(format!("raw/payments/ingest_date={day}"));
    let t0 = micros("2026-11-17T10:00:00Z");
    let mut all = Vec::new();
    let land = |day: &str, name: &str, rows: Vec<RawRow>, all: &mut Vec<RawRow>| {
        write_raw(&lake, day, name, &rows);
        all.extend(rows);
    };
    land(
        "2026-11-17",
        "a.parquet",
        traffic("a", t0, 1_000_000, 200),
        &mut all,
    );
    let now = std::time::SystemTime::now();
    set_mtime(&part("2026-11-17").join("a.parquet"), now);
    live_once(dir.path(), &[]);
    let t1 = micros("2026-11-20T10:00:00Z");
    land(
        "2026-11-20",
        "b.parquet",
        traffic("b", t1, 1_000_000, 200),
        &mut all,
    );
    live_once(dir.path(), &[]);
    assert_eq!(view_and_late(dir.path()), expected(&all));

    // 1. A copy keeping an old mtime (two hours before the newest file read) is read.
    land(
        "2026-11-20",
        "c.parquet",
        traffic("c", t1 + 300_000_000, 1_000_000, 100),
        &mut all,
    );
    set_mtime(
        &part("2026-11-20").join("c.parquet"),
        now - Duration::from_secs(2 * 3600),
    );
    assert_eq!(live_once(dir.path(), &[])["rows"], 100);
    assert_eq!(view_and_late(dir.path()), expected(&all));

    // 2. A future-dated folder and a file with a future mtime are read and named; a normal
    //    file landing after them is still found (the future steers nothing).
    land(
        "2099-01-01",
        "fut.parquet",
        traffic("f", t1 + 400_000_000, 1_000_000, 50),
        &mut all,
    );
    land(
        "2026-11-20",
        "d.parquet",
        traffic("d", t1 + 500_000_000, 1_000_000, 50),
        &mut all,
    );
    set_mtime(
        &part("2026-11-20").join("d.parquet"),
        now + Duration::from_secs(24 * 3600),
    );
    let (batches, s) = live_once_lines(dir.path());
    assert_eq!(s["rows"], 100, "{s}");
    let ahead: Vec<String> = batches
        .iter()
        .flat_map(|b| b["ahead"].as_array().cloned().unwrap_or_default())
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ahead,
        [
            "raw/payments/ingest_date=2026-11-20/d.parquet",
            "raw/payments/ingest_date=2099-01-01/fut.parquet"
        ],
        "{batches:?}"
    );
    land(
        "2026-11-20",
        "e.parquet",
        traffic("e", t1 + 600_000_000, 1_000_000, 50),
        &mut all,
    );
    assert_eq!(live_once(dir.path(), &[])["rows"], 50);
    assert_eq!(view_and_late(dir.path()), expected(&all));

    // 3. A file landing late in a partition three days back, and a partition after a gap.
    land(
        "2026-11-17",
        "late.parquet",
        traffic("l", t0 + 900_000_000, 1_000_000, 40),
        &mut all,
    );
    assert_eq!(live_once(dir.path(), &[])["rows"], 40);
    assert_eq!(view_and_late(dir.path()), expected(&all));
    land(
        "2026-11-23",
        "g.parquet",
        traffic("g", micros("2026-11-23T10:00:00Z"), 1_000_000, 60),
        &mut all,
    );
    assert_eq!(live_once(dir.path(), &[])["rows"], 60);
    assert_eq!(view_and_late(dir.path()), expected(&all));

    // 4. The same file uploaded again (fresh mtime, same bytes) is not read again; a changed
    //    file under a path already read is quarantined with the reason, and read nowhere.
    let c = part("2026-11-20").join("c.parquet");
    let bytes = std::fs::read(&c).unwrap();
    std::fs::remove_file(&c).unwrap();
    std::fs::write(&c, &bytes).unwrap();
    assert_eq!(live_once(dir.path(), &[])["batches"], 0);
    write_raw(
        &lake,
        "2026-11-20",
        "b.parquet",
        &traffic("x", t1, 1_000_000, 10),
    );
    let err = tally_fails(dir.path(), &["live", "--once"], 1);
    assert!(
        err.contains("b.parquet") && err.contains("changed after it was taken"),
        "{err}"
    );
    assert_eq!(view_and_late(dir.path()), expected(&all));
    assert_eq!(
        live_once(dir.path(), &[])["batches"],
        0,
        "quarantined once, not every run"
    );
    assert_eq!(
        quarantine_rows(dir.path()),
        [(
            "raw/payments/ingest_date=2026-11-20/b.parquet".to_string(),
            true,
            "10".to_string()
        )]
    );
}

/// A live run paused (SIGSTOP: a suspended VM, a long GC pause) past its lease, while another
/// run takes the lease and commits, writes nothing once resumed (issue 34, item 7): it
/// confirms the lease before its checkpoint and before each commit, and stops. The totals stay
/// exact and no file is lost or counted twice.
#[test]
fn a_live_run_paused_past_its_lease_writes_nothing_after_it_resumes() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let t0 = micros("2026-11-20T10:00:00Z");
    let mut all = traffic("a", t0, 1_000_000, 100);
    write_raw(&lake, "2026-11-20", "a.parquet", &all);
    let mut paused = tally_cmd(dir.path())
        .args(["live", "--interval", "200ms"])
        .env("TALLY_LEASE_SECS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_first_batch(&lake);
    let pid = paused.id().to_string();
    let signal = |s: &str| {
        assert!(std::process::Command::new("kill")
            .args([s, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_secs(3));
    // Another run takes the expired lease and commits batch 2.
    let b = traffic("b", t0 + 200_000_000, 1_000_000, 100);
    write_raw(&lake, "2026-11-20", "b.parquet", &b);
    all.extend(b);
    let out = tally_cmd(dir.path())
        .args(["live", "--once", "--format", "json"])
        .env("TALLY_LEASE_SECS", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A file waiting when the paused run resumes: it must not take it.
    let c = traffic("c", t0 + 400_000_000, 1_000_000, 100);
    write_raw(&lake, "2026-11-20", "c.parquet", &c);
    all.extend(c);
    let checkpoint_2 = lake.join("live_view/_tally_live/checkpoint-00000000000000000002.json");
    let before = std::fs::read(&checkpoint_2).unwrap();
    signal("-CONT");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = paused.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the resumed run goes on"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut paused.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("taken over"), "{stderr}");
    assert_eq!(
        std::fs::read(&checkpoint_2).unwrap(),
        before,
        "checkpoint 2 rewritten"
    );
    assert!(
        !lake
            .join("live_view/_tally_live/checkpoint-00000000000000000003.json")
            .exists(),
        "the resumed run wrote a checkpoint"
    );
    assert_eq!(live_once(dir.path(), &[])["rows"], 100);
    assert_eq!(view_and_late(dir.path()), expected(&all));
}

/// The same on the S3 test server (S3 keeps no mtime a lander can set, so the point there is
/// that nothing depends on it): a future-dated folder, a late file three days back, a partition
/// after a gap, the same file uploaded again and a changed file under a path already read.
#[test]
fn every_landed_file_is_read_once_on_s3() {
    let s3 = s3();
    let bucket = s3.bucket("live-never-blind");
    let dir = tempdir();
    let lake = format!("s3://{bucket}/lake");
    let staging = dir.path().join("staging");
    let run = |args: &[&str]| {
        let mut all = vec!["--lake", lake.as_str()];
        all.extend_from_slice(args);
        s3.cmd(dir.path()).args(all).output().unwrap()
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let land = |day: &str, name: &str, rows: &[RawRow]| {
        write_raw(&staging, day, name, rows);
        let key = format!("raw/payments/ingest_date={day}/{name}");
        s3.put(&bucket, &format!("lake/{key}"), &staging.join(&key));
    };
    let once_rows = || {
        let out = ok(&["live", "--once", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        v["summary"]["rows"].as_u64().unwrap()
    };
    let both = || {
        let mut all = totals_through(ok, "live_view");
        for (k, v) in totals_through(ok, "live_late") {
            let e = all.entry(k).or_default();
            e.0 += v.0;
            e.1 += v.1;
            e.2 += v.2;
        }
        all
    };
    let t0 = micros("2026-11-17T10:00:00Z");
    let t1 = micros("2026-11-20T10:00:00Z");
    let mut all = traffic("a", t0, 1_000_000, 100);
    land("2026-11-17", "a.parquet", &all);
    assert_eq!(once_rows(), 100);
    let b = traffic("b", t1, 1_000_000, 100);
    land("2026-11-20", "b.parquet", &b);
    all.extend(b);
    let f = traffic("f", t1 + 200_000_000, 1_000_000, 30);
    land("2099-01-01", "fut.parquet", &f);
    all.extend(f);
    assert_eq!(once_rows(), 130);
    let late = traffic("l", t0 + 300_000_000, 1_000_000, 20);
    land("2026-11-17", "late.parquet", &late);
    all.extend(late);
    assert_eq!(once_rows(), 20);
    let g = traffic("g", micros("2026-11-23T10:00:00Z"), 1_000_000, 40);
    land("2026-11-23", "g.parquet", &g);
    all.extend(g);
    assert_eq!(once_rows(), 40);
    assert_eq!(both(), expected(&all));
    // The same bytes again: skipped. Other bytes under a path read: quarantined, exit 1.
    land("2026-11-20", "b.parquet", &all[100..200]);
    let out = ok(&["live", "--once", "--format", "json"]);
    assert!(out.contains("\"batches\":0"), "{out}");
    land("2026-11-20", "b.parquet", &traffic("x", t1, 1_000_000, 5));
    let failed = run(&["live", "--once"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("changed after it was taken"));
    assert_eq!(both(), expected(&all));
}

/// A flaky store (`TALLY_FLAKY_STORE`, issue 35 item 2) failing every 7th request for a while,
/// then every 2nd checkpoint write, then every 2nd write of a batch's `live_view` file: the
/// continuous loop retries each failed batch on the dedup state it holds (no rebuild from the
/// raw files) and ends with the totals of a run that never failed. A batch failed before its
/// checkpoint is taken back from the dedup state (kept, its rows would be dropped as copies of
/// themselves on the retry); one failed after it is redone with exactly its files.
#[test]
fn a_flaky_store_costs_retries_not_a_rebuild_and_loses_nothing() {
    let reference = tempdir();
    generate(reference.path(), 2, 20_000, 5);
    let common = [
        "--max-files-per-batch",
        "1",
        "--start-lookback-days",
        "10",
        "--retention",
        "1000h",
        "--format",
        "json",
    ];
    let mut once = vec!["live", "--once"];
    once.extend(common);
    tally_ok(reference.path(), &once);
    let want_view = read_totals(reference.path(), "live_view");
    let want_late = read_totals(reference.path(), "live_late");
    let files = parquet_files(&reference.path().join("lake/raw")).len() as u64;

    for (spec, fails) in [
        ("7:12-120", "put"),
        ("2:1-12:checkpoint", "checkpoint"),
        ("2:1-12:live_view/part-", "live_view/part-"),
    ] {
        let flaky = tempdir();
        copy_dir(&reference.path().join("lake"), &flaky.path().join("lake"));
        std::fs::remove_dir_all(flaky.path().join("lake/live_view")).unwrap();
        let _ = std::fs::remove_dir_all(flaky.path().join("lake/live_late"));
        let _ = std::fs::remove_dir_all(flaky.path().join("lake/live_quarantine"));
        let mut child = tally_cmd(flaky.path())
            .args(["live", "--interval", "100ms"])
            .args(common)
            .env("TALLY_FLAKY_STORE", spec)
            .env("RUST_LOG", "tally_engine::live=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap());
        let (mut read, mut retries) = (0u64, 0u64);
        let t0 = Instant::now();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let batch: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            read += batch["files"].as_u64().unwrap();
            retries += batch["retries"].as_u64().unwrap();
            if read >= files {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "{spec}: {read} of {files} files after 2 min"
            );
        }
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success());
        assert!(child.wait().unwrap().success());
        let log = errors.join().unwrap();
        assert!(retries > 0, "{spec}: the store never failed a batch: {log}");
        let failed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("failing request"))
            .collect();
        assert!(
            failed
                .iter()
                .any(|l| l.contains("(put ") && l.contains(fails)),
            "{spec}: no write of {fails} failed: {log}"
        );
        assert_eq!(
            log.matches("live: recovered").count(),
            1,
            "{spec}: the state was rebuilt after a failure: {log}"
        );
        assert!(
            !log.contains("retrying from the last checkpoint"),
            "{spec}: {log}"
        );
        assert_eq!(read_totals(flaky.path(), "live_view"), want_view, "{spec}");
        assert_eq!(read_totals(flaky.path(), "live_late"), want_late, "{spec}");
    }
}

/// `tally live --once` with the live module's info log: (stderr, stdout).
fn live_once_logged(dir: &Path, extra: &[&str]) -> (String, String) {
    let out = tally_cmd(dir)
        .args(["live", "--once", "--max-files-per-batch", "1"])
        .args(["--start-lookback-days", "10", "--retention", "1000h"])
        .args(extra)
        .env("RUST_LOG", "tally_engine::live=info")
        .output()
        .unwrap();
    let (stderr, stdout) = (
        String::from_utf8_lossy(&out.stderr).to_string(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    );
    assert!(out.status.success(), "{stderr}");
    (stderr, stdout)
}

/// A restart loads the dedup state's snapshot and replays only the batches that reach past its
/// boundary minute (issue 35 item 1), from the key files they wrote when they committed; a
/// snapshot part that is missing, torn, altered or of a future format version is set aside, and
/// every batch is replayed as before snapshots; a key file in that state is replaced by its
/// batch's raw files. The totals are exact in every case, and copies of transactions the
/// snapshot holds are never counted twice.
#[test]
fn a_restart_loads_the_dedup_snapshot_and_falls_back_when_it_is_damaged() {
    let day = "2026-11-20";
    let t0 = micros("2026-11-20T10:00:00Z");
    // Three files of three minutes each, one batch each, then a file of new transactions and
    // copies of transactions from every one of those minutes (retries within the TTL).
    let first: Vec<Vec<RawRow>> = (0..3)
        .map(|f| traffic(&format!("f{f}"), t0 + f * 3 * MINUTE, 1_000_000, 180))
        .collect();
    let mut retry: Vec<RawRow> = first
        .iter()
        .flat_map(|rows| rows.iter().step_by(9).cloned())
        .map(|mut r| {
            r.ingest_time += 30_000_000;
            r
        })
        .collect();
    retry.extend(traffic("g", t0 + 9 * MINUTE, 1_000_000, 60));
    let land = |lake: &Path, with_retry: bool| {
        for (f, rows) in first.iter().enumerate() {
            write_raw(lake, day, &format!("a{f}.parquet"), rows);
        }
        if with_retry {
            write_raw(lake, day, "b.parquet", &retry);
        }
    };
    let reference = tempdir();
    land(&reference.path().join("lake"), true);
    live_once_logged(reference.path(), &[]);
    let want = view_and_late(reference.path());

    let base = tempdir();
    land(&base.path().join("lake"), false);
    live_once_logged(base.path(), &[]);
    let keys = base.path().join("lake/live_view/_tally_live/keys");
    let mut parts: Vec<_> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "keys"))
        .collect();
    parts.sort();
    assert!(!parts.is_empty(), "no snapshot part written");
    let part = parts[0].file_name().unwrap().to_owned();
    // The batches a restart replays wrote the keys they added; a restart inserts those
    // instead of re-reading the batches' raw files (a damaged one is replayed from raw).
    let key_file = std::ffi::OsString::from(format!("b{:020}.tail", 3));
    assert!(keys.join(&key_file).exists(), "no key file for batch 3");

    type Damage = fn(&Path);
    let missing: Damage = |p| std::fs::remove_file(p).unwrap();
    let torn: Damage = |p| {
        let b = std::fs::read(p).unwrap();
        std::fs::write(p, &b[..b.len() / 2]).unwrap();
    };
    let altered: Damage = |p| {
        let mut b = std::fs::read(p).unwrap();
        let at = b.len() - 12;
        b[at] ^= 0x40;
        std::fs::write(p, b).unwrap();
    };
    let future_version: Damage = |p| {
        let mut b = std::fs::read(p).unwrap();
        b[4..8].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(p, b).unwrap();
    };
    let cases: [(&str, Option<Damage>); 8] = [
        ("intact", None),
        ("missing", Some(missing)),
        ("torn", Some(torn)),
        ("altered", Some(altered)),
        ("future version", Some(future_version)),
        ("key file missing", Some(missing)),
        ("key file altered", Some(altered)),
        ("key file of a future version", Some(future_version)),
    ];
    for (case, damage) in cases {
        let dir = tempdir();
        copy_dir(&base.path().join("lake"), &dir.path().join("lake"));
        let of_key_file = case.starts_with("key file");
        if let Some(damage) = damage {
            damage(
                &dir.path()
                    .join("lake/live_view/_tally_live/keys")
                    .join(if of_key_file { &key_file } else { &part }),
            );
        }
        write_raw(&dir.path().join("lake"), day, "b.parquet", &retry);
        let (log, _) = live_once_logged(dir.path(), &[]);
        let recovered = log
            .lines()
            .find(|l| l.contains("live: recovered"))
            .unwrap_or_else(|| panic!("{case}: no recovery line: {log}"));
        if damage.is_none() || of_key_file {
            assert!(
                recovered.contains("from_snapshot=true"),
                "{case}: {recovered}"
            );
            // The committed checkpoint lists the parts written after batch 2 (those written
            // after batch 3 go into the next checkpoint): batches 2 and 3 reach past their
            // boundary minute, and each is replayed from its key file while it is sound.
            assert!(
                recovered.contains("replayed_batches=2 "),
                "{case}: {recovered}"
            );
            let (from_keys, files) = if of_key_file { (1, 1) } else { (2, 0) };
            assert!(
                recovered.contains(&format!("replayed_from_keys={from_keys} "))
                    && recovered.contains(&format!("replayed_files={files} ")),
                "{case}: {recovered}"
            );
            if case != "key file missing" && of_key_file {
                assert!(log.contains("batch key file is unusable"), "{case}: {log}");
            }
        } else {
            assert!(log.contains("dedup snapshot is unusable"), "{case}: {log}");
            assert!(
                recovered.contains("from_snapshot=false"),
                "{case}: {recovered}"
            );
            assert!(
                recovered.contains("replayed_batches=3 "),
                "{case}: {recovered}"
            );
        }
        assert_eq!(view_and_late(dir.path()), want, "{case}");
    }
}

/// A raw file of a retained batch deleted (a lifecycle rule, an operator) does not stall a
/// restart (issue 35 item 3): the dedup state is rebuilt without it, the restart says so, and
/// the view goes on exactly (no later copy of its transactions here, so nothing can be
/// counted twice). The snapshot is removed so that the restart re-reads every batch.
#[test]
fn a_deleted_raw_file_of_a_retained_batch_does_not_stall_a_restart() {
    let day = "2026-11-20";
    let t0 = micros("2026-11-20T10:00:00Z");
    let first: Vec<Vec<RawRow>> = (0..3)
        .map(|f| traffic(&format!("f{f}"), t0 + f * 3 * MINUTE, 1_000_000, 180))
        .collect();
    let mut later: Vec<RawRow> = [&first[0], &first[2]]
        .into_iter()
        .flat_map(|rows| rows.iter().step_by(7).cloned())
        .map(|mut r| {
            r.ingest_time += 30_000_000;
            r
        })
        .collect();
    later.extend(traffic("g", t0 + 9 * MINUTE, 1_000_000, 60));
    let land = |lake: &Path, with_later: bool| {
        for (f, rows) in first.iter().enumerate() {
            write_raw(lake, day, &format!("a{f}.parquet"), rows);
        }
        if with_later {
            write_raw(lake, day, "b.parquet", &later);
        }
    };
    let reference = tempdir();
    land(&reference.path().join("lake"), true);
    live_once_logged(reference.path(), &[]);

    let dir = tempdir();
    let lake = dir.path().join("lake");
    land(&lake, false);
    live_once_logged(dir.path(), &[]);
    std::fs::remove_dir_all(lake.join("live_view/_tally_live/keys")).unwrap();
    std::fs::remove_file(lake.join(format!("raw/payments/ingest_date={day}/a1.parquet"))).unwrap();
    write_raw(&lake, day, "b.parquet", &later);
    let (log, stdout) = live_once_logged(dir.path(), &["--format", "json"]);
    assert!(
        log.contains("a raw file of a retained batch is gone"),
        "{log}"
    );
    assert!(log.contains("missing_files=1"), "{log}");
    let first_batch: serde_json::Value =
        serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first_batch["rebuild_missing_files"], 1, "{stdout}");
    assert_eq!(view_and_late(dir.path()), view_and_late(reference.path()));
}

/// A checkpoint left behind far back (a delete that failed, a run that crashed) is collected
/// by the next roll-up, whatever its age (issue 35 item 5): the per-batch prune only deletes a
/// chain once a later full checkpoint is committed. Most batches write a small delta on the
/// last full checkpoint, and a restart reads the chain back as the whole state.
#[test]
fn a_stale_checkpoint_of_any_age_is_collected_by_the_roll_up() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let t0 = micros("2026-11-20T10:00:00Z");
    let land = |from: i64, to: i64| {
        for f in from..to {
            let rows = traffic(&format!("f{f}"), t0 + f * MINUTE, 1_000_000, 30);
            write_raw(&lake, "2026-11-20", &format!("a{f:02}.parquet"), &rows);
        }
    };
    let args = ["--compact-every", "4"];
    land(0, 12);
    live_once_logged(dir.path(), &args);
    let cps = lake.join("live_view/_tally_live");
    let newest = cps.join("checkpoint-00000000000000000012.json");
    let full = cps.join("checkpoint-00000000000000000001.json");
    let delta = std::fs::read_to_string(&newest).unwrap();
    assert!(delta.contains("\"base\":1,"), "{delta}");
    assert!(full.exists(), "no full checkpoint at batch 1");
    // Batch 0 never has a checkpoint: this one is left over from a lake before it.
    let stale = cps.join("checkpoint-00000000000000000000.json");
    std::fs::copy(&newest, &stale).unwrap();
    land(12, 17);
    live_once_logged(dir.path(), &args);
    assert!(!stale.exists(), "the stale checkpoint is still there");
    let mut left: Vec<String> = std::fs::read_dir(&cps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    left.sort();
    assert_eq!(left.last().unwrap(), "checkpoint-00000000000000000017.json");
    assert_eq!(left.len(), 17, "{left:?}");
    // The restart read the chain 1..=12 back as the state: every file was read once.
    assert_eq!(
        view_and_late(dir.path()),
        expected(
            &(0..17)
                .flat_map(|f| traffic(&format!("f{f}"), t0 + f * MINUTE, 1_000_000, 30))
                .collect::<Vec<_>>()
        )
    );
}
