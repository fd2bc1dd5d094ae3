#!/usr/bin/env python3
"""bench/ledger: one day's ledger, tally against DuckDB and a floor, in one run.

Generates one day of N transactions (default 10M; ~10.5M raw rows with retries and a replay),
skewed and skew-free, then times on the same files, each in a fresh process with its peak RSS:
  - `tally ledger --date D` (and with --memory-limit 1GiB: same fingerprint required);
  - DuckDB's dedup: the `arg_min` aggregate and the QUALIFY/ROW_NUMBER window, writing Parquet;
  - the floor: DuckDB reading every column of the day's rows and writing them back, no dedup.
Writes bench/RESULTS.md.

With `--shapes a,b,..` it measures instead the data shapes of bench/gen_raw.py (a lake written
by DuckDB in shards, not by `tally generate`): for each shape and each `--events` size, tally
(under `--memory-limit`, if given) against DuckDB's two formulations under the same
`memory_limit`, the copy floor, seconds per million transactions, peak RSS, and tally's
ledger count and sum against the generator's own expectation.

Usage: bench/ledger.py [--events N] [--runs N]
       bench/ledger.py --shapes all|a,b,.. [--events N[,N..]] [--memory-limit 8GiB] [--runs N]
"""

import argparse
import json
import shutil
import sys

from common import WORK, machine, run_timed, tally_bin, write_section, ensure_duckdb

DAY = "2026-11-01"
WINDOW = "ingest_date BETWEEN DATE '2026-10-31' AND DATE '2026-11-04' AND event_time >= TIMESTAMPTZ '2026-11-01 00:00:00+00' AND event_time < TIMESTAMPTZ '2026-11-02 00:00:00+00'"

DUCK = {
    "DuckDB arg_min": """COPY (
  SELECT txn_id,
    arg_min({{'partner_id': partner_id, 'event_time': event_time, 'amount': amount, 'currency': currency, 'status': status}},
            (ingest_time, partner_id, amount, currency, status)) AS w,
    min(ingest_time) AS first_ingest_time, count(*) AS copies
  FROM read_parquet('{raw}/*/*.parquet', hive_partitioning = true) WHERE {window} GROUP BY txn_id
) TO '{out}' (FORMAT parquet)""",
    "DuckDB QUALIFY": """COPY (
  SELECT txn_id, partner_id, event_time, amount, currency, status,
    min(ingest_time) OVER (PARTITION BY txn_id) AS first_ingest_time,
    count(*) OVER (PARTITION BY txn_id) AS copies
  FROM read_parquet('{raw}/*/*.parquet', hive_partitioning = true) WHERE {window}
  QUALIFY row_number() OVER (PARTITION BY txn_id ORDER BY ingest_time, partner_id, amount, currency, status) = 1
) TO '{out}' (FORMAT parquet)""",
    "floor (DuckDB read + write, no dedup)": """COPY (
  SELECT * FROM read_parquet('{raw}/*/*.parquet', hive_partitioning = true) WHERE {window}
) TO '{out}' (FORMAT parquet)""",
}


def duck(sql, memory_limit=None):
    setup = f"SET memory_limit = '{memory_limit}'; " if memory_limit else ""
    code = f"import duckdb; c = duckdb.connect(); c.execute({setup!r}) if {bool(setup)} else None; c.execute({sql!r})"
    return run_timed([sys.executable, "-c", code])


def duckdb_version():
    import duckdb

    return duckdb.__version__


def duck_limit(tally_limit):
    """DuckDB's memory_limit spelling of a tally --memory-limit (8GiB -> 8GiB)."""
    return tally_limit


def shapes(args, tally):
    """The data-shapes section: gen_raw.py's shapes at each size, tally against DuckDB."""
    from gen_raw import SHAPES, generate

    names = sorted(SHAPES) if args.shapes == "all" else args.shapes.split(",")
    sizes = [int(x) for x in args.events.split(",")]
    limit = args.memory_limit
    rows = []
    for events in sizes:
        for shape in names:
            lake = WORK / "shapes" / f"{shape}-{events}"
            exp_path = lake / "expected.json"
            if not exp_path.exists():
                print(f"generating {shape} x {events}", flush=True)
                generate(lake, shape, events)
            expected = json.loads(exp_path.read_text())
            raw = lake / "raw" / "payments"
            limit_flag = ["--memory-limit", limit] if limit else []
            runs = []
            for _ in range(args.runs):
                shutil.rmtree(lake / "ledger", ignore_errors=True)
                shutil.rmtree(lake / "ledger_conflicts", ignore_errors=True)
                shutil.rmtree(lake / "runs", ignore_errors=True)
                secs, rss, out = run_timed([tally, "ledger", "--date", DAY, "--lake", str(lake), "--format", "json",
                                            *limit_flag])
                runs.append((secs, rss, json.loads(out.strip().splitlines()[-1])))
            t = min(runs, key=lambda r: r[0])
            summary = t[2]
            exact = (summary["ledger_rows"] == expected["ledger_rows"]
                     and summary["fingerprint"]["amount_sum"] == expected["ledger_sum"]
                     and len({r[2]["fingerprint"]["row_hash"] for r in runs}) == 1)
            outp = WORK / "shapes" / "duck-out.parquet"
            duck_times = {}
            for name, sql in DUCK.items():
                duck_times[name] = min((duck(sql.format(raw=raw, window=WINDOW, out=outp), duck_limit(limit))
                                        for _ in range(args.runs)), key=lambda x: x[0])
            best_duck = min(duck_times["DuckDB arg_min"][0], duck_times["DuckDB QUALIFY"][0])
            fl = duck_times["floor (DuckDB read + write, no dedup)"]
            rows.append(
                f"| {shape} | {events / 1e6:.0f}M | {t[0]:.2f} s | {t[0] / (events / 1e6):.3f} | {t[1] / 1024:.2f} GiB "
                f"| {duck_times['DuckDB arg_min'][0]:.2f} s | {duck_times['DuckDB QUALIFY'][0]:.2f} s "
                f"| {max(duck_times['DuckDB arg_min'][1], duck_times['DuckDB QUALIFY'][1]) / 1024:.2f} GiB "
                f"| {fl[0]:.2f} s | **{t[0] / best_duck:.2f}** | {summary['disputed']} | {summary['ceded']} | {exact} |")
            print(rows[-1], flush=True)
    layouts = "; ".join(f"{n}: {v[0]} ids, {v[1]:,} rows a file, {v[2]:,}-row groups, {v[3]}, {v[4]}% conflicting, "
                        f"{v[5]}% disputed" for n, v in SHAPES.items() if n in names)
    lines = [
        f"Machine: {machine()}. Command: `python3 bench/ledger.py --shapes {args.shapes} --events {args.events} "
        f"--runs {args.runs}{' --memory-limit ' + limit if limit else ''}`.",
        f"Lakes written by DuckDB (`bench/gen_raw.py`, in shards), not by `tally generate`. Shapes: {layouts}.",
        f"tally and DuckDB {duckdb_version()} each in a fresh process, best of {args.runs}; DuckDB and tally under the same memory limit "
        f"({limit or 'none'}). 'exact' = tally's ledger count and sum equal the generator's own expectation and "
        "every run has the same fingerprint.",
        "",
        "| shape | transactions | tally | s per M | tally peak RSS | DuckDB arg_min | DuckDB QUALIFY | DuckDB peak RSS "
        "| floor | tally / DuckDB (target ≤ 0.8) | disputed | ceded | exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    title = "ledger: data shapes" + (f" under --memory-limit {limit}" if limit else "")
    write_section(title, "\n".join(lines))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--events", default="10000000")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--shapes", help="measure bench/gen_raw.py's shapes: all or a,b,..")
    p.add_argument("--memory-limit", help="tally --memory-limit and DuckDB memory_limit for --shapes, e.g. 8GiB")
    args = p.parse_args()
    tally = tally_bin()
    ensure_duckdb()
    if args.shapes:
        return shapes(args, tally)
    args.events = int(args.events)
    results = {}
    for kind, flags in (("skewed", []), ("skew-free", ["--skew-free"])):
        lake = WORK / "ledger" / f"{kind}-{args.events}"
        if not (lake / "raw").exists():
            shutil.rmtree(lake, ignore_errors=True)
            secs, _, out = run_timed([tally, "generate", "--lake", str(lake), "--days", "1", "--events-per-day",
                                      str(args.events), "--seed", "3", *flags])
            print(out)
        raw = lake / "raw" / "payments"
        r = {}
        for i in range(args.runs):
            shutil.rmtree(lake / "ledger", ignore_errors=True)
            shutil.rmtree(lake / "ledger_conflicts", ignore_errors=True)
            secs, rss, out = run_timed([tally, "ledger", "--date", DAY, "--lake", str(lake), "--format", "json"])
            summary = json.loads(out.strip().splitlines()[-1])
            r.setdefault("tally", []).append((secs, rss))
            r["rows_read"] = summary["rows_read"]
            r["ledger_rows"] = summary["ledger_rows"]
            r["fingerprint"] = summary["fingerprint"]
        if kind == "skewed":
            secs, rss, out = run_timed([tally, "ledger", "--date", DAY, "--lake", str(lake), "--format", "json",
                                        "--memory-limit", "1GiB"])
            summary = json.loads(out.strip().splitlines()[-1])
            r["tally 1GiB"] = [(secs, rss)]
            r["same_fingerprint_1GiB"] = summary["fingerprint"] == r["fingerprint"]
            for name, sql in DUCK.items():
                outp = WORK / "ledger" / "duck-out.parquet"
                for _ in range(args.runs):
                    secs, rss, _ = duck(sql.format(raw=raw, window=WINDOW, out=outp))
                    r.setdefault(name, []).append((secs, rss))
        results[kind] = r
        print(kind, r)

    best = lambda xs: min(xs, key=lambda x: x[0])
    s = results["skewed"]
    t, t1g = best(s["tally"]), best(s["tally 1GiB"])
    am, q, fl = best(s["DuckDB arg_min"]), best(s["DuckDB QUALIFY"]), best(s["floor (DuckDB read + write, no dedup)"])
    tf = best(results["skew-free"]["tally"])
    lines = [
        f"Machine: {machine()}. Command: `python3 bench/ledger.py --events {args.events} --runs {args.runs}`.",
        f"One generated day: {args.events} transactions, {s['rows_read']} raw rows in the arrival window, "
        f"{s['ledger_rows']} ledger rows. Wall time and peak RSS of a fresh process each (best of {args.runs}).",
        "",
        "| run | time | peak RSS |",
        "|---|---|---|",
        f"| tally ledger (skewed) | {t[0]:.2f} s | {t[1]:.0f} MiB |",
        f"| tally ledger (skew-free) | {tf[0]:.2f} s | {tf[1]:.0f} MiB |",
        f"| tally ledger --memory-limit 1GiB (skewed) | {t1g[0]:.2f} s | {t1g[1]:.0f} MiB |",
        f"| DuckDB arg_min | {am[0]:.2f} s | {am[1]:.0f} MiB |",
        f"| DuckDB QUALIFY | {q[0]:.2f} s | {q[1]:.0f} MiB |",
        f"| floor: DuckDB read + write, no dedup | {fl[0]:.2f} s | {fl[1]:.0f} MiB |",
        "",
        "| ratio | value | target |",
        "|---|---|---|",
        f"| tally / DuckDB (faster of arg_min, QUALIFY) | {t[0] / min(am[0], q[0]):.2f} | ≤ 0.8 |",
        f"| tally / floor | {t[0] / fl[0]:.2f} | ≤ 2 |",
        f"| skewed / skew-free | {t[0] / tf[0]:.2f} | ≤ 1.1 |",
        f"| peak RSS under --memory-limit 1GiB | {t1g[1] / 1024:.2f} GiB | ≤ 1.5 GiB |",
        f"| same fingerprint under 1GiB | {s['same_fingerprint_1GiB']} | true |",
    ]
    write_section("ledger: one 10M-transaction day", "\n".join(lines))


if __name__ == "__main__":
    main()
