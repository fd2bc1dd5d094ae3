//! `tally generate`: deterministic, realistic raw data (checked by reading the files directly).

use crate::harness::*;
use std::collections::{HashMap, HashSet};

const DAY: i64 = 86_400_000_000;

fn day_of(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .date_naive()
        .to_string()
}

#[test]
fn same_seed_same_rows_other_seed_other_rows() {
    let (a, b, c) = (tempdir(), tempdir(), tempdir());
    generate(a.path(), 2, 5_000, 7);
    generate(b.path(), 2, 5_000, 7);
    generate(c.path(), 2, 5_000, 8);
    let strip = |rows: Vec<RawRow>| {
        let mut v: Vec<_> = rows
            .into_iter()
            .map(|mut r| {
                r.file = r.file.file_name().unwrap().into();
                r
            })
            .collect();
        v.sort();
        v
    };
    let ra = strip(read_raw(&a.path().join("lake")));
    let rb = strip(read_raw(&b.path().join("lake")));
    let rc = strip(read_raw(&c.path().join("lake")));
    assert_eq!(ra, rb);
    assert_ne!(
        ra.iter().map(|r| &r.txn_id).collect::<Vec<_>>(),
        rc.iter().map(|r| &r.txn_id).collect::<Vec<_>>()
    );
}

#[test]
fn traffic_looks_like_payments() {
    let dir = tempdir();
    let out = tally_ok(
        dir.path(),
        &[
            "generate",
            "--days",
            "3",
            "--events-per-day",
            "40000",
            "--seed",
            "1",
        ],
    );
    let rows = read_raw(&dir.path().join("lake"));

    // Exactly events-per-day distinct transactions per event day.
    let mut per_day: HashMap<String, HashSet<&str>> = HashMap::new();
    for r in &rows {
        per_day
            .entry(day_of(r.event_time))
            .or_default()
            .insert(&r.txn_id);
    }
    assert_eq!(per_day.len(), 3);
    assert!(
        per_day.values().all(|s| s.len() == 40_000),
        "{:?}",
        per_day.values().map(|s| s.len()).collect::<Vec<_>>()
    );

    // Duplicates: retries with the same payload, a few conflicting copies.
    let mut copies: HashMap<&str, Vec<&RawRow>> = HashMap::new();
    for r in &rows {
        copies.entry(&r.txn_id).or_default().push(r);
    }
    let dup = copies.values().filter(|v| v.len() > 1).count();
    let conflicts = copies
        .values()
        .filter(|v| {
            v.iter()
                .any(|r| (r.amount, &r.status) != (v[0].amount, &v[0].status))
        })
        .count();
    assert!(dup > 120_000 / 50, "too few retried transactions: {dup}");
    assert!(
        conflicts > 0 && conflicts < 1_000,
        "conflicting transactions: {conflicts}"
    );

    // Skew: the top partner carries a large share.
    let by_partner = count_by(&rows, |r| r.partner_id.clone());
    let top = by_partner.values().max().copied().unwrap() as f64 / rows.len() as f64;
    assert!(top > 0.35, "top partner share {top}");

    // Errors between 1% and 3%.
    let errors = rows.iter().filter(|r| r.status != "ok").count() as f64 / rows.len() as f64;
    assert!((0.01..0.035).contains(&errors), "error rate {errors}");

    // Some events land the next day; the replay lands 1–2 days after its event day.
    let spilled = rows
        .iter()
        .filter(|r| r.ingest_date > day_of(r.event_time))
        .count();
    assert!(spilled > 0);
    let replayed: Vec<_> = rows
        .iter()
        .filter(|r| r.file.to_string_lossy().contains("-replay-"))
        .collect();
    assert!(!replayed.is_empty(), "no replay written");
    assert!(replayed
        .iter()
        .all(|r| r.partner_id == replayed[0].partner_id));
    assert!(replayed
        .iter()
        .all(|r| r.ingest_time - r.event_time >= DAY / 2));
    assert!(out.contains("late replay"), "{out}");

    // ingest_time precedes event_time only for the partner whose clock runs 3 minutes fast,
    // by at most that; its events of a day's first minutes land in the day before.
    let skewed = "partner-0005";
    assert!(rows.iter().all(|r| r.ingest_time >= r.event_time
        || (r.partner_id == skewed && r.event_time - r.ingest_time <= 180_000_000)));
    assert!(rows.iter().any(|r| r.ingest_time < r.event_time));
    assert!(
        rows.iter()
            .any(|r| r.file.to_string_lossy().contains("-early-")),
        "no early arrivals in the day before"
    );
    // The re-stamping partner's retries name their own send time: copies of one txn_id with
    // different event_times, in files of their own; every other file is sorted by event_time.
    let restamped: Vec<&RawRow> = rows
        .iter()
        .filter(|r| r.file.to_string_lossy().contains("-restamped"))
        .collect();
    assert!(!restamped.is_empty() && restamped.iter().all(|r| r.partner_id == "partner-0004"));
    let mut by_file: HashMap<&std::path::Path, Vec<i64>> = HashMap::new();
    for r in rows
        .iter()
        .filter(|r| !r.file.to_string_lossy().contains("-restamped"))
    {
        by_file
            .entry(r.file.as_path())
            .or_default()
            .push(r.event_time);
    }
    for (f, t) in by_file {
        assert!(
            t.windows(2).all(|w| w[0] <= w[1]),
            "{} is not sorted by event_time",
            f.display()
        );
    }
}

#[test]
fn skew_free_spreads_partners_evenly() {
    let dir = tempdir();
    tally_ok(
        dir.path(),
        &[
            "generate",
            "--days",
            "1",
            "--events-per-day",
            "30000",
            "--skew-free",
        ],
    );
    let rows = read_raw(&dir.path().join("lake"));
    let by_partner = count_by(&rows, |r| r.partner_id.clone());
    let top = by_partner.values().max().copied().unwrap() as f64 / rows.len() as f64;
    assert!(top < 0.02, "top partner share {top} in a skew-free lake");
}
