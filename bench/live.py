#!/usr/bin/env python3
"""bench/live: sustained throughput and freshness of `tally live --interval 1s`.

A lander (this script, pyarrow only) writes one raw Parquet file per second at a set event
rate into today's `ingest_date` partition — Zipf-skewed partners, ~2% errors, 3% webhook retries
of the previous second's transactions — each written to a hidden temp name and renamed, as a
real landing job does. `tally live --interval 1s --format json` follows the lake; every batch
line it prints names its files and commit time, so each file's freshness is
(commit that made it visible in live_view) - (moment it landed). Peak RSS of the tally process
is sampled every second. Reference: DuckDB computing the same per-minute, per-partner aggregate
(no dedup state) on the same landed files, one file at a time. Writes bench/RESULTS.md.

With `--serve`, the loop runs inside `tally serve --live` with an alert webhook (a receiver in
this script): every 20 s the lander adds a minute of failing traffic for a new partner
(`partner-bad-NN`, 200 declined events), and the time from that file landing to its `firing`
webhook arriving is the alert latency. From half-way on, a poller reads `/api/live` and
`/metrics` every second as an open dashboard and a Prometheus scrape would: their latencies,
and the batch times before and while they poll.

Usage: bench/live.py [--rate 200000] [--duration 300] [--serve]
"""

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import WORK, ensure_duckdb, machine, tally_bin, write_section

PARTNERS = 300


MARKS = (60, 300, 600, 900, 1200, 1500, 1800, 2400, 3000, 3600)


def newest_checkpoint_bytes(lake):
    """Size of the newest live checkpoint (0 before the first)."""
    cps = sorted((lake / "live_view" / "_tally_live").glob("checkpoint-*.json"))
    try:
        return cps[-1].stat().st_size if cps else 0
    except FileNotFoundError:  # replaced between the listing and the stat
        return 0


def partner_column(n, seed=7):
    rnd = random.Random(seed)
    weights = [1.0 / (k ** 1.2) for k in range(1, PARTNERS + 1)]
    names = [f"partner-{k:04d}" for k in range(PARTNERS)]
    return pa.array(rnd.choices(names, weights=weights, k=2 * n))


class Lander:
    """Writes one file per tick: `rate` fresh events plus 3% retries of the previous file."""

    def __init__(self, lake, rate):
        self.rate = rate
        self.partners = partner_column(rate)
        self.seq = 0
        self.prev = None
        self.landed = {}  # relative path -> landing time (s since epoch)
        self.lake = lake
        self.bad = {}  # failing partner -> landing time of its failing minute

    def table(self, now):
        n = self.rate
        start = self.seq
        self.seq += n
        ids = pa.array(range(start, start + n), pa.int64())
        txn = pc.binary_join_element_wise("t-", pc.cast(ids, pa.string()), "")
        now_us = int(now * 1_000_000)
        # Events happened up to 2 s before landing.
        jitter = pc.multiply(pc.bit_wise_and(pc.multiply(ids, 7919), 0x1FFFFF), 1)
        event = pc.cast(pc.subtract(pa.scalar(now_us, pa.int64()), jitter), pa.timestamp("us", tz="UTC"))
        ingest = pa.array([now_us] * n, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        off = start % n
        partner = self.partners.slice(off, n)
        cents = pc.add(pc.bit_wise_and(pc.multiply(ids, 2654435761), 0xFFFF), 100)
        cents_dec = pc.cast(cents, pa.decimal128(19, 0))
        amount = pc.cast(pc.multiply(cents_dec, pa.scalar(__import__("decimal").Decimal("0.01"), pa.decimal128(3, 2))),
                         pa.decimal128(18, 2))
        status = pc.if_else(pc.equal(pc.bit_wise_and(ids, 63), 5), "declined", "ok")
        currency = pa.array(["EUR"] * n)
        t = pa.table({"txn_id": txn, "partner_id": partner, "event_time": event, "ingest_time": ingest,
                      "amount": amount, "currency": currency, "status": status})
        if self.prev is not None:
            retries = self.prev.slice(0, n * 3 // 100)
            retries = retries.set_column(3, "ingest_time", pa.array([now_us] * retries.num_rows, pa.int64()).cast(pa.timestamp("us", tz="UTC")))
            t = pa.concat_tables([t, retries])
        self.prev = t.slice(0, n)
        return t

    def failing(self, now, partner, n=200):
        """`n` declined events of `partner` at `now`: one failing minute."""
        now_us = int(now * 1_000_000)
        ts = pa.array([now_us] * n, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        return pa.table({
            "txn_id": pa.array([f"{partner}-{j}" for j in range(n)]),
            "partner_id": pa.array([partner] * n),
            "event_time": ts, "ingest_time": ts,
            "amount": pa.array([__import__("decimal").Decimal("1.00")] * n, pa.decimal128(18, 2)),
            "currency": pa.array(["EUR"] * n),
            "status": pa.array(["declined"] * n),
        })

    def land(self, i, bad=None):
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        d = self.lake / "raw" / "payments" / f"ingest_date={day}"
        d.mkdir(parents=True, exist_ok=True)
        t = self.table(now)
        if bad:
            t = pa.concat_tables([t, self.failing(now, bad).cast(t.schema)])
        name = f"land-{i:06d}.parquet"
        tmp = d / f".{name}.tmp"
        pq.write_table(t, tmp, compression="zstd")
        os.rename(tmp, d / name)
        self.landed[f"raw/payments/ingest_date={day}/{name}"] = time.time()
        if bad:
            self.bad[bad] = time.time()
        return t.num_rows


def rss_mib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def read_time(tally, lake):
    """Best of 3 wall times of reading live_view through a fresh `tally sql` process."""
    best = None
    for _ in range(3):
        s = time.perf_counter()
        subprocess.run([tally, "sql", "SELECT count(*), sum(events) FROM live_view", "--lake", str(lake)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        d = time.perf_counter() - s
        best = d if best is None else min(best, d)
    return best


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=200_000, help="fresh events per second")
    ap.add_argument("--duration", type=int, default=300, help="seconds of landing")
    ap.add_argument("--serve", action="store_true",
                    help="run the loop in `tally serve --live` with alerts and a polled dashboard")
    ap.add_argument("--restart", action="store_true",
                    help="kill -9 after a full dedup TTL and time the restart (bench/live_restart.py)")
    ap.add_argument("--ttl", type=int, default=600, help="with --restart: the dedup TTL in seconds")
    ap.add_argument("--s3", action="store_true",
                    help="with --restart: the lake in a bucket on the S3 test server (moto)")
    args = ap.parse_args()
    if args.restart:
        import live_restart
        return live_restart.run(args, Lander)
    tally = tally_bin()
    duckdb = ensure_duckdb()
    lake = WORK / "live" / "lake"
    shutil.rmtree(lake.parent, ignore_errors=True)
    lake.mkdir(parents=True)
    lander = Lander(lake, args.rate)
    lander.land(0)  # the raw directory exists before tally starts

    hooks = []  # (arrival time, alert body)

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hooks.append((time.time(), json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    if args.serve:
        receiver = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        cmd = [tally, "serve", "--live", "--interval", "1s", "--format", "json", "--lake", str(lake),
               "--http", "127.0.0.1:0", "--flight-sql", "off", "--pg", "off",
               "--alert-webhook", f"http://127.0.0.1:{receiver.server_address[1]}/hook",
               "--alert-error-rate", "0.5", "--alert-min-events", "50"]
    else:
        cmd = [tally, "live", "--interval", "1s", "--format", "json", "--lake", str(lake)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    batches = []
    http = {}

    def read_batches():
        for line in proc.stdout:
            if line.startswith("listening "):
                _, name, addr = line.split()
                http[name] = addr
                continue
            d = json.loads(line)
            if "batch" in d:
                d["seen_at"] = time.time()
                batches.append(d)

    reader = threading.Thread(target=read_batches, daemon=True)
    reader.start()
    rss = []
    cp_at = []  # (seconds since start, bytes of the newest checkpoint)
    landed_rows = 0
    t0 = time.time()
    i = 1
    read_early = None
    polls = {"/api/live": [], "/metrics": []}
    poll_from = t0 + args.duration / 2
    stop_polling = threading.Event()

    def poll():
        # An open dashboard (refreshing /api/live every second) and a Prometheus scrape.
        while time.time() < poll_from and not stop_polling.is_set():
            time.sleep(0.2)
        while not stop_polling.is_set():
            for path, xs in polls.items():
                s = time.perf_counter()
                with urllib.request.urlopen(f"http://{http['http']}{path}", timeout=10) as r:
                    r.read()
                xs.append(time.perf_counter() - s)
            time.sleep(1)

    if args.serve:
        threading.Thread(target=poll, daemon=True).start()
    while time.time() - t0 < args.duration:
        tick = t0 + i
        if read_early is None and time.time() - t0 >= 60:
            read_early = read_time(tally, lake)
        bad = f"partner-bad-{i // 20:02d}" if args.serve and i % 20 == 15 else None
        landed_rows += lander.land(i, bad)
        rss.append((time.time() - t0, rss_mib(proc.pid)))
        # The first tick at or past each mark.
        if len(cp_at) < len(MARKS) and time.time() - t0 >= MARKS[len(cp_at)]:
            cp_at.append((time.time() - t0, newest_checkpoint_bytes(lake)))
        i += 1
        time.sleep(max(0.0, tick - time.time()))
    land_end = time.time()
    read_late = read_time(tally, lake)
    log_files = len(list((lake / "live_view" / "_delta_log").glob("*.json")))
    versions = max(b["batch"] for b in batches) if batches else 0
    # Wait for everything landed to be committed.
    deadline = time.time() + 60
    while time.time() < deadline:
        seen = {p for b in batches for p in b["paths"]}
        if all(p in seen for p in lander.landed):
            break
        time.sleep(0.5)
    # The last failing minute's alert, if it is on its way.
    deadline = time.time() + 10
    while args.serve and time.time() < deadline and len({b["partner_id"] for _, b in hooks}) < len(lander.bad):
        time.sleep(0.2)
    stop_polling.set()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    reader.join(timeout=5)

    committed_at = {}
    for b in batches:
        for p in b["paths"]:
            committed_at[p] = b["committed_at_ms"] / 1000.0
    fresh = [committed_at[p] - t for p, t in lander.landed.items() if p in committed_at]
    missing = [p for p in lander.landed if p not in committed_at]
    last_commit = max(committed_at.values())
    rows = sum(b["rows"] for b in batches)
    sustained = rows / (last_commit - t0)
    batch_ms = [b["batch_ms"] for b in batches if b["rows"]]
    capacity = rows / (sum(batch_ms) / 1000.0)
    marks = [t for t in MARKS if t <= args.duration]
    rss_at = ", ".join(f"{t // 60} min {min(rss, key=lambda x: abs(x[0] - t))[1]:.0f}" for t in marks)
    minute1 = [r for t, r in rss if t <= 60]
    last_min = [r for t, r in rss if t >= args.duration - 60]
    peak = max(r for _, r in rss)

    # The newest checkpoint: it tracks every file taken inside the horizon (issue 34), so its
    # size grows with the files landed in the followed partitions, not with uptime.
    cp_bytes = newest_checkpoint_bytes(lake)
    cp_files = len(lander.landed)
    first_min_ms = [b["batch_ms"] for b in batches if b["rows"] and b["seen_at"] - t0 <= 60]
    last_min_ms = [b["batch_ms"] for b in batches if b["rows"] and land_end - b["seen_at"] <= 60]
    def cp_writes(sel):
        picked = [b for b in batches if sel(b)] or batches
        return ([b.get("checkpoint_bytes", 0) for b in picked], [b.get("checkpoint_us", 0) / 1000 for b in picked])
    cp_first = cp_writes(lambda b: b["seen_at"] - t0 <= 60)
    cp_last = cp_writes(lambda b: land_end - b["seen_at"] <= 60)
    fresh_last = [committed_at[p] - t for p, t in lander.landed.items()
                  if p in committed_at and land_end - t <= 60]

    # DuckDB: the same per-batch aggregate over the same files, one file per query.
    con = duckdb.connect()
    files = sorted(lander.landed)[:60]
    dts = []
    for f in files:
        s = time.perf_counter()
        con.sql(f"""SELECT date_trunc('minute', event_time) AS w, partner_id, count(*),
                count(*) FILTER (WHERE coalesce(status, '') <> 'ok'), sum(amount)
                FROM read_parquet('{lake / f}') GROUP BY ALL""").to_arrow_table()
        dts.append((time.perf_counter() - s) * 1000)
    per_file_rows = args.rate * 103 // 100
    duck_ms = statistics.median(dts)

    lines = [
        f"Machine: {machine()}. Command: `python3 bench/live.py --rate {args.rate} --duration {args.duration}`.",
        f"The lander wrote {len(lander.landed)} files ({landed_rows:,} raw rows: {args.rate:,} fresh events/s plus 3% retries) "
        f"over {land_end - t0:.0f} s, one file per second, while `tally live --interval 1s` ran beside it on the same 2 cores.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| sustained raw rows/s applied (rows committed / time to last commit) | {sustained:,.0f} | ≥ 200,000 |",
        f"| capacity: raw rows / time spent in batches | {capacity:,.0f} rows/s | |",
        f"| freshness p50 (file landed → committed in live_view) | {statistics.median(fresh):.2f} s | |",
        f"| freshness p95 | {pct(fresh, 95):.2f} s | ≤ 1.5 s |",
        f"| freshness max | {max(fresh):.2f} s | |",
        f"| files never committed | {len(missing)} | 0 |",
        f"| batches | {len(batches)} (median {statistics.median(batch_ms):.0f} ms, p95 {pct(batch_ms, 95):.0f} ms per batch with rows) | |",
        f"| batch median / p95: first minute, last minute | {statistics.median(first_min_ms):.0f} / {pct(first_min_ms, 95):.0f} ms, {statistics.median(last_min_ms):.0f} / {pct(last_min_ms, 95):.0f} ms | flat |",
        f"| freshness p95 in the last minute | {pct(fresh_last, 95):.2f} s | ≤ 1.5 s |",
        f"| checkpoint bytes over the run | {', '.join(f'{t / 60:.0f} min {b / 1024:,.0f} KiB' for t, b in cp_at)} | bounded by the horizon |",
        f"| checkpoint write per batch, first minute / last minute: median bytes, median and p95 ms | "
        f"{statistics.median(cp_first[0]):,.0f} B, {statistics.median(cp_first[1]):.1f} / {pct(cp_first[1], 95):.1f} ms; "
        f"{statistics.median(cp_last[0]):,.0f} B, {statistics.median(cp_last[1]):.1f} / {pct(cp_last[1], 95):.1f} ms "
        f"(a delta a batch, the whole state every 60th: largest {max(b.get('checkpoint_bytes', 0) for b in batches) / 1024:,.0f} KiB) | flat |",
        f"| tally RSS: first minute avg / last minute avg / peak | {statistics.mean(minute1):.0f} / {statistics.mean(last_min):.0f} / {peak:.0f} MiB | flat |",
        f"| tally RSS over the run (MiB) | {rss_at} | |",
        f"| reading live_view (`tally sql`, fresh process): after 1 min / at the end | {read_early or 0:.2f} s / {read_late:.2f} s | as fast after a day as after a minute |",
        f"| live_view Delta log at the end | {log_files} commit files kept for {versions} batches (roll-up every 60 batches, checkpoint every 100 commits, 1 h log retention) | |",
        f"| dedup state at the end | {batches[-1]['state_keys']:,} keys, ~{batches[-1]['state_bytes'] / 2**20:.0f} MiB | |",
        f"| newest checkpoint file at the end (a delta; the whole state, tracking {cp_files} files taken, is written every 60th batch) | {cp_bytes / 1024:,.0f} KiB | proportional to the batch |",
        "",
        f"Reference: DuckDB {duckdb.__version__} running the same per-minute, per-partner aggregate on one landed file "
        f"({per_file_rows:,} rows, no dedup, in-process, median of {len(files)} files): {duck_ms:.0f} ms per file, "
        f"{per_file_rows / duck_ms * 1000:,.0f} rows/s. tally's median batch (read, dedup, aggregate, checkpoint, two Delta "
        f"commits): {statistics.median(batch_ms):.0f} ms.",
    ]
    if args.serve:
        fired = {}
        for at, body in hooks:
            if body.get("state") == "firing" and body.get("partner_id") in lander.bad:
                fired.setdefault(body["partner_id"], at)
        latency = [fired[p] - t for p, t in lander.bad.items() if p in fired]
        unfired = [p for p in lander.bad if p not in fired]
        others = [b["partner_id"] for _, b in hooks if b.get("partner_id") not in lander.bad]
        before = [b["batch_ms"] for b in batches if b["rows"] and b["seen_at"] < poll_from]
        during = [b["batch_ms"] for b in batches if b["rows"] and b["seen_at"] >= poll_from + 1]
        fresh_during = [committed_at[p] - t for p, t in lander.landed.items()
                        if p in committed_at and t >= poll_from + 1]

        def p50_95(xs, scale=1000.0, digits=0):
            if not xs:
                return "n/a"
            return f"{statistics.median(xs) * scale:.{digits}f} / {pct(xs, 95) * scale:.{digits}f}"

        lines[0] = lines[0].replace("bench/live.py --rate", "bench/live.py --serve --rate")
        lines[1] = lines[1].replace("while `tally live --interval 1s` ran", "while `tally serve --live --interval 1s` (alert webhook to this script) ran")
        lines += [
            "",
            f"Alerts and the dashboard (`--alert-error-rate 0.5 --alert-min-events 50`; every 20 s a new partner's minute "
            f"of 200 declined events lands; from {args.duration // 2} s on, `/api/live` and `/metrics` are read every second):",
            "",
            "| figure | value | target |",
            "|---|---|---|",
            f"| alert latency p50 / p95 (failing file landed → `firing` webhook received), {len(latency)} episodes | "
            f"{p50_95(latency, 1.0, 2).replace(' / ', ' s / ')} s | p95 ≤ 2 s |",
            f"| failing minutes with no alert / alerts for healthy partners | {len(unfired)} / {len(others)} | 0 / 0 |",
            f"| `/api/live` p50 / p95 ({len(polls['/api/live'])} reads) | {p50_95(polls['/api/live'])} ms | p95 ≤ 100 ms |",
            f"| `/metrics` scrape p50 / p95 | {p50_95(polls['/metrics'])} ms | ≤ 20 ms |",
            f"| batch time p50 / p95 before the dashboard opened / while it polls | {p50_95(before, 1.0)} ms / {p50_95(during, 1.0)} ms | |",
            f"| freshness p95 while the dashboard polls | {pct(fresh_during, 95) if fresh_during else 0:.2f} s | ≤ 1.5 s |",
        ]
        title = f"live in serve --live: {args.rate:,} events/s for {args.duration} s, alerts and dashboard"
    else:
        title = f"live: {args.rate:,} events/s for {args.duration} s"
    write_section(title, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
