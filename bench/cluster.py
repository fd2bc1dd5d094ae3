#!/usr/bin/env python3
"""Scale-out overhead: the same SQL locally and on 2 `tally worker` processes of this machine.

Both workers run beside the caller on the same cores, so this measures what distribution
costs (planning into stages, Arrow Flight transfers, the extra hops), not a speed-up. The lake
is one shape of `bench/ledger.py` (raw Parquet written by DuckDB) plus its ledger day.

    python3 bench/cluster.py [--events 10000000] [--runs 3]

Reports, per query: wall time of a fresh `tally sql` locally and with `--workers`, the ratio,
the workers' tasks, and each process's peak RSS.
"""

import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import WORK, machine, run_timed, tally_bin, vm_hwm_mib, wait_listening, write_section  # noqa: E402

DAY = "2026-11-01"
QUERIES = {
    "per-partner sum of the raw day": "SELECT partner_id, count(*) AS n, sum(amount) AS total "
    "FROM raw_payments GROUP BY partner_id ORDER BY partner_id",
    "distinct txn_id of the raw day (shuffle of every id)": "SELECT count(DISTINCT txn_id) FROM raw_payments",
    "per-currency sum of the ledger day": "SELECT currency, count(*), sum(amount) FROM ledger "
    "GROUP BY currency ORDER BY currency",
}


def start_worker(tally, lake):
    proc = subprocess.Popen(
        [tally, "worker", "--lake", str(lake), "--bind", "127.0.0.1:0", "--metrics", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, wait_listening(proc, 2, "tally worker")


def tasks(addrs):
    text = urllib.request.urlopen(f"http://{addrs['metrics']}/metrics").read().decode()
    m = re.search(r"^tally_worker_tasks_total (\S+)", text, re.M)
    return int(float(m.group(1))) if m else 0



def main():
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    lake = WORK / "shapes" / f"large-snappy-{args.events}"
    if not (lake / "expected.json").exists():
        sys.exit(f"no lake at {lake}: run `python3 bench/ledger.py --shapes large-snappy --events {args.events}` first")
    tally = tally_bin()
    if not (lake / "ledger").exists():
        subprocess.run([tally, "ledger", "--date", DAY, "--lake", str(lake)], check=True, capture_output=True)
    raw_bytes = sum(f.stat().st_size for f in (lake / "raw").rglob("*.parquet"))

    workers = [start_worker(tally, lake) for _ in range(2)]
    listed = ",".join(a["worker"] for _, a in workers)
    rows = []
    try:
        for name, sql in QUERIES.items():
            local, dist, outs = [], [], set()
            local_rss = dist_rss = 0.0
            before = [tasks(a) for _, a in workers]
            for _ in range(args.runs):
                env = dict(os.environ)
                env.pop("TALLY_WORKERS", None)
                secs, rss, out = run_timed([tally, "sql", "--lake", str(lake), "--format", "csv", sql], env=env)
                local.append(secs)
                local_rss = max(local_rss, rss)
                outs.add(out)
                secs, rss, out = run_timed(
                    [tally, "sql", "--lake", str(lake), "--format", "csv", "--workers", listed, sql], env=env)
                dist.append(secs)
                dist_rss = max(dist_rss, rss)
                outs.add(out)
            ran = [tasks(a) - b for (_, a), b in zip(workers, before)]
            rows.append((name, min(local), min(dist), ran, local_rss, dist_rss, len(outs) == 1))
        worker_rss = [vm_hwm_mib(p.pid) for p, _ in workers]
    finally:
        for proc, _ in workers:
            proc.terminate()
            proc.wait()

    lines = [
        f"Machine: {machine()}. Command: `python3 bench/cluster.py --events {args.events} --runs {args.runs}`.",
        f"Lake: `bench/work/shapes/large-snappy-{args.events}` ({args.events:,} transactions, "
        f"{raw_bytes / 2**20:.0f} MiB of raw Parquet) and its ledger day {DAY}. Two `tally worker` "
        "processes on this same 2-core machine, so the ratio is the cost of distributing, not a "
        "speed-up. Each query is a fresh `tally sql` process; best of the runs.",
        "",
        "| query | local | 2 workers | workers / local | tasks per worker | caller peak RSS local / with workers | same answer |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, l, d, ran, lr, dr, same in rows:
        lines.append(f"| {name} | {l:.2f} s | {d:.2f} s | **{d / l:.2f}** | {ran[0]} / {ran[1]} | "
                     f"{lr:.0f} / {dr:.0f} MiB | {same} |")
    lines.append("")
    lines.append(f"Worker peak RSS: {worker_rss[0]:.0f} MiB and {worker_rss[1]:.0f} MiB. "
                 "Bytes shuffled between processes are not measured yet (datafusion-distributed's "
                 "metrics are not exported by tally).")
    write_section("cluster: SQL locally and on 2 workers of one machine", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
