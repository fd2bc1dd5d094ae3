//! `tally sql` / `tally tables` over a generated local lake, checked against the raw files.

use crate::harness::*;
use std::path::Path;
use std::sync::OnceLock;

/// One shared lake for read-only tests: 3 days × 20k events.
fn lake() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempdir();
        generate(d.path(), 3, 20_000, 11);
        d
    })
    .path()
}

#[test]
fn count_and_exact_sum_per_arrival_day_match_the_files() {
    let dir = lake();
    let rows = read_raw(&dir.join("lake"));
    let want = count_and_sum_by(&rows, |r| r.ingest_date.clone());
    let out = tally_ok(
        dir,
        &[
            "sql",
            "SELECT ingest_date, count(*) AS n, sum(amount) AS total FROM raw_payments GROUP BY 1 ORDER BY 1",
            "--format",
            "csv",
        ],
    );
    assert!(out.starts_with("ingest_date,n,total"), "{out}");
    assert_eq!(csv_count_and_sum(&out), want);
}

#[test]
fn json_output_is_an_array_of_objects() {
    let out = tally_ok(
        lake(),
        &[
            "sql",
            "SELECT partner_id, count(*) AS n FROM raw_payments GROUP BY 1 ORDER BY 2 DESC LIMIT 3",
            "--format",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid json");
    let arr = v.as_array().expect("array");
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[0]["partner_id"], "partner-0001");
    let empty = tally_ok(
        lake(),
        &["sql", "SELECT 1 AS x WHERE false", "--format", "json"],
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&empty).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn table_format_shows_header_and_values() {
    let out = tally_ok(lake(), &["sql", "SELECT 1 AS one, 'x' AS letter"]);
    assert!(
        out.contains("one") && out.contains("letter") && out.contains("| 1"),
        "{out}"
    );
}

#[test]
fn ingest_date_filter_prunes_directories_in_explain() {
    let out = tally_ok(
        lake(),
        &[
            "sql",
            "EXPLAIN SELECT sum(amount) FROM raw_payments WHERE ingest_date = DATE '2026-11-02'",
            "--format",
            "csv",
        ],
    );
    assert!(out.contains("ingest_date=2026-11-02"), "{out}");
    assert!(
        !out.contains("ingest_date=2026-11-01/") && !out.contains("ingest_date=2026-11-03/"),
        "{out}"
    );
}

#[test]
fn event_time_filter_prunes_old_arrival_days() {
    // Only arrivals from 2026-11-02 on can hold events of 2026-11-03 (one day of clock slack).
    let out = tally_ok(
        lake(),
        &[
            "sql",
            "EXPLAIN SELECT sum(amount) FROM raw_payments WHERE event_time >= TIMESTAMP '2026-11-03T00:00:00Z' AND event_time < TIMESTAMP '2026-11-04T00:00:00Z'",
            "--format",
            "csv",
        ],
    );
    assert!(out.contains("ingest_date=2026-11-03"), "{out}");
    assert!(!out.contains("ingest_date=2026-11-01/"), "{out}");
    // …and the pruning loses no rows.
    let rows = read_raw(&lake().join("lake"));
    let lo = chrono::NaiveDate::from_ymd_opt(2026, 11, 3)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    let want = rows
        .iter()
        .filter(|r| r.event_time >= lo && r.event_time < lo + 86_400_000_000)
        .count();
    let got = tally_ok(
        lake(),
        &[
            "sql",
            "SELECT count(*) FROM raw_payments WHERE event_time >= TIMESTAMP '2026-11-03T00:00:00Z' AND event_time < TIMESTAMP '2026-11-04T00:00:00Z'",
            "--format",
            "csv",
        ],
    );
    assert_eq!(csv_rows(&got)[0][0].parse::<usize>().unwrap(), want);
}

#[test]
fn writes_are_refused_by_default_with_one_line() {
    for (sql, name) in [
        (
            "INSERT INTO raw_payments SELECT * FROM raw_payments",
            "INSERT INTO",
        ),
        ("COPY (SELECT 1) TO 'out.parquet'", "COPY"),
        (
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 'lake/raw/payments'",
            "CREATE EXTERNAL TABLE",
        ),
        ("DROP TABLE raw_payments", "DROP TABLE"),
    ] {
        let err = tally_fails(lake(), &["sql", sql], 1);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains(name) && err.contains("read-only"),
            "{sql}: {err}"
        );
    }
    assert!(!lake().join("out.parquet").exists());
}

#[test]
fn allow_write_permits_copy_but_raw_stays_read_only() {
    let dir = tempdir();
    let out = dir.path().join("ok_dir");
    let copy = format!(
        "COPY (SELECT 1 AS x) TO '{}' STORED AS PARQUET",
        out.join("x.parquet").display()
    );
    tally_ok(lake(), &["sql", &copy, "--allow-write"]);
    assert!(out.join("x.parquet").exists());
    let before = parquet_files(&lake().join("lake/raw/payments")).len();
    let err = tally_fails(
        lake(),
        &[
            "sql",
            "INSERT INTO raw_payments SELECT * FROM raw_payments LIMIT 1",
            "--allow-write",
        ],
        1,
    );
    assert!(err.to_lowercase().contains("insert"), "{err}");
    assert_eq!(
        parquet_files(&lake().join("lake/raw/payments")).len(),
        before
    );
}

/// Every file under a folder with its size, sorted: what "unchanged" means for raw.
fn files_with_sizes(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path().display().to_string(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

/// Raw data is never modified, not even with `--allow-write` (issue 36 item 6): a write whose
/// target is under the lake's `raw/` folder is refused with one line naming it, however the
/// location is spelled (absolute, relative, `.`/`..`, doubled slashes, `file://`, through a
/// symbolic link) and whether it is a `COPY`, an `INSERT` into `raw_payments` or into an
/// external table over raw; raw is left as it was. The same writes outside raw go through.
#[test]
fn no_spelling_of_a_raw_location_is_writable() {
    let dir = tempdir();
    generate(dir.path(), 1, 2_000, 3);
    let d = dir.path().display().to_string();
    std::os::unix::fs::symlink(dir.path().join("lake/raw"), dir.path().join("alias")).unwrap();
    let raw = dir.path().join("lake/raw");
    let before = files_with_sizes(&raw);
    let copy = |to: &str| format!("COPY (SELECT 1 AS x) TO '{to}' STORED AS PARQUET");
    for sql in [
        copy(&format!(
            "{d}/lake/raw/payments/ingest_date=2026-01-01/x.parquet"
        )),
        copy("lake/./raw/y.parquet"),
        copy("lake/ledger/../raw/z.parquet"),
        copy(&format!("file://{d}/lake//raw/w.parquet")),
        copy("alias/payments/v.parquet"),
        "INSERT INTO raw_payments SELECT * FROM raw_payments LIMIT 1".to_string(),
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 'lake/raw/payments/'; \
         INSERT INTO t SELECT * FROM t LIMIT 1"
            .to_string(),
    ] {
        let err = tally_fails(dir.path(), &["sql", &sql, "--allow-write"], 1);
        assert_eq!(err.trim().lines().count(), 1, "{sql}: {err}");
        assert!(
            err.contains("raw data is never modified")
                && (err.contains("raw") || err.contains("raw_payments")),
            "{sql}: {err}"
        );
        assert_eq!(files_with_sizes(&raw), before, "{sql} changed raw");
    }
    // Outside raw, the same statements write.
    tally_ok(
        dir.path(),
        &[
            "sql",
            &copy("lake/ledger/../out/x.parquet"),
            "--allow-write",
        ],
    );
    assert!(dir.path().join("lake/out/x.parquet").exists());
    tally_ok(
        dir.path(),
        &[
            "sql",
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 'lake/out/'; \
             INSERT INTO t SELECT * FROM t",
            "--allow-write",
        ],
    );
    assert_eq!(parquet_files(&dir.path().join("lake/out")).len(), 2);
}

#[test]
fn tables_lists_raw_payments() {
    let out = tally_ok(lake(), &["tables"]);
    assert!(
        out.contains("raw_payments") && out.contains("parquet"),
        "{out}"
    );
}

#[test]
fn sql_error_is_one_line_exit_1() {
    let err = tally_fails(
        lake(),
        &["sql", "SELECT no_such_column FROM raw_payments"],
        1,
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no_such_column"), "{err}");
}

#[test]
fn datafusion_settings_come_from_the_environment() {
    let show = |value: &str| {
        tally_cmd(lake())
            .env("DATAFUSION_EXECUTION_BATCH_SIZE", value)
            .args(["sql", "SHOW datafusion.execution.batch_size"])
            .output()
            .expect("run tally")
    };
    let out = show("1234");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("1234"), "{stdout}");
    // Queries still answer the same under another batch size.
    let sum = |size: &str| {
        run_ok(
            tally_cmd(lake())
                .env("DATAFUSION_EXECUTION_BATCH_SIZE", size)
                .args(["sql", "SELECT count(*), sum(amount) FROM raw_payments"]),
        )
    };
    assert_eq!(sum("100"), sum("8192"));

    let out = show("lots");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("DATAFUSION_EXECUTION_BATCH_SIZE"),
        "{stderr}"
    );
}

#[test]
fn corrupt_parquet_file_is_named() {
    let dir = tempdir();
    generate(dir.path(), 1, 2_000, 3);
    let part = dir.path().join("lake/raw/payments/ingest_date=2026-11-01");
    std::fs::write(part.join("zz-corrupt.parquet"), b"PAR1 this is not parquet").unwrap();
    let err = tally_fails(
        dir.path(),
        &["sql", "SELECT sum(amount) FROM raw_payments"],
        1,
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("zz-corrupt.parquet"), "{err}");
}

#[test]
fn closed_stdout_is_not_an_error() {
    use std::io::Read;
    let mut child = tally_cmd(lake())
        .args(["sql", "SELECT * FROM raw_payments", "--format", "csv"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn committed_sample_lake_answers_and_matches_its_files() {
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sample-lake");
    let rows = read_raw(&sample);
    assert!(!rows.is_empty(), "data/sample-lake has no raw rows");
    let out = tally_ok(
        &std::env::temp_dir(),
        &[
            "sql",
            "SELECT count(*) FROM raw_payments",
            "--format",
            "csv",
            "--lake",
            sample.to_str().unwrap(),
        ],
    );
    assert_eq!(csv_rows(&out)[0][0].parse::<usize>().unwrap(), rows.len());
}

#[test]
fn tables_named_in_tally_toml_are_queryable_and_a_bad_one_is_named() {
    let dir = tempdir();
    generate(dir.path(), 1, 2_000, 31);
    tally_ok(dir.path(), &["ledger", "--date", "2026-11-01"]);
    // Another lake's ledger (Delta) and its raw files (a Parquet directory) as extra tables.
    let other = tempdir();
    let cfg = format!(
        "lake = \"{}\"\n[tables.their_ledger]\nlocation = \"{}\"\nformat = \"delta\"\n[tables.their_raw]\nlocation = \"{}\"\nformat = \"parquet\"\n",
        other.path().join("empty-lake").display(),
        dir.path().join("lake/ledger").display(),
        dir.path().join("lake/raw/payments").display(),
    );
    std::fs::create_dir_all(other.path().join("empty-lake")).unwrap();
    std::fs::write(other.path().join("tally.toml"), &cfg).unwrap();
    let want = read_raw(&dir.path().join("lake")).len();
    let out = tally_ok(
        other.path(),
        &["sql", "SELECT (SELECT count(*) FROM their_raw) AS raw, (SELECT count(*) FROM their_ledger) AS ledger", "--format", "csv"],
    );
    let row = &csv_rows(&out)[0];
    assert_eq!(row[0].parse::<usize>().unwrap(), want);
    assert!(row[1].parse::<usize>().unwrap() > 1_900);

    let bad = cfg.replace(
        &dir.path().join("lake/ledger").display().to_string(),
        "/nonexistent/ledger",
    );
    std::fs::write(other.path().join("tally.toml"), bad).unwrap();
    // A broken table fails only the statements that name it, by name.
    tally_ok(other.path(), &["sql", "SELECT 1"]);
    let raw = tally_ok(
        other.path(),
        &["sql", "SELECT count(*) FROM their_raw", "--format", "csv"],
    );
    assert_eq!(csv_rows(&raw)[0][0].parse::<usize>().unwrap(), want);
    let err = tally_fails(
        other.path(),
        &["sql", "SELECT count(*) FROM their_ledger"],
        1,
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("their_ledger") && err.contains("/nonexistent/ledger"),
        "{err}"
    );
}

/// A lake table whose log is damaged fails only what reads it: the ledger job and queries of
/// other tables go on (issue: a broken `reconciliations` used to fail `tally ledger`).
#[test]
fn a_broken_lake_table_fails_only_what_names_it() {
    let dir = tempdir();
    generate(dir.path(), 1, 1_000, 32);
    tally_ok(dir.path(), &["ledger", "--date", "2026-11-01"]);
    let log = dir.path().join("lake/reconciliations/_delta_log");
    std::fs::create_dir_all(&log).unwrap();
    std::fs::write(log.join("00000000000000000000.json"), b"{not json").unwrap();
    tally_ok(dir.path(), &["ledger", "--date", "2026-11-01"]);
    let n = tally_ok(
        dir.path(),
        &["sql", "SELECT count(*) FROM ledger", "--format", "csv"],
    );
    assert_eq!(csv_rows(&n)[0][0], "1000");
    let err = tally_fails(
        dir.path(),
        &["sql", "SELECT count(*) FROM reconciliations"],
        1,
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("reconciliations"), "{err}");
}

#[test]
fn shell_runs_multiline_statements_and_backslash_commands() {
    use std::io::Write;
    let mut child = tally_cmd(lake())
        .args(["shell"])
        .env("HOME", lake())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"SELECT count(*) AS n\nFROM raw_payments;\n\\d\n\\d raw_payments\nSELECT nope;\n\\q\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let want = read_raw(&lake().join("lake")).len().to_string();
    assert!(stdout.contains(&want), "count {want} missing: {stdout}");
    assert!(stdout.contains("1 row in"), "timing line missing: {stdout}");
    assert!(
        stdout.contains("raw_payments")
            && stdout.contains("ingest_date")
            && stdout.contains("Date32"),
        "{stdout}"
    );
    assert!(
        stderr.contains("nope"),
        "the error should be shown and the shell kept: {stderr}"
    );
}

/// After a failed query only the failing scan's files are checked: a corrupt file elsewhere in
/// the lake (here an older partition the query does not read) is not the one named.
#[test]
fn only_the_failing_scans_files_are_checked_to_name_the_bad_one() {
    let dir = tempdir();
    generate(dir.path(), 1, 2_000, 4);
    let lake = dir.path().join("lake/raw/payments");
    let older = lake.join("ingest_date=2026-10-20");
    std::fs::create_dir_all(&older).unwrap();
    std::fs::write(
        older.join("aa-elsewhere.parquet"),
        b"PAR1 not parquet either",
    )
    .unwrap();
    std::fs::write(
        lake.join("ingest_date=2026-11-01/zz-corrupt.parquet"),
        b"PAR1 this is not parquet",
    )
    .unwrap();
    let err = tally_fails(
        dir.path(),
        &[
            "sql",
            "SELECT sum(amount) FROM raw_payments WHERE ingest_date = DATE '2026-11-01'",
        ],
        1,
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("zz-corrupt.parquet") && !err.contains("aa-elsewhere"),
        "{err}"
    );
}

/// A shell stays open for hours: a raw file landing while it is open is read by the next query
/// (DataFusion would otherwise keep the folder listing of the first query).
#[test]
fn the_shell_sees_raw_files_that_land_while_it_is_open() {
    let dir = tempdir();
    generate(dir.path(), 1, 500, 9);
    let mut shell = Shell::open(dir.path(), &[]);
    let query = "SELECT count(*) AS landed FROM raw_payments WHERE txn_id = 'shell-late-1';";
    let first = shell.ask(query);
    assert!(first.iter().any(|l| l.contains(" 0 ")), "{first:?}");
    let at = micros("2026-11-01T12:00:00Z");
    let day = std::fs::read_dir(dir.path().join("lake/raw/payments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .min()
        .unwrap();
    write_raw(
        &dir.path().join("lake"),
        day.trim_start_matches("ingest_date="),
        "landed-while-open.parquet",
        &[ok_row("shell-late-1", "p-late", at, at + 1_000_000, 100)],
    );
    let second = shell.ask(query);
    assert!(second.iter().any(|l| l.contains(" 1 ")), "{second:?}");
    shell.quit();
}

/// A shell open while the ledger commits a new day sees it at its next statement; the view
/// and the setting made before the commit are still there, and the view reads the new day.
#[test]
fn the_shell_sees_new_commits_and_keeps_what_was_made_in_it() {
    let dir = tempdir();
    generate(dir.path(), 2, 800, 19);
    tally_ok(dir.path(), &["ledger", "--date", "2026-11-01"]);
    let count =
        |sql: &str| csv_rows(&tally_ok(dir.path(), &["sql", sql, "--format", "csv"]))[0][0].clone();
    let one_day = count("SELECT count(*) FROM ledger");
    let mut shell = Shell::open(dir.path(), &["--allow-write"]);
    let has = |lines: &[String], v: &str| lines.iter().any(|l| l.contains(&format!(" {v} ")));
    let first = shell.ask("SELECT count(*) AS n FROM ledger;");
    assert!(has(&first, &one_day), "{first:?}");
    shell.ask(
        "CREATE VIEW per_day AS SELECT event_date, count(*) AS n FROM ledger GROUP BY event_date;",
    );
    shell.ask("SET datafusion.execution.batch_size = 1234;");

    tally_ok(dir.path(), &["ledger", "--date", "2026-11-02"]);
    let two_days = count("SELECT count(*) FROM ledger");
    assert_ne!(two_days, one_day);
    let after = shell.ask("SELECT count(*) AS n FROM ledger;");
    assert!(has(&after, &two_days), "the new day is seen: {after:?}");
    let view = shell.ask("SELECT count(*) AS days FROM per_day;");
    assert!(
        has(&view, "2"),
        "the view reads the refreshed ledger: {view:?}"
    );
    let setting = shell.ask("SHOW datafusion.execution.batch_size;");
    assert!(has(&setting, "1234"), "the setting is kept: {setting:?}");
    shell.quit();
}

/// A `tally shell` fed one statement at a time, its answers read as they come.
struct Shell {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Shell {
    fn open(dir: &std::path::Path, args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = tally_cmd(dir)
            .arg("shell")
            .args(args)
            .env("HOME", dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// Sends one statement; the lines printed up to its timing line (`… rows in 0.01s`).
    fn ask(&mut self, sql: &str) -> Vec<String> {
        use std::io::Write;
        self.stdin.write_all(format!("{sql}\n").as_bytes()).unwrap();
        self.stdin.flush().unwrap();
        let mut seen = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the shell answered");
            let done = line.contains(" in ") && line.ends_with('s');
            seen.push(line);
            if done {
                return seen;
            }
        }
    }

    /// `\q`, and the shell must exit 0.
    fn quit(mut self) {
        use std::io::Write;
        self.stdin.write_all(b"\\q\n").unwrap();
        drop(self.stdin);
        let out = self.child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
