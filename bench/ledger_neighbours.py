#!/usr/bin/env python3
"""bench/ledger_neighbours: the cost of "one day per transaction" on a 10M-transaction day.

Since a transaction belongs to the day of its winning copy, a ledger run of day D also looks
D's ids up among the copies naming D − 2 .. D + 2 in the arrivals D − 3 .. D + 2 + horizon.
The lookup reads each raw file's key index (`_tally/key_index/`, built from the file's ids
by the first run that needs it) and then only the raw rows carrying one of D's keys.

This measures, on the middle day of a --days lake (N transactions a day), each run in a fresh
process, best of --runs:
- cold: no key index yet (removed before each run): the first run over these files;
- warm: the indexes the previous run left (a daily schedule finds all but the newest
  arrivals' indexes built by the days before);
and, from the run's own info log, the seconds between the main plan's end and the end of the
lookup: the check's share of the day is total / (total − lookup), against no check at all.
With `--before PATH` the same run of another tally binary is measured too.
Writes its section of bench/RESULTS.md.

Usage: bench/ledger_neighbours.py [--before PATH --before-label TEXT] [--days 5] [--events N] [--runs N]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import threading
import time

from common import WORK, machine, tally_bin, write_section

import datetime


def rss_of(cmd):
    """(seconds, peak RSS MiB of that child, stdout, stderr) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = {}
    readers = [threading.Thread(target=lambda n=n, f=f: outs.__setitem__(n, f.read()))
               for n, f in (("out", proc.stdout), ("err", proc.stderr))]
    for t in readers:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - start
    for t in readers:
        t.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {outs['err']}")
    return secs, usage.ru_maxrss / 1024.0, outs["out"], outs["err"]


def secs_at(log, message):
    """The `secs` field of the log line with `message`."""
    for line in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines():
        if message in line:
            m = re.search(r"secs=([0-9.]+)", line)
            if m:
                return float(m.group(1))
    raise RuntimeError(f"no '{message}' line in the log:\n{log}")


def ledger(tally, lake, day, cold):
    shutil.rmtree(lake / "ledger", ignore_errors=True)
    shutil.rmtree(lake / "ledger_conflicts", ignore_errors=True)
    shutil.rmtree(lake / "runs", ignore_errors=True)
    if cold:
        shutil.rmtree(lake / "_tally", ignore_errors=True)
    env_cmd = ["env", "RUST_LOG=tally_engine=info", tally, "ledger", "--date", day, "--lake", str(lake),
               "--format", "json"]
    secs, rss, out, err = rss_of(env_cmd)
    summary = json.loads(out.strip().splitlines()[-1])
    try:
        lookup = secs_at(err, "neighbours looked up") - secs_at(err, "main plan collected")
    except RuntimeError:
        lookup = None  # an older binary without these log lines
    return secs, rss, lookup, summary


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--before", help="another tally binary to measure the same way")
    p.add_argument("--before-label", default="before")
    p.add_argument("--days", type=int, default=5)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    tally = tally_bin()
    DAY = str(datetime.date(2026, 11, 1) + datetime.timedelta(days=args.days // 2))
    lake = WORK / "neighbours" / f"{args.days}d-{args.events}"
    if not (lake / "raw").exists():
        shutil.rmtree(lake, ignore_errors=True)
        subprocess.run([tally, "generate", "--lake", str(lake), "--days", str(args.days), "--events-per-day",
                        str(args.events), "--seed", "5"], check=True)
    variants = [("cold", tally, True), ("warm", tally, False)]
    if args.before:
        variants.append((args.before_label, args.before, False))
    runs = {name: [] for name, _, _ in variants}
    summary = {}
    for _ in range(args.runs):
        for name, binary, cold in variants:
            secs, rss, lookup, s = ledger(binary, lake, DAY, cold)
            runs[name].append((secs, rss, lookup))
            summary[name] = s
            print(name, f"{secs:.2f} s", f"{rss:.0f} MiB", f"lookup {lookup}", s["ledger_rows"])
    fps = {json.dumps(s["fingerprint"], sort_keys=True) for s in summary.values()}
    best = {k: min(v, key=lambda r: r[0]) for k, v in runs.items()}
    a = summary["warm"]
    lines = [
        f"Machine: {machine()}. Command: `python3 bench/ledger_neighbours.py --days {args.days} --events {args.events} --runs {args.runs}"
        + (f" --before <{args.before_label}>" if args.before else "") + "`.",
        f"Middle day {DAY} of a generated {args.days}-day lake, {args.events} transactions a day; best of {args.runs}, fresh process each.",
        f"{a['files_read']} files and {a['rows_read']} raw rows in the read window (own window D − 1 .. D + 3 and those of D − 2 .. D + 2), "
        f"{a['ledger_rows']} ledger rows, {a['ceded']} transactions left to a neighbouring day, {a['conflict_rows']} conflict rows. "
        f"Same fingerprint in every run: {len(fps) == 1}.",
        "Lookup: from the end of the main plan to the end of the neighbour lookup (the run's info log); "
        "share = total / (total − lookup), the day with the check against the day without it.",
        "",
        "| run | time | lookup | share | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for name, _, _ in variants:
        secs, rss, lookup = best[name]
        label = {"cold": "cold (no key index: built from the raw ids)", "warm": "warm (key indexes of the earlier run)"}.get(name, name)
        if lookup is None:
            lines.append(f"| {label} | {secs:.2f} s | – | – | {rss:.0f} MiB |")
        else:
            lines.append(f"| {label} | {secs:.2f} s | {lookup:.2f} s | {secs / (secs - lookup):.3f} | {rss:.0f} MiB |")
    w = best["warm"]
    lines += [
        "",
        "| ratio | value | target |",
        "|---|---|---|",
        f"| warm: with the check / without it | {w[0] / (w[0] - w[2]):.3f} | ≤ 1.10 |",
    ]
    write_section("ledger: cost of one day per transaction", "\n".join(lines))


if __name__ == "__main__":
    main()
