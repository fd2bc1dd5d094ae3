#!/usr/bin/env python3
"""bench/serve: `tally serve` over Arrow Flight SQL and the Postgres wire, against a fresh
`tally sql` process per query and DuckDB in-process, on the same ledger files.

One generated day of N transactions (default 10M) gets its ledger built; then, with one
server (`--memory-limit 2GiB`):
  - point lookup of one `ledger` row by `txn_id` (a prepared statement with a parameter on both
    wires): p50/p95 over random ids;
  - the per-partner aggregate over the day: p50/p95, and its ratio to DuckDB in-process on the
    ledger's Parquet files;
  - throughput of 16 concurrent clients running the aggregate, against one fresh `tally sql`
    process per query and 16 DuckDB threads; the server's peak RSS (VmHWM) during it.
    That server runs with `--result-cache 0`, so every figure above is the engine's; a second
    server with the default result cache then serves the same 16 clients repeating the
    aggregate on the unchanged ledger (what a dashboard does);
  - 64 psycopg clients at once, each running a self-join over a demo-sized raw lake (634k
    events), against a second server with `--memory-limit 2GiB` and the default query cap:
    how many are answered (queued, not failed) and the server's peak RSS.
Writes bench/RESULTS.md.

Usage: bench/serve.py [--events N] [--lookups N] [--aggregates N]
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time

from common import WORK, machine, run_timed, tally_bin, write_section, ensure_duckdb, vm_hwm_mib, wait_listening

DAY = "2026-11-01"
AGG = ("SELECT partner_id, sum(amount) AS total, count(*) AS n FROM ledger "
       f"WHERE event_date = DATE '{DAY}' GROUP BY partner_id ORDER BY partner_id")
LOOKUP = "SELECT * FROM ledger WHERE txn_id = {p}"


def ensure_clients():
    try:
        import adbc_driver_flightsql  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "adbc-driver-flightsql",
                        "adbc-driver-manager", "pyarrow", "psycopg[binary]"], check=True)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def ms(xs):
    return f"{pct(xs, 0.5) * 1000:.1f} / {pct(xs, 0.95) * 1000:.1f}"


def start_server(tally, lake, limit, extra=()):
    proc = subprocess.Popen([tally, "serve", "--lake", str(lake), "--http", "127.0.0.1:0",
                             "--flight-sql", "127.0.0.1:0", "--pg", "127.0.0.1:0",
                             "--memory-limit", limit, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, wait_listening(proc, 3, "tally serve")


HEAVY_EVENTS = 634_000
HEAVY = ("SELECT a.partner_id, count(*) AS n FROM raw_payments a JOIN raw_payments b "
         "ON a.txn_id = b.txn_id GROUP BY a.partner_id ORDER BY a.partner_id")


def heavy_burst(tally, psycopg):
    """64 clients at once, each one self-join; a burst must queue, not fail."""
    lake = WORK / "serve" / f"lake-heavy-{HEAVY_EVENTS}"
    if not (lake / "raw").exists():
        run_timed([tally, "generate", "--lake", str(lake), "--days", "1", "--events-per-day",
                   str(HEAVY_EVENTS), "--seed", "7"])
    proc, addrs = start_server(tally, lake, "2GiB")
    port = addrs["pg"].rsplit(":", 1)[1]
    out, failed = {}, []

    def client(i):
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user="c", dbname="tally", autocommit=True) as c:
                out[i] = c.execute(HEAVY).fetchall()
        except Exception as e:  # counted, not raised: the figure is how many fail
            failed.append(str(e).strip().splitlines()[0])

    try:
        t = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
        [th.start() for th in threads]
        [th.join() for th in threads]
        wall = time.perf_counter() - t
        hwm = vm_hwm_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    if failed:
        print("heavy burst failures (first):", failed[0], file=sys.stderr)
    return {"answered": len(out), "failed": len(failed), "wall": wall, "hwm": hwm,
            "alike": len({repr(v) for v in out.values()}) == 1}


def sixteen_clients(flight, psycopg, addrs, per_client):
    """16 concurrent clients (8 per wire), each running the aggregate `per_client` times;
    returns (queries answered, seconds)."""
    port = addrs["pg"].rsplit(":", 1)[1]
    done = []

    def client(i):
        if i % 2:
            with psycopg.connect(host="127.0.0.1", port=port, user="c", dbname="tally", autocommit=True) as c:
                for _ in range(per_client):
                    c.execute(AGG).fetchall()
                    done.append(1)
        else:
            with flight.connect(f"grpc://{addrs['flight-sql']}") as c:
                k = c.cursor()
                for _ in range(per_client):
                    k.execute(AGG)
                    k.fetchall()
                    done.append(1)

    t = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    return len(done), time.perf_counter() - t



def main():
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--lookups", type=int, default=200)
    p.add_argument("--aggregates", type=int, default=20)
    args = p.parse_args()
    tally = tally_bin()
    duckdb = ensure_duckdb()
    ensure_clients()
    import adbc_driver_flightsql.dbapi as flight
    import psycopg

    lake = WORK / "serve" / f"lake-{args.events}"
    if not (lake / "ledger").exists():
        run_timed([tally, "generate", "--lake", str(lake), "--days", "1", "--events-per-day",
                   str(args.events), "--seed", "5"])
        run_timed([tally, "ledger", "--lake", str(lake), "--date", DAY])
    files = f"{lake}/ledger/**/*.parquet"
    con = duckdb.connect()
    ledger_rows = con.execute(f"SELECT count(*) FROM read_parquet('{files}')").fetchone()[0]
    ids = [r[0] for r in con.execute(
        f"SELECT txn_id FROM read_parquet('{files}') USING SAMPLE {args.lookups} ROWS").fetchall()]
    random.Random(1).shuffle(ids)

    # The engine's own speed: no answer is kept between queries.
    proc, addrs = start_server(tally, lake, "2GiB", ["--result-cache", "0"])
    try:
        port = addrs["pg"].rsplit(":", 1)[1]
        fl = flight.connect(f"grpc://{addrs['flight-sql']}")
        pg = psycopg.connect(host="127.0.0.1", port=port, user="bench", dbname="tally", autocommit=True)
        res = {}

        def timed(fn, n):
            out = []
            for i in range(n):
                t = time.perf_counter()
                fn(i)
                out.append(time.perf_counter() - t)
            return out

        cur = fl.cursor()

        def fl_lookup(i):
            cur.execute(LOOKUP.format(p="?"), parameters=(ids[i],))
            assert len(cur.fetchall()) == 1

        def pg_lookup(i):
            assert len(pg.execute(LOOKUP.format(p="%s"), (ids[i],)).fetchall()) == 1

        def duck_lookup(i):
            assert len(con.execute(f"SELECT * FROM read_parquet('{files}') WHERE txn_id = ?", [ids[i]]).fetchall()) == 1

        def sql_lookup(i):
            out = subprocess.run([tally, "sql", "--lake", str(lake), "--format", "csv",
                                  LOOKUP.format(p=f"'{ids[i]}'")], check=True, capture_output=True, text=True).stdout
            assert len(out.strip().splitlines()) == 2

        fl_lookup(0), pg_lookup(0)  # warm the connections
        res["lookup flight"] = timed(fl_lookup, len(ids))
        res["lookup pg"] = timed(pg_lookup, len(ids))
        res["lookup duckdb"] = timed(duck_lookup, len(ids))
        res["lookup tally sql"] = timed(sql_lookup, min(10, len(ids)))

        want = None

        def fl_agg(_):
            nonlocal want
            cur.execute(AGG)
            rows = cur.fetchall()
            want = want or rows

        def pg_agg(_):
            pg.execute(AGG).fetchall()

        def duck_agg(_):
            con.execute(AGG.replace("FROM ledger", f"FROM read_parquet('{files}', hive_partitioning = true)")).fetchall()

        def sql_agg(_):
            subprocess.run([tally, "sql", "--lake", str(lake), "--format", "csv", AGG], check=True,
                           capture_output=True)

        res["agg flight"] = timed(fl_agg, args.aggregates)
        res["agg pg"] = timed(pg_agg, args.aggregates)
        res["agg duckdb"] = timed(duck_agg, args.aggregates)
        res["agg tally sql"] = timed(sql_agg, 5)

        n16, wall = sixteen_clients(flight, psycopg, addrs, 6)
        qps16 = n16 / wall
        qps_cli = 1 / statistics.median(res["agg tally sql"])

        # DuckDB in-process: 16 threads, one cursor each, on the same files.
        duck_done = []

        def duck_client(_):
            c = con.cursor()
            for _ in range(6):
                c.execute(AGG.replace("FROM ledger", f"FROM read_parquet('{files}', hive_partitioning = true)")).fetchall()
                duck_done.append(1)

        t = time.perf_counter()
        threads = [threading.Thread(target=duck_client, args=(i,)) for i in range(16)]
        [th.start() for th in threads]
        [th.join() for th in threads]
        duck_qps16 = len(duck_done) / (time.perf_counter() - t)

        # The same with point lookups (a dashboard's many small queries).
        looked = []

        def lookup_client(i):
            mine = ids[i::16] or ids[:1]
            if i % 2:
                with psycopg.connect(host="127.0.0.1", port=port, user="c", dbname="tally", autocommit=True) as c:
                    for txn in mine:
                        c.execute(LOOKUP.format(p="%s"), (txn,)).fetchall()
                        looked.append(1)
            else:
                with flight.connect(f"grpc://{addrs['flight-sql']}") as c:
                    k = c.cursor()
                    for txn in mine:
                        k.execute(LOOKUP.format(p="?"), parameters=(txn,))
                        k.fetchall()
                        looked.append(1)

        t = time.perf_counter()
        threads = [threading.Thread(target=lookup_client, args=(i,)) for i in range(16)]
        [th.start() for th in threads]
        [th.join() for th in threads]
        lwall = time.perf_counter() - t
        lqps16 = len(looked) / lwall
        lqps_cli = 1 / statistics.median(res["lookup tally sql"])
        hwm = vm_hwm_mib(proc.pid)
        cur.close()
        fl.close()
        pg.close()
    finally:
        proc.terminate()
        proc.wait()

    # The same clients on a server that keeps answers (the default): a dashboard's repeats.
    proc, addrs = start_server(tally, lake, "2GiB")
    try:
        port = addrs["pg"].rsplit(":", 1)[1]
        with psycopg.connect(host="127.0.0.1", port=port, user="c", dbname="tally", autocommit=True) as c:
            cached_lat = []
            for _ in range(args.aggregates):
                t = time.perf_counter()
                c.execute(AGG).fetchall()
                cached_lat.append(time.perf_counter() - t)
        cn16, cwall = sixteen_clients(flight, psycopg, addrs, 30)
        cqps16 = cn16 / cwall
    finally:
        proc.terminate()
        proc.wait()

    heavy = heavy_burst(tally, psycopg)

    lines = [
        f"Machine: {machine()}. One generated day: {ledger_rows} ledger rows. Server: `tally serve --memory-limit 2GiB --result-cache 0` (engine speed) and a second with the default result cache;",
        "clients: ADBC Flight SQL (prepared statement, `?`), psycopg 3 (extended protocol, `%s`), DuckDB in-process on",
        "the ledger's Parquet files, and one fresh `tally sql` process per query. Latency p50 / p95 in ms.",
        "",
        "| query | Flight SQL | Postgres wire | DuckDB in-process | fresh `tally sql` |",
        "|---|---|---|---|---|",
        f"| point lookup by txn_id ({len(ids)} ids) | {ms(res['lookup flight'])} | {ms(res['lookup pg'])} | {ms(res['lookup duckdb'])} | {ms(res['lookup tally sql'])} |",
        f"| per-partner aggregate of the day ({args.aggregates} runs) | {ms(res['agg flight'])} | {ms(res['agg pg'])} | {ms(res['agg duckdb'])} | {ms(res['agg tally sql'])} |",
        "",
        f"- aggregate, median: Flight SQL / DuckDB = {statistics.median(res['agg flight']) / statistics.median(res['agg duckdb']):.2f}, "
        f"Postgres wire / DuckDB = {statistics.median(res['agg pg']) / statistics.median(res['agg duckdb']):.2f} (target ≤ 1.2)",
        f"- 16 concurrent clients, no result cache (`--result-cache 0`): {n16} aggregates in {wall:.1f} s = {qps16:.2f} queries/s; "
        f"one fresh `tally sql` per query: {qps_cli:.2f} queries/s, ratio {qps16 / qps_cli:.1f}×; DuckDB in-process, "
        f"16 threads: {duck_qps16:.2f} queries/s, ratio {qps16 / duck_qps16:.2f}",
        f"- 16 concurrent clients with the result cache (default `--result-cache 64MiB`, the ledger unchanged): {cn16} "
        f"aggregates in {cwall:.1f} s = {cqps16:.1f} queries/s, {cqps16 / qps_cli:.0f}× a fresh `tally sql` per query "
        f"(target ≥ 10×); one client's repeated aggregate p50 / p95 {ms(cached_lat)} ms (the first of them ran)",
        f"- 16 concurrent clients, point lookups: {len(looked)} in {lwall:.1f} s = {lqps16:.1f} queries/s; one fresh "
        f"`tally sql` per lookup: {lqps_cli:.1f} queries/s; ratio {lqps16 / lqps_cli:.1f}×",
        f"- server peak RSS (VmHWM) over the whole run: {hwm:.0f} MiB (target ≤ 2048 + 512 MiB)",
        f"- point lookup p95: Flight SQL {pct(res['lookup flight'], 0.95) * 1000:.1f} ms, Postgres wire "
        f"{pct(res['lookup pg'], 0.95) * 1000:.1f} ms (target ≤ 30 ms)",
        f"- 64 concurrent heavy queries (`{HEAVY}` over {HEAVY_EVENTS} raw events, a second server with "
        f"`--memory-limit 2GiB`): {heavy['answered']}/64 answered, {heavy['failed']} failed, all alike: "
        f"{heavy['alike']}, in {heavy['wall']:.1f} s; server peak RSS {heavy['hwm']:.0f} MiB (target: 64/64, ≤ 2560 MiB)",
    ]
    body = "Command: `bench/serve.py" + (f" --events {args.events}" if args.events != 10_000_000 else "") + "`\n\n" + "\n".join(lines)
    print(body)
    write_section("serve: Flight SQL and Postgres wire", body)


if __name__ == "__main__":
    main()
