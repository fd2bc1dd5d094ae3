//! `tally trace`: every copy of a disputed transaction, with files, the winner by the ledger's
//! rule, and the ledger day and version — checked against the raw files read independently.

use crate::harness::*;

#[test]
fn trace_lists_every_copy_and_the_winner_by_the_ledger_rule() {
    let dir = tempdir();
    generate(dir.path(), 2, 20_000, 41);
    tally_ok(
        dir.path(),
        &[
            "backfill",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-01",
            "--progress",
            "json",
        ],
    );
    let id = csv_rows(&tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT min(txn_id) FROM ledger_conflicts",
            "--format",
            "csv",
        ],
    ))[0][0]
        .clone();
    let out = tally_ok(dir.path(), &["trace", "--txn", &id, "--format", "json"]);
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();

    let raw: Vec<RawRow> = read_raw(&dir.path().join("lake"))
        .into_iter()
        .filter(|r| r.txn_id == id)
        .collect();
    let copies = t["copies"].as_array().unwrap();
    assert_eq!(copies.len(), raw.len());
    let winner = raw
        .iter()
        .min_by_key(|r| {
            (
                r.ingest_time,
                r.partner_id.clone(),
                r.amount,
                r.currency.clone(),
                r.status.clone(),
            )
        })
        .unwrap();
    let w = &copies[0];
    assert_eq!(w["winner"], true);
    assert_eq!(w["ingest_time"], winner.ingest_time);
    assert_eq!(w["amount_cents"].as_i64().unwrap() as i128, winner.amount);
    assert!(winner.file.ends_with(w["file"].as_str().unwrap()), "{w}");
    assert!(copies[1..].iter().all(|c| c["winner"] == false));
    assert!(
        t["payloads"].as_u64().unwrap() >= 2,
        "a conflict has 2+ payloads: {t}"
    );
    assert_eq!(t["ledger"]["event_date"], "2026-11-01");
    assert_eq!(t["ledger"]["copies"], raw.len());
    assert_eq!(t["ledger"]["version"], 1);

    // The people's format says the same in words.
    let text = tally_ok(dir.path(), &["trace", "--txn", &id]);
    assert!(
        text.contains("WINNER") && text.contains("ledger version 1"),
        "{text}"
    );

    let err = tally_fails(dir.path(), &["trace", "--txn", "no-such-txn"], 1);
    assert!(err.contains("no-such-txn"), "{err}");
}

/// A raw file of the wrong schema holding a copy of the traced id: exit 1 naming the file and
/// the column, not a crash.
#[test]
fn a_raw_file_of_the_wrong_schema_is_named() {
    let dir = tempdir();
    let t = micros("2026-11-01T10:00:00Z");
    let rows: Vec<RawRow> = (0..3)
        .map(|i| RawRow {
            txn_id: format!("tw-{i}"),
            partner_id: "p1".into(),
            event_time: t,
            ingest_time: t + 1_000_000,
            amount: 1_00,
            currency: "EUR".into(),
            status: "ok".into(),
            ingest_date: String::new(),
            file: Default::default(),
        })
        .collect();
    write_raw(
        &dir.path().join("lake"),
        "2026-11-01",
        "good.parquet",
        &rows,
    );
    write_float_amount_file(
        &dir.path()
            .join("lake/raw/payments/ingest_date=2026-11-01/float-amount.parquet"),
        "tw-1",
        t,
    );
    let err = tally_fails(dir.path(), &["trace", "--txn", "tw-1"], 1);
    assert!(err.contains("float-amount.parquet"), "{err}");
    assert!(err.contains("amount"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
