//! The command line itself: help, usage errors, bad arguments, missing lakes.

use crate::harness::*;

#[test]
fn every_command_has_help() {
    let dir = tempdir();
    for cmd in ["sql", "shell", "tables", "generate"] {
        let out = tally_ok(dir.path(), &[cmd, "--help"]);
        assert!(out.contains("Usage: tally"), "{cmd}: {out}");
        assert!(
            out.contains("--lake"),
            "{cmd} help lacks the global --lake: {out}"
        );
    }
}

#[test]
fn usage_error_exits_2() {
    let dir = tempdir();
    tally_fails(dir.path(), &["frobnicate"], 2);
    tally_fails(dir.path(), &["generate", "--days", "many"], 2);
}

#[test]
fn bad_date_exits_1_naming_the_value() {
    let dir = tempdir();
    let err = tally_fails(dir.path(), &["generate", "--start", "2026-02-30"], 1);
    assert!(err.contains("2026-02-30"), "{err}");
}

#[test]
fn missing_lake_is_one_clear_line() {
    let dir = tempdir();
    let err = tally_fails(dir.path(), &["sql", "SELECT 1"], 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("lake") && err.contains("no such directory"),
        "{err}"
    );
}

#[test]
fn lake_flag_is_global_before_or_after_the_subcommand_and_env_works() {
    let dir = tempdir();
    let lake = dir.path().join("elsewhere");
    std::fs::create_dir_all(&lake).unwrap();
    let l = lake.to_str().unwrap();
    tally_ok(dir.path(), &["--lake", l, "sql", "SELECT 1"]);
    tally_ok(dir.path(), &["sql", "SELECT 1", "--lake", l]);
    run_ok(
        tally_cmd(dir.path())
            .env("TALLY_LAKE", l)
            .args(["sql", "SELECT 1"]),
    );
}

#[test]
fn config_file_sets_the_lake_and_bad_config_names_the_key() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("cfglake")).unwrap();
    std::fs::write(dir.path().join("tally.toml"), "lake = \"cfglake\"\n").unwrap();
    let out = tally_ok(dir.path(), &["tables"]);
    assert!(out.contains("cfglake"), "{out}");
    std::fs::write(dir.path().join("tally.toml"), "lakes = \"x\"\n").unwrap();
    let err = tally_fails(dir.path(), &["tables"], 1);
    assert!(err.contains("lakes") && err.contains("tally.toml"), "{err}");
}

#[test]
fn demo_tells_the_replay_story_with_figures_that_hold() {
    let dir = tempdir();
    let out = tally_ok(
        dir.path(),
        &["demo", "--days", "3", "--events-per-day", "6000"],
    );
    let lake = dir.path().join("lake");
    let raw = read_raw(&lake);
    assert!(out.contains(&format!("{} raw rows", raw.len())), "{out}");
    // The replaying partner's day in the ledger, computed independently.
    let partner = out
        .split_whitespace()
        .find(|w| w.starts_with("partner-"))
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    let day = "2026-11-02";
    let lo = micros("2026-11-02T00:00:00Z");
    let txns: std::collections::HashSet<&str> = raw
        .iter()
        .filter(|r| {
            r.partner_id == partner && r.event_time >= lo && r.event_time < lo + 86_400_000_000
        })
        .map(|r| r.txn_id.as_str())
        .collect();
    assert!(
        out.contains(&format!(
            "{partner} now has {} events in the ledger",
            txns.len()
        )),
        "{out}"
    );
    assert!(
        out.contains("-> ok") && out.contains("exit code 0"),
        "{out}"
    );
    assert!(out.contains("recorded in live_late"), "{out}");
    let late = csv_rows(&tally_ok(
        dir.path(),
        &["sql", &format!("SELECT sum(events) FROM live_late WHERE partner_id = '{partner}' AND CAST(window_start AS DATE) = DATE '{day}'"), "--format", "csv"],
    ));
    assert!(late[0][0].parse::<u64>().unwrap() > 0);
    // A second run replaces its own sample lake.
    tally_ok(
        dir.path(),
        &["demo", "--days", "3", "--events-per-day", "6000"],
    );
    // It refuses a lake it did not make.
    let other = tempdir();
    generate(other.path(), 1, 100, 1);
    let err = tally_fails(other.path(), &["demo"], 1);
    assert!(err.contains("did not make"), "{err}");
}
