//! `tally reconcile`: figures against an independent count, late events explaining drift,
//! real drift exiting 3, the history in `reconciliations`, and the refusals.

use crate::harness::*;
use std::collections::BTreeMap;
use std::path::Path;

const MINUTE: i64 = 60_000_000;

fn row(txn: String, partner: &str, event: i64, ingest: i64, cents: i128) -> RawRow {
    RawRow {
        txn_id: txn,
        partner_id: partner.into(),
        event_time: event,
        ingest_time: ingest,
        amount: cents,
        currency: "EUR".into(),
        status: if cents % 13 == 0 {
            "declined".into()
        } else {
            "ok".into()
        },
        ingest_date: String::new(),
        file: Default::default(),
    }
}

/// `n` distinct transactions per partner over day 2026-11-20, minute by minute.
fn day_traffic(n: usize) -> Vec<RawRow> {
    let start = micros("2026-11-20T00:00:00Z");
    let mut rows = Vec::new();
    for i in 0..n {
        for (k, p) in ["p0", "p1", "p2"].iter().enumerate() {
            let t = start + (i as i64 * 1_440 / n as i64) * MINUTE + k as i64 * 1_000_000;
            rows.push(row(
                format!("{p}-{i}"),
                p,
                t,
                t + 2_000_000,
                100 + (i * 7 + k) as i128,
            ));
        }
    }
    rows
}

fn reconcile(dir: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    reconcile_day(dir, "2026-11-20", extra)
}

fn reconcile_day(dir: &Path, day: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["reconcile", "--date", day, "--format", "json"];
    args.extend_from_slice(extra);
    let out = tally(dir, &args);
    let code = out.status.code().unwrap();
    assert!(
        code == 0 || code == 3,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, serde_json::from_slice(&out.stdout).unwrap())
}

fn by_partner(report: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    report["partners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["partner_id"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

#[test]
fn reconcile_agrees_then_explains_late_events_then_flags_real_drift() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let rows = day_traffic(600);
    write_raw(&lake, "2026-11-20", "day.parquet", &rows);
    // Something past the day's end, so the live view has seen the whole day.
    let next = micros("2026-11-21T00:10:00Z");
    write_raw(
        &lake,
        "2026-11-21",
        "next.parquet",
        &[row("n-1".into(), "p0", next, next, 100)],
    );
    tally_ok(dir.path(), &["live", "--once"]);
    tally_ok(dir.path(), &["ledger", "--date", "2026-11-20"]);

    let (code, r) = reconcile(dir.path(), &[]);
    assert_eq!(code, 0);
    let p = by_partner(&r);
    for (name, want) in [("p0", 600), ("p1", 600), ("p2", 600)] {
        assert_eq!(p[name]["ledger_events"], want);
        assert_eq!(p[name]["live_events"], want);
        assert_eq!(p[name]["raw_drift"], 0.0);
    }
    let cents: i128 = rows
        .iter()
        .filter(|r| r.partner_id == "p1")
        .map(|r| r.amount)
        .sum();
    assert_eq!(
        p["p1"]["ledger_amount_cents"].as_i64().unwrap() as i128,
        cents
    );
    let errors = rows
        .iter()
        .filter(|r| r.partner_id == "p1" && r.status != "ok")
        .count();
    assert_eq!(p["p1"]["ledger_errors"], errors);
    assert_eq!(p["p1"]["live_errors"], errors);

    // p1 replays 50 events of the day the live view never had: they land behind the watermark.
    let replay: Vec<RawRow> = (0..50)
        .map(|i| {
            let t = micros("2026-11-20T09:00:00Z") + i * MINUTE;
            row(format!("p1-missed-{i}"), "p1", t, next + MINUTE, 500)
        })
        .collect();
    write_raw(&lake, "2026-11-21", "replay.parquet", &replay);
    let live = tally_ok(dir.path(), &["live", "--once", "--format", "json"]);
    assert!(live.contains("\"late\":50"), "{live}");
    tally_ok(dir.path(), &["ledger", "--date", "2026-11-20"]);
    let (code, r) = reconcile(dir.path(), &[]);
    assert_eq!(code, 0, "late events explain the drift: {r}");
    let p = by_partner(&r);
    assert_eq!(p["p1"]["ledger_events"], 650);
    assert_eq!(p["p1"]["live_events"], 600);
    assert_eq!(p["p1"]["late_events"], 50);
    let raw = p["p1"]["raw_drift"].as_f64().unwrap();
    assert!((raw - 50.0 / 650.0).abs() < 1e-9, "{raw}");
    assert_eq!(p["p1"]["unexplained_drift"], 0.0);

    // Next day, p2 re-sends 20 transactions with a shifted event_time in the same minutes as
    // the originals' batch: the live view (dedup per minute of event time) counts them again,
    // the ledger does not. That drift is not explained by late events.
    let day2 = micros("2026-11-21T00:00:00Z");
    let traffic2: Vec<RawRow> = (0..600)
        .map(|i| {
            let t = day2 + i * 144_000_000; // every 2.4 minutes
            row(
                format!("p2-d2-{i}"),
                "p2",
                t,
                t + 1_000_000,
                200 + i as i128,
            )
        })
        .collect();
    let shifted: Vec<RawRow> = traffic2[100..120]
        .iter()
        .map(|r| {
            let mut c = r.clone();
            c.event_time += 3 * MINUTE;
            c.ingest_time += 4 * MINUTE;
            c
        })
        .collect();
    let after = micros("2026-11-22T00:10:00Z");
    let mut files = traffic2.clone();
    files.extend(shifted);
    files.push(row("n-2".into(), "p0", after, after, 100));
    write_raw(&lake, "2026-11-21", "day2.parquet", &files);
    tally_ok(dir.path(), &["live", "--once"]);
    tally_ok(dir.path(), &["ledger", "--date", "2026-11-21"]);
    let (code, r) = reconcile_day(dir.path(), "2026-11-21", &[]);
    assert_eq!(code, 3, "{r}");
    let p = by_partner(&r);
    assert_eq!(p["p2"]["ledger_events"], 600);
    let live = p["p2"]["live_events"].as_i64().unwrap();
    let late = p["p2"]["late_events"].as_i64().unwrap();
    assert_eq!(
        live + late,
        620,
        "every copy is in live_view or live_late: {r}"
    );
    let u = p["p2"]["unexplained_drift"].as_f64().unwrap();
    assert!((u - (live - 600) as f64 / 600.0).abs() < 1e-9, "{u}");
    assert_eq!(p["p2"]["drifting"], true);
    // A looser threshold accepts it.
    let (code, _) = reconcile_day(dir.path(), "2026-11-21", &["--threshold", "0.05"]);
    assert_eq!(code, 0);

    // Every run is in the history, with its verdicts.
    let hist = csv_rows(&tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT count(DISTINCT run_id), sum(CASE WHEN verdict = 'drift' THEN 1 ELSE 0 END) FROM reconciliations",
            "--format",
            "csv",
        ],
    ));
    assert_eq!(hist, vec![vec!["4".to_string(), "1".into()]]);

    // A file of the day after changed once the live mode had read it: quarantined, in no live
    // figure, and named by the day's reconciliation.
    write_raw(
        &lake,
        "2026-11-21",
        "next.parquet",
        &[
            row("n-1".into(), "p0", next, next, 100),
            row("n-3".into(), "p0", next, next, 300),
        ],
    );
    tally_fails(dir.path(), &["live", "--once"], 1);
    let (_, r) = reconcile(dir.path(), &[]);
    let named: Vec<&str> = r["quarantined_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(named.len(), 1, "{r}");
    assert!(
        named[0].starts_with("raw/payments/ingest_date=2026-11-21/next.parquet: "),
        "{r}"
    );
}

#[test]
fn reconcile_refuses_what_it_cannot_compare() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    write_raw(&lake, "2026-11-20", "day.parquet", &day_traffic(10));
    // No live view, no ledger.
    let err = tally_fails(dir.path(), &["reconcile", "--date", "2026-11-20"], 1);
    assert!(err.contains("ledger"), "{err}");
    tally_ok(dir.path(), &["live", "--once"]);
    tally_ok(dir.path(), &["ledger", "--date", "2026-11-20"]);
    // The live view has not seen the end of the day yet.
    let err = tally_fails(dir.path(), &["reconcile", "--date", "2026-11-20"], 1);
    assert!(err.contains("not complete in the live view"), "{err}");
    // A day without a ledger, and a bad date.
    let err = tally_fails(dir.path(), &["reconcile", "--date", "2026-11-19"], 1);
    assert!(err.contains("2026-11-19"), "{err}");
    let err = tally_fails(dir.path(), &["reconcile", "--date", "2026-13-01"], 1);
    assert!(err.contains("2026-13-01"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Rows of a report by (partner, currency).
fn by_partner_currency(
    report: &serde_json::Value,
) -> BTreeMap<(String, String), serde_json::Value> {
    report["partners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                (
                    p["partner_id"].as_str().unwrap().to_string(),
                    p["currency"].as_str().unwrap().to_string(),
                ),
                p.clone(),
            )
        })
        .collect()
}

#[test]
fn a_shortfall_in_one_currency_is_not_hidden_by_a_surplus_in_another() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    // p0 trades in USD and JPY (one in three), p1 and p2 in EUR.
    let mut rows = day_traffic(1_440);
    for (i, r) in rows.iter_mut().enumerate() {
        if r.partner_id == "p0" {
            r.currency = if (i / 3) % 3 == 0 { "JPY" } else { "USD" }.into();
        }
    }
    write_raw(&lake, "2026-11-20", "day.parquet", &rows);
    let noon = micros("2026-11-20T12:00:30Z");
    // A JPY copy that reached the lake five days late: the ledger's three-day horizon leaves
    // it out, while the live view, taking everything in its first batch, counts it (a JPY
    // surplus in live).
    write_raw(
        &lake,
        "2026-11-25",
        "very-late.parquet",
        &[RawRow {
            currency: "JPY".into(),
            ..row(
                "jpy-late".into(),
                "p0",
                noon,
                noon + 5 * 86_400_000_000,
                5_000,
            )
        }],
    );
    tally_ok(
        dir.path(),
        &["live", "--once", "--start-lookback-days", "10"],
    );
    // A USD transaction of the same size that the live view never saw (landed after it ran
    // and is not picked up again): a USD shortfall in live.
    write_raw(
        &lake,
        "2026-11-20",
        "after-live.parquet",
        &[RawRow {
            currency: "USD".into(),
            ..row("usd-missed".into(), "p0", noon, noon + 1_000_000, 5_000)
        }],
    );
    tally_ok(dir.path(), &["ledger", "--date", "2026-11-20"]);

    // Added across currencies, p0's ledger and live would agree exactly (same count, same
    // amount); per currency, both rows drift.
    let (code, r) = reconcile(dir.path(), &[]);
    assert_eq!(code, 3, "{r}");
    let rows_by_key = by_partner_currency(&r);
    let usd = &rows_by_key[&("p0".to_string(), "USD".to_string())];
    let jpy = &rows_by_key[&("p0".to_string(), "JPY".to_string())];
    assert_eq!(
        usd["ledger_events"].as_i64().unwrap(),
        usd["live_events"].as_i64().unwrap() + 1
    );
    assert_eq!(
        jpy["live_events"].as_i64().unwrap(),
        jpy["ledger_events"].as_i64().unwrap() + 1
    );
    assert_eq!(usd["drifting"], true);
    assert_eq!(jpy["drifting"], true);
    let eur = &rows_by_key[&("p1".to_string(), "EUR".to_string())];
    assert_eq!(eur["drifting"], false);
    let usd_cents: i128 = rows
        .iter()
        .filter(|r| r.partner_id == "p0" && r.currency == "USD")
        .map(|r| r.amount)
        .sum::<i128>()
        + 5_000;
    assert_eq!(
        usd["ledger_amount_cents"].as_i64().unwrap() as i128,
        usd_cents
    );
    // The history keeps the currency.
    let out = tally_ok(
        dir.path(),
        &[
            "sql",
            "SELECT currency, verdict FROM reconciliations WHERE partner_id = 'p0' ORDER BY currency",
            "--format",
            "csv",
        ],
    );
    assert_eq!(
        csv_rows(&out),
        vec![
            vec!["JPY".to_string(), "drift".into()],
            vec!["USD".into(), "drift".into()]
        ]
    );
}

#[test]
fn an_old_live_view_without_currencies_is_refused_with_the_fix() {
    let dir = tempdir();
    let lake = dir.path().join("lake");
    write_raw(&lake, "2026-11-20", "day.parquet", &day_traffic(10));
    // A live_view as an older tally wrote it: no currency column.
    let script = format!(
        "import deltalake, arro3.core as a\n\
         ts = a.DataType.timestamp('us', tz='UTC')\n\
         t = a.Table.from_pydict({{\n\
           'window_start': a.Array([0], a.DataType.int64()).cast(ts),\n\
           'partner_id': a.Array(['p0'], a.DataType.utf8()),\n\
           'events': a.Array([1], a.DataType.int64()),\n\
           'errors': a.Array([0], a.DataType.int64()),\n\
           'amount': a.Array([1], a.DataType.int64()),\n\
         }})\n\
         deltalake.write_deltalake('{}', t)\n",
        lake.join("live_view").display()
    );
    python(&script);
    let err = tally_fails(dir.path(), &["live", "--once"], 1);
    assert!(
        err.contains("across currencies") && err.contains("delete live_view/"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
