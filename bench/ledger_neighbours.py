#!/usr/bin/env python3
"""bench/ledger_neighbours: the cost of "one day per transaction" on a 10M-transaction day.

Since a transaction belongs to the day of its winning copy, a ledger run of day D also reads
the arrivals of the days within two of it (D − 3 .. D + 2 + horizon) and looks D's ids up
among them (a Bloom filter of D's keys, evaluated on txn_id inside the Parquet scan). This
measures what that costs on the middle day of a --days lake (N transactions a day), against
the same run of another tally (`--before`, e.g. a binary of the previous commit, described by
`--before-label`), each in a fresh process, on the same files, best of --runs.
Writes its section of bench/RESULTS.md.

Usage: bench/ledger_neighbours.py --before PATH [--before-label TEXT] [--days 5] [--events N] [--runs N]
"""

import argparse
import json
import shutil

from common import WORK, machine, run_timed, tally_bin, write_section

import datetime


def ledger(tally, lake, day):
    shutil.rmtree(lake / "ledger", ignore_errors=True)
    shutil.rmtree(lake / "ledger_conflicts", ignore_errors=True)
    shutil.rmtree(lake / "runs", ignore_errors=True)
    secs, rss, out = run_timed([tally, "ledger", "--date", day, "--lake", str(lake), "--format", "json"])
    return secs, rss, json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--before", required=True, help="tally binary built before the neighbour check")
    p.add_argument("--before-label", default="before (no neighbour check, window D .. D + 3)")
    p.add_argument("--days", type=int, default=5)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    tally = tally_bin()
    DAY = str(datetime.date(2026, 11, 1) + datetime.timedelta(days=args.days // 2))
    lake = WORK / "neighbours" / f"{args.days}d-{args.events}"
    if not (lake / "raw").exists():
        shutil.rmtree(lake, ignore_errors=True)
        _, _, out = run_timed([tally, "generate", "--lake", str(lake), "--days", str(args.days), "--events-per-day",
                               str(args.events), "--seed", "5"])
        print(out)
    runs = {"before": [], "after": []}
    summary = {}
    for _ in range(args.runs):
        for name, binary in (("before", args.before), ("after", tally)):
            secs, rss, s = ledger(binary, lake, DAY)
            runs[name].append((secs, rss))
            summary[name] = s
            print(name, f"{secs:.2f} s", f"{rss:.0f} MiB", s["ledger_rows"])
    best = {k: min(v) for k, v in runs.items()}
    ratio = best["after"][0] / best["before"][0]
    a = summary["after"]
    lines = [
        f"Machine: {machine()}. Command: `python3 bench/ledger_neighbours.py --before <{args.before_label}> --days {args.days} --events {args.events} --runs {args.runs}`.",
        f"Middle day {DAY} of a generated {args.days}-day lake, {args.events} transactions a day; best of {args.runs}, fresh process each.",
        f"After: {a['files_read']} files and {a['rows_read']} raw rows read (own window D − 1 .. D + 3 and those of D − 2 .. D + 2), "
        f"{a['ledger_rows']} ledger rows, {a['ceded']} transactions left to a neighbouring day, {a['conflict_rows']} conflict rows.",
        f"Before: {summary['before']['rows_read']} raw rows read, {summary['before']['ledger_rows']} ledger rows.",
        "",
        "| run | time | peak RSS |",
        "|---|---|---|",
        f"| {args.before_label} | {best['before'][0]:.2f} s | {best['before'][1]:.0f} MiB |",
        f"| after (copies of D − 2 .. D + 2 looked up) | {best['after'][0]:.2f} s | {best['after'][1]:.0f} MiB |",
        "",
        "| ratio | value | target |",
        "|---|---|---|",
        f"| after / before | {ratio:.3f} | ≤ 1.10 against no neighbour check |",
    ]
    write_section("ledger: cost of one day per transaction", "\n".join(lines))


if __name__ == "__main__":
    main()
