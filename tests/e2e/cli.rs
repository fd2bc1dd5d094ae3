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
fn demo_builds_a_lake_and_a_ledger_and_tells_what_it_did() {
    let dir = tempdir();
    let out = tally_ok(
        dir.path(),
        &["demo", "--days", "2", "--events-per-day", "5000"],
    );
    let raw = read_raw(&dir.path().join("lake"));
    assert!(out.contains(&format!("{} raw rows", raw.len())), "{out}");
    assert!(
        out.contains("2026-11-01: ") && out.contains("→ 5000 transactions"),
        "{out}"
    );
    assert!(out.contains("is_winner"), "{out}");
    // A second run reuses the lake instead of overwriting it.
    let again = tally_ok(
        dir.path(),
        &["demo", "--days", "2", "--events-per-day", "5000"],
    );
    assert!(
        again.contains("Using the raw lake already there"),
        "{again}"
    );
}
