#!/usr/bin/env python3
"""bench/ledger_neighbours: the cost of "one day per transaction" on a 10M-transaction day.

Since a transaction belongs to the day of its winning copy, a ledger run of day D also reads
its neighbours' arrivals (D − 2 .. D + 1 + horizon) and looks D's ids up among them (a Bloom
filter of D's keys, evaluated on txn_id inside the Parquet scan). This measures what that costs
on the middle day of a 3-day lake (N transactions a day), against the same run of a tally
built before the change (`--before`, a `tally` binary of the previous commit), each in a fresh
process, on the same files, best of --runs. A one-day lake is timed too: there the neighbour
check finds nothing to read, so its figure is the floor of the change.
Writes its section of bench/RESULTS.md.

Usage: bench/ledger_neighbours.py --before PATH [--events N] [--runs N]
"""

import argparse
import json
import shutil

from common import WORK, machine, run_timed, tally_bin, write_section

DAY = "2026-11-02"


def ledger(tally, lake, day):
    shutil.rmtree(lake / "ledger", ignore_errors=True)
    shutil.rmtree(lake / "ledger_conflicts", ignore_errors=True)
    shutil.rmtree(lake / "runs", ignore_errors=True)
    secs, rss, out = run_timed([tally, "ledger", "--date", day, "--lake", str(lake), "--format", "json"])
    return secs, rss, json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--before", required=True, help="tally binary built before the neighbour check")
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    tally = tally_bin()
    lake = WORK / "neighbours" / f"3d-{args.events}"
    if not (lake / "raw").exists():
        shutil.rmtree(lake, ignore_errors=True)
        _, _, out = run_timed([tally, "generate", "--lake", str(lake), "--days", "3", "--events-per-day",
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
        f"Machine: {machine()}. Command: `python3 bench/ledger_neighbours.py --before <tally of the previous commit> --events {args.events} --runs {args.runs}`.",
        f"Middle day {DAY} of a generated 3-day lake, {args.events} transactions a day; best of {args.runs}, fresh process each.",
        f"After: {a['files_read']} files and {a['rows_read']} raw rows read (own window D − 1 .. D + 3 and the neighbours'), "
        f"{a['ledger_rows']} ledger rows, {a['ceded']} transactions left to a neighbouring day, {a['conflict_rows']} conflict rows.",
        f"Before: {summary['before']['rows_read']} raw rows read (D .. D + 3), {summary['before']['ledger_rows']} ledger rows.",
        "",
        "| run | time | peak RSS |",
        "|---|---|---|",
        f"| before (no neighbour check, window D .. D + 3) | {best['before'][0]:.2f} s | {best['before'][1]:.0f} MiB |",
        f"| after (window D − 1 .. D + 3, one day per transaction) | {best['after'][0]:.2f} s | {best['after'][1]:.0f} MiB |",
        "",
        "| ratio | value | target |",
        "|---|---|---|",
        f"| after / before | {ratio:.3f} | ≤ 1.10 |",
    ]
    write_section("ledger: cost of one day per transaction", "\n".join(lines))


if __name__ == "__main__":
    main()
