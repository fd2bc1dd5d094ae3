#!/usr/bin/env python3
"""bench/analyst: a one-day query must not get slower as history grows.

Builds a raw lake with 3 years of history at a small daily volume plus one recent day at a
large volume, and a one-month lake holding copies of the same last month. Times one-day
aggregates with `tally sql` (a fresh process each time, so start-up and table registration
count) and with DuckDB (in-process, query time only) on the same files, filtered by
`ingest_date` and by an `event_time` range. Writes the ratios to bench/RESULTS.md.

Usage: bench/analyst.py [--history-events N] [--big-events N] [--runs N]
"""

import argparse
import shutil
import time
from datetime import date, timedelta

from common import WORK, best_of, ensure_duckdb, machine, run_timed, tally_bin, write_section

BIG_DAY = date(2026, 11, 20)
HISTORY_DAYS = 3 * 365


def build(tally, args):
    lake3y = WORK / "analyst" / "lake3y"
    lake1m = WORK / "analyst" / "lake1m"
    marker = WORK / "analyst" / f"built-{args.history_events}-{args.big_events}"
    if marker.exists():
        return lake3y, lake1m
    shutil.rmtree(WORK / "analyst", ignore_errors=True)
    lake3y.mkdir(parents=True)
    start = BIG_DAY - timedelta(days=HISTORY_DAYS)
    t = time.perf_counter()
    run_timed([tally, "generate", "--lake", str(lake3y), "--start", str(start), "--days", str(HISTORY_DAYS),
               "--events-per-day", str(args.history_events), "--seed", "1"])
    run_timed([tally, "generate", "--lake", str(lake3y), "--start", str(BIG_DAY), "--days", "1",
               "--events-per-day", str(args.big_events), "--seed", "2"])
    print(f"generated the 3-year lake in {time.perf_counter() - t:.1f} s")
    # The one-month lake: copies of the last 34 arrival days (the same files).
    src = lake3y / "raw" / "payments"
    dst = lake1m / "raw" / "payments"
    dst.mkdir(parents=True)
    for part in sorted(src.iterdir()):
        d = date.fromisoformat(part.name.split("=", 1)[1])
        if d >= BIG_DAY - timedelta(days=30):
            shutil.copytree(part, dst / part.name)
    marker.touch()
    return lake3y, lake1m


QUERIES = {
    "by ingest_date": "ingest_date = DATE '{d}'",
    "by event_time range": "event_time >= TIMESTAMP '{d}T00:00:00Z' AND event_time < TIMESTAMP '{n}T00:00:00Z'",
}

SELECT = ("SELECT partner_id, count(*) AS events, sum(CASE WHEN status <> 'ok' THEN 1 ELSE 0 END) AS errors, "
          "sum(amount) AS amount FROM raw_payments WHERE {where} GROUP BY partner_id ORDER BY events DESC, partner_id LIMIT 20")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--history-events", type=int, default=2_000)
    p.add_argument("--big-events", type=int, default=5_000_000)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    tally = tally_bin()
    duckdb = ensure_duckdb()
    lake3y, lake1m = build(tally, args)
    d, n = BIG_DAY.isoformat(), (BIG_DAY + timedelta(days=1)).isoformat()

    rows = []
    for qname, where in QUERIES.items():
        sql = SELECT.format(where=where.format(d=d, n=n))
        res = {}
        for lname, lake in (("3 years", lake3y), ("1 month", lake1m)):
            def tally_once():
                secs, _, out = run_timed([tally, "sql", sql, "--format", "csv", "--lake", str(lake)])
                res.setdefault(("tally-out", lname), out)
                return secs
            con = duckdb.connect()
            dsql = sql.replace("raw_payments", f"read_parquet('{lake}/raw/payments/*/*.parquet', hive_partitioning = true)")
            dsql = dsql.replace("TIMESTAMP '", "TIMESTAMPTZ '")

            def duck_once():
                t = time.perf_counter()
                con.sql(dsql).fetchall()
                return time.perf_counter() - t
            tally_once()  # warm the page cache for both
            duck_once()
            res[("tally", lname)] = best_of(args.runs, tally_once)[0]
            res[("duckdb", lname)] = best_of(args.runs, duck_once)[0]
            res[("duck-rows", lname)] = con.sql(dsql).fetchall()
        # Same answer from both engines.
        t_lines = res[("tally-out", "3 years")].strip().splitlines()[1:]
        assert len(t_lines) == len(res[("duck-rows", "3 years")]), (t_lines[:3], res[("duck-rows", "3 years")][:3])
        for tl, dr in zip(t_lines, res[("duck-rows", "3 years")]):
            assert tl.split(",")[0] == dr[0] and int(tl.split(",")[1]) == dr[1], (tl, dr)
        rows.append((qname, res))
        print(qname, {k: v for k, v in res.items() if not k[0].endswith(("out", "rows"))})

    lines = [
        f"Machine: {machine()}. Command: `python3 bench/analyst.py --history-events {args.history_events} "
        f"--big-events {args.big_events} --runs {args.runs}`.",
        f"Lake: {HISTORY_DAYS} days of history × {args.history_events} events/day plus {d} with "
        f"{args.big_events} events; the one-month lake holds copies of the last 31 arrival days.",
        "tally = wall time of a fresh `tally sql` process (start-up, table registration, query, output); "
        "DuckDB = in-process query time. Median of the runs.",
        "",
        "| query (one day) | tally 3y | tally 1m | tally 3y / 1m (target ≤ 1.5) | DuckDB 3y | tally / DuckDB on 3y (target ≤ 1.0) |",
        "|---|---|---|---|---|---|",
    ]
    for qname, res in rows:
        t3, t1, d3 = res[("tally", "3 years")], res[("tally", "1 month")], res[("duckdb", "3 years")]
        lines.append(f"| {qname} | {t3:.3f} s | {t1:.3f} s | {t3 / t1:.2f} | {d3:.3f} s | {t3 / d3:.2f} |")
    write_section("analyst: one-day query over 3 years vs 1 month", "\n".join(lines))


if __name__ == "__main__":
    main()
