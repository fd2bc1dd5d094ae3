//! Lake upkeep: `tally vacuum` deletes what no retained version needs and nothing else, and
//! never pulls files from under a running job.

use crate::harness::*;
use crate::ledger::{expected_ledger, ledger_rows, run_ledger};
use std::collections::BTreeSet;
use std::path::Path;

const DAY: &str = "2026-11-01";

/// Every data file under a table's folder (not its log or `_` state), relative to it.
fn data_files(table: &Path) -> BTreeSet<String> {
    parquet_files(table)
        .into_iter()
        .map(|p| {
            p.strip_prefix(table)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|p| !p.starts_with('_'))
        .collect()
}

/// The files each version of a Delta table references, read by deltalake-python.
fn files_by_version(table: &Path) -> Vec<BTreeSet<String>> {
    let script = format!(
        r#"
import json
from deltalake import DeltaTable
t = DeltaTable({path:?})
root = {path:?}.rstrip("/") + "/"
print(json.dumps([[u.split(root, 1)[-1] for u in DeltaTable({path:?}, version=v).file_uris()]
                  for v in range(t.version() + 1)]))
"#,
        path = table.to_string_lossy()
    );
    let versions: Vec<Vec<String>> = serde_json::from_slice(&python(&script)).unwrap();
    versions
        .into_iter()
        .map(|v| v.into_iter().collect())
        .collect()
}

/// Rows of version `v` of a Delta table, read by deltalake-python (fails if a file is gone).
/// The script leaves with `os._exit`: pyarrow's thread pool can abort the interpreter's
/// normal shutdown after `to_pyarrow_table` (deltalake 1.6).
fn rows_at(table: &Path, v: usize) -> u64 {
    let script = format!(
        "import os, sys\nfrom deltalake import DeltaTable\nprint(DeltaTable({:?}, version={v}).to_pyarrow_table().num_rows)\nsys.stdout.flush()\nos._exit(0)",
        table.to_string_lossy()
    );
    String::from_utf8(python(&script))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn backdate(files: impl IntoIterator<Item = std::path::PathBuf>, ago: &str) {
    for f in files {
        run_ok(
            std::process::Command::new("touch")
                .args(["-d", ago])
                .arg(&f),
        );
    }
}

fn vacuum_json(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["vacuum", "--format", "json"];
    args.extend_from_slice(extra);
    serde_json::from_str(tally_ok(dir, &args).trim()).unwrap()
}

fn vacuumed(report: &serde_json::Value, table: &str) -> BTreeSet<String> {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["table"] == table)
        .flat_map(|t| t["files"].as_array().unwrap().iter())
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

/// A run killed after writing its part files leaves them behind; a rerun replaces the day.
/// Vacuum with a retention keeps every version inside it readable and deletes exactly the
/// killed run's files once they are older than the retention; with none left, exactly the
/// files no version but the newest uses.
#[test]
fn vacuum_deletes_exactly_what_no_retained_version_needs() {
    let dir = tempdir();
    generate(dir.path(), 1, 5_000, 71);
    run_ledger(dir.path(), DAY, &[]);
    let killed = tally_cmd(dir.path())
        .args(["ledger", "--date", DAY])
        .env("TALLY_FAILPOINT", "ledger_after_part_files")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the run dies at its failpoint");
    run_ledger(dir.path(), DAY, &[]);
    let want = ledger_rows(dir.path(), DAY);
    let ledger = dir.path().join("lake/ledger");
    let versions = files_by_version(&ledger);
    let referenced: BTreeSet<String> = versions.iter().flatten().cloned().collect();
    let on_disk = data_files(&ledger);
    let orphans: BTreeSet<String> = on_disk.difference(&referenced).cloned().collect();
    let current = versions.last().unwrap().clone();
    let replaced: BTreeSet<String> = referenced.difference(&current).cloned().collect();
    assert!(!orphans.is_empty(), "the killed run left part files");
    assert!(
        !replaced.is_empty(),
        "the rerun replaced the first run's files"
    );

    // Within a 1 h retention the killed run's files are too young to be known dead.
    let young = vacuum_json(dir.path(), &["--retain", "1h", "--dry-run"]);
    assert!(vacuumed(&young, "ledger").is_empty(), "{young}");

    // Two hours later they are; the replaced files' versions are still inside the retention.
    backdate(orphans.iter().map(|f| ledger.join(f)), "2 hours ago");
    let dry = vacuum_json(dir.path(), &["--retain", "1h", "--dry-run"]);
    assert_eq!(vacuumed(&dry, "ledger"), orphans, "{dry}");
    assert_eq!(data_files(&ledger), on_disk, "a dry run deletes nothing");
    let bytes: u64 = orphans
        .iter()
        .map(|f| std::fs::metadata(ledger.join(f)).unwrap().len())
        .sum();
    let done = vacuum_json(dir.path(), &["--retain", "1h"]);
    assert_eq!(vacuumed(&done, "ledger"), orphans, "{done}");
    let ledger_report = done["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "ledger")
        .unwrap();
    assert_eq!(ledger_report["bytes"].as_u64().unwrap(), bytes);
    assert_eq!(
        data_files(&ledger),
        on_disk.difference(&orphans).cloned().collect()
    );
    for (v, files) in versions.iter().enumerate() {
        if !files.is_empty() {
            assert!(
                rows_at(&ledger, v) > 0,
                "version {v} reads after the vacuum"
            );
        }
    }

    // With no retention only the newest version's files stay, and it reads the same day.
    let all = vacuum_json(dir.path(), &["--retain", "0s"]);
    assert_eq!(vacuumed(&all, "ledger"), replaced, "{all}");
    assert_eq!(data_files(&ledger), current);
    assert_eq!(ledger_rows(dir.path(), DAY), want);
    assert!(
        !data_files(&dir.path().join("lake/raw/payments")).is_empty(),
        "raw/ untouched"
    );
    let again = vacuum_json(dir.path(), &["--retain", "0s"]);
    assert_eq!(
        again["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["files"].as_array().unwrap().len())
            .sum::<usize>(),
        0
    );
}

/// A run holding its day's lease may still commit what it wrote: a retention shorter than the
/// run has been going is refused before anything is deleted; a longer one goes ahead and
/// keeps the run's files.
#[test]
fn vacuum_refuses_to_pull_files_from_under_a_running_job() {
    let dir = tempdir();
    generate(dir.path(), 1, 5_000, 72);
    run_ledger(dir.path(), DAY, &[]);
    let paused = tally_cmd(dir.path())
        .args(["ledger", "--date", DAY])
        .env("TALLY_FAILPOINT", "ledger_after_part_files:stop")
        .spawn()
        .unwrap();
    wait_stopped(&paused);
    let ledger = dir.path().join("lake/ledger");
    let before = data_files(&ledger);
    let err = tally_fails(dir.path(), &["vacuum", "--retain", "0s"], 1);
    assert!(
        err.contains("ledger-2026-11-01") && err.contains("has not committed yet"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(data_files(&ledger), before, "nothing deleted");
    // Tables the run does not write can be vacuumed; a retention reaching back past the
    // run's start keeps its files.
    tally_ok(
        dir.path(),
        &["vacuum", "--retain", "0s", "--table", "reconciliations"],
    );
    tally_ok(dir.path(), &["vacuum", "--retain", "1h"]);
    assert_eq!(data_files(&ledger), before);
    signal(&paused, "-CONT");
    let out = paused.wait_with_output().unwrap();
    assert!(out.status.success(), "the paused run commits");
    tally_ok(dir.path(), &["vacuum", "--retain", "0s"]);
    assert!(!ledger_rows(dir.path(), DAY).is_empty());
}

#[test]
fn vacuum_never_names_raw_and_says_what_it_takes() {
    let dir = tempdir();
    generate(dir.path(), 1, 1_000, 73);
    let err = tally_fails(dir.path(), &["vacuum", "--table", "raw"], 2);
    assert!(err.contains("never modified"), "{err}");
    let err = tally_fails(dir.path(), &["vacuum", "--table", "ledgr"], 2);
    assert!(err.contains("live_view"), "{err}");
    // No table written yet: nothing to do, said plainly.
    let out = tally_ok(dir.path(), &["vacuum"]);
    assert!(out.contains("deleted 0 data files, 0 bytes"), "{out}");
}

/// On S3 the same: a rerun's replaced files are deleted once out of the retention, the newest
/// version reads the same day, and a second vacuum finds nothing.
#[test]
fn vacuum_on_s3_deletes_the_replaced_files_and_the_day_still_reads() {
    let s3 = s3();
    let bucket = s3.bucket("vacuum");
    let dir = tempdir();
    let lake = format!("s3://{bucket}/lake");
    let tally = |args: &[&str]| {
        let mut all = vec!["--lake", lake.as_str()];
        all.extend_from_slice(args);
        run_ok(s3.cmd(dir.path()).args(all))
    };
    tally(&[
        "generate",
        "--days",
        "1",
        "--events-per-day",
        "2000",
        "--seed",
        "74",
    ]);
    tally(&["ledger", "--date", DAY]);
    let sum = "SELECT count(*), sum(amount) FROM ledger";
    let before = tally(&["sql", sum, "--format", "csv"]);
    tally(&["ledger", "--date", DAY]);
    let dry: serde_json::Value = serde_json::from_str(
        tally(&["vacuum", "--retain", "0s", "--dry-run", "--format", "json"]).trim(),
    )
    .unwrap();
    let planned = vacuumed(&dry, "ledger");
    assert!(!planned.is_empty(), "{dry}");
    assert!(
        planned.iter().all(|p| p.starts_with("event_date=")),
        "paths relative to the table: {planned:?}"
    );
    let done: serde_json::Value =
        serde_json::from_str(tally(&["vacuum", "--retain", "0s", "--format", "json"]).trim())
            .unwrap();
    assert_eq!(vacuumed(&done, "ledger"), planned);
    assert!(done["tables"][0]["bytes"].as_u64().unwrap() > 0, "{done}");
    assert_eq!(tally(&["sql", sum, "--format", "csv"]), before);
    let again: serde_json::Value =
        serde_json::from_str(tally(&["vacuum", "--retain", "0s", "--format", "json"]).trim())
            .unwrap();
    assert!(vacuumed(&again, "ledger").is_empty(), "{again}");
}

fn optimize_json(dir: &Path, day: &str) -> serde_json::Value {
    serde_json::from_str(tally_ok(dir, &["optimize", "--date", day, "--format", "json"]).trim())
        .unwrap()
}

/// (partner_id, txn_id) of every row of a Parquet file, in file order.
fn sort_keys(file: &Path) -> Vec<(String, String)> {
    let f = std::fs::File::open(file).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut keys = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let p = b.column_by_name("partner_id").unwrap();
        let t = b.column_by_name("txn_id").unwrap();
        for i in 0..b.num_rows() {
            keys.push((string_at(p.as_ref(), i), string_at(t.as_ref(), i)));
        }
    }
    keys
}

/// A day written as one file per hash bucket is rewritten as one file sorted by (partner,
/// txn_id), in one OPTIMIZE commit that changes no data: the same rows, the fingerprint the
/// ledger run recorded, readable by deltalake-python; a second optimize has nothing to do, and
/// a later ledger run of the day replaces the optimized file as usual.
#[test]
fn optimize_rewrites_a_day_as_sorted_files_with_the_same_rows() {
    let dir = tempdir();
    generate(dir.path(), 1, 5_000, 75);
    let run = run_ledger(dir.path(), DAY, &[]);
    let want = ledger_rows(dir.path(), DAY);
    let ledger = dir.path().join("lake/ledger");
    let before = files_by_version(&ledger).last().unwrap().len();
    assert!(before > 1, "the ledger wrote one file per bucket");

    let done = optimize_json(dir.path(), DAY);
    assert_eq!(
        done["files_before"].as_u64().unwrap() as usize,
        before,
        "{done}"
    );
    assert_eq!(done["files_after"], 1, "{done}");
    assert_eq!(done["rows"], 5_000, "{done}");
    assert_eq!(
        done["fingerprint"]["row_hash"], run["fingerprint"]["row_hash"],
        "{done} vs {run}"
    );
    assert_eq!(ledger_rows(dir.path(), DAY), want);
    let commit = last_commit(&ledger);
    assert!(commit.contains("\"OPTIMIZE\""), "{commit}");
    assert!(
        commit.contains("\"dataChange\":false") && !commit.contains("\"dataChange\":true"),
        "{commit}"
    );
    let files = files_by_version(&ledger);
    let now = files.last().unwrap();
    assert_eq!(now.len(), 1);
    let keys = sort_keys(&ledger.join(now.iter().next().unwrap()));
    assert_eq!(keys.len(), 5_000);
    assert!(
        keys.windows(2).all(|w| w[0] <= w[1]),
        "sorted by (partner_id, txn_id)"
    );
    assert_eq!(rows_at(&ledger, files.len() - 1), 5_000);
    assert_eq!(
        rows_at(&ledger, files.len() - 2),
        5_000,
        "the version before still reads"
    );

    let again = optimize_json(dir.path(), DAY);
    assert!(again["version"].is_null(), "{again}");
    assert!(
        again["skipped"]
            .as_str()
            .unwrap()
            .contains("already compact"),
        "{again}"
    );
    assert_eq!(files_by_version(&ledger).len(), files.len(), "no commit");

    run_ledger(dir.path(), DAY, &[]);
    assert_eq!(ledger_rows(dir.path(), DAY), want);
    let empty = optimize_json(dir.path(), "2026-10-01");
    assert!(
        empty["skipped"].as_str().unwrap().contains("no rows"),
        "{empty}"
    );
}

/// Optimize takes the day's lease: while a ledger run of the day holds it, optimize refuses
/// and changes nothing.
#[test]
fn optimize_waits_for_no_one_and_touches_nothing_while_the_day_is_being_built() {
    let dir = tempdir();
    generate(dir.path(), 1, 2_000, 76);
    run_ledger(dir.path(), DAY, &[]);
    let ledger = dir.path().join("lake/ledger");
    let versions = files_by_version(&ledger).len();
    let paused = tally_cmd(dir.path())
        .args(["ledger", "--date", DAY])
        .env("TALLY_FAILPOINT", "ledger_after_input_check:stop")
        .spawn()
        .unwrap();
    wait_stopped(&paused);
    let err = tally_fails(dir.path(), &["optimize", "--date", DAY], 1);
    assert!(err.contains("being built by another run"), "{err}");
    assert_eq!(files_by_version(&ledger).len(), versions);
    signal(&paused, "-CONT");
    assert!(paused.wait_with_output().unwrap().status.success());
    let done = optimize_json(dir.path(), DAY);
    assert_eq!(done["files_after"], 1, "{done}");
}

/// Writes are relative: a lake moved to another folder (the original gone) or copied to a
/// bucket reads the same and every job goes on there; deltalake-python reads its tables too.
#[test]
fn a_lake_moved_elsewhere_or_copied_to_s3_reads_and_runs_the_same() {
    let dir = tempdir();
    generate(dir.path(), 1, 1_500, 77);
    run_ledger(dir.path(), DAY, &[]);
    tally_ok(dir.path(), &["live", "--once"]);
    let reconcile = |cmd: &mut std::process::Command| {
        let out = cmd.args(["reconcile", "--date", DAY]).output().unwrap();
        let code = out.status.code();
        assert!(
            code == Some(0) || code == Some(3),
            "reconcile ran: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    reconcile(&mut tally_cmd(dir.path()));
    let sums = "SELECT (SELECT count(*) FROM ledger) AS l, (SELECT sum(amount) FROM ledger) AS a, \
                (SELECT sum(events) FROM live_view) AS e, (SELECT count(*) FROM reconciliations) AS r";
    let want = csv_rows(&tally_ok(dir.path(), &["sql", sums, "--format", "csv"]));
    let txn = csv_rows(&tally_ok(
        dir.path(),
        &["sql", "SELECT min(txn_id) FROM ledger", "--format", "csv"],
    ))[0][0]
        .clone();

    let moved = tempdir();
    std::fs::rename(dir.path().join("lake"), moved.path().join("lake")).unwrap();
    let here = moved.path();
    assert_eq!(
        csv_rows(&tally_ok(here, &["sql", sums, "--format", "csv"])),
        want
    );
    let trace = tally_ok(here, &["trace", "--txn", &txn]);
    assert!(trace.contains(DAY), "{trace}");
    reconcile(&mut tally_cmd(here));
    tally_ok(here, &["live", "--once"]);
    run_ledger(here, DAY, &[]);
    for table in ["ledger", "live_view", "reconciliations"] {
        let path = here.join("lake").join(table);
        let versions = files_by_version(&path).len();
        assert!(
            rows_at(&path, versions - 1) > 0,
            "deltalake-python reads {table}"
        );
    }

    let s3 = s3();
    let bucket = s3.bucket("portable");
    s3.put_dir(&bucket, "copied/lake", &here.join("lake"));
    let lake = format!("s3://{bucket}/copied/lake");
    let on_s3 = |args: &[&str]| {
        let mut all = vec!["--lake", lake.as_str()];
        all.extend_from_slice(args);
        run_ok(s3.cmd(here).args(all))
    };
    let after = csv_rows(&tally_ok(here, &["sql", sums, "--format", "csv"]));
    assert_eq!(csv_rows(&on_s3(&["sql", sums, "--format", "csv"])), after);
    assert!(on_s3(&["trace", "--txn", &txn]).contains(DAY));
    on_s3(&["live", "--once"]);
    on_s3(&["ledger", "--date", DAY]);
    reconcile(s3.cmd(here).args(["--lake", lake.as_str()]));
}

/// A raw Delta table whose log names its files by absolute URLs under the root it was written
/// at (a lake restored under another prefix) is read at the same places in this lake, by the
/// ledger and by the live mode, instead of its files being refused as outside the lake.
#[test]
fn a_raw_delta_table_with_absolute_paths_from_its_old_root_is_read_here() {
    let dir = tempdir();
    let day = "2026-11-01";
    generate(dir.path(), 1, 1_200, 78);
    let lake = dir.path().join("lake");
    let rows = read_raw(&lake);
    std::fs::rename(lake.join("raw/payments"), dir.path().join("plain")).unwrap();
    python(&format!(
        r#"
import deltalake, glob, json, pyarrow as pa, pyarrow.dataset as ds
part = ds.partitioning(pa.schema([("ingest_date", pa.string())]), flavor="hive")
t = ds.dataset({plain:?}, format="parquet", partitioning=part).to_table()
dest = {dest:?}
deltalake.write_deltalake(dest, t, partition_by=["ingest_date"])
for log in glob.glob(dest + "/_delta_log/*.json"):
    out = []
    for line in open(log):
        a = json.loads(line)
        if "add" in a:
            a["add"]["path"] = "s3://old-bucket/prod/lake/raw/payments/" + a["add"]["path"]
        out.append(json.dumps(a))
    open(log, "w").write("\n".join(out) + "\n")
"#,
        plain = dir.path().join("plain").to_str().unwrap(),
        dest = lake.join("raw/payments").to_str().unwrap(),
    ));
    let log =
        std::fs::read_to_string(lake.join("raw/payments/_delta_log/00000000000000000000.json"))
            .unwrap();
    assert!(
        log.contains("s3://old-bucket/prod/lake/raw/payments/"),
        "{log}"
    );
    let summary = run_ledger(dir.path(), day, &[]);
    assert_eq!(
        summary["ledger_rows"].as_u64().unwrap() as usize,
        expected_ledger(&rows, day, 3).len(),
        "{summary}"
    );
    let live = tally_ok(dir.path(), &["live", "--once", "--format", "json"]);
    assert!(!live.contains("\"quarantined\":[\""), "{live}");
    let events = csv_rows(&tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT sum(events) FROM live_view",
            "--format",
            "csv",
        ],
    ));
    assert!(events[0][0].parse::<u64>().unwrap() > 0, "{events:?}");
}
