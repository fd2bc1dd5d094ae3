"""bench/vacuum.py: `tally vacuum` on a year-old lake, against deltalake-python's vacuum.

A year of ledger days (`tally generate` + `tally backfill`, --buckets 16: 17 files a day),
then `--reruns` days built again (their first files replaced) and `--killed` runs killed
after writing their part files (their orphans backdated by 8 days, as a crash a week ago
leaves them). Measured on that lake, each a fresh process:
- `tally vacuum --dry-run` and `tally vacuum` with the default 7-day retention (the orphans
  go; the replaced files are too recent);
- then, on two copies of the lake, `tally vacuum --retain 0s` (every replaced file goes) and
  deltalake-python's `vacuum(retention_hours=0, full=True)` on each table tally vacuums;
- `tally sql "SELECT 1"` on the lake with three `tally.toml` Parquet tables (the start-up a
  command pays for its tables).

Usage: bench/vacuum.py [--days 365] [--events 200] [--reruns 30] [--killed 5]
"""

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time

from common import WORK, machine, run_timed, tally_bin, write_section

TABLES = ["ledger", "ledger_conflicts", "live_view", "live_late", "live_quarantine",
          "reconciliations", "runs", "alerts"]


def tally(bin_, lake_dir, *args, env=None):
    return subprocess.run([bin_, *args], cwd=lake_dir, check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}).stdout


def files_under(path):
    return sum(1 for p in path.rglob("*.parquet") if "_delta_log" not in p.parts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--events", type=int, default=200, help="transactions a day")
    ap.add_argument("--reruns", type=int, default=30, help="days built a second time")
    ap.add_argument("--killed", type=int, default=5, help="runs killed after their part files")
    args = ap.parse_args()
    bin_ = tally_bin()
    work = WORK / "vacuum"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = dt.date(2025, 11, 1)
    last = start + dt.timedelta(days=args.days - 1)

    t = time.perf_counter()
    tally(bin_, work, "generate", "--days", str(args.days), "--events-per-day", str(args.events),
          "--start", start.isoformat())
    tally(bin_, work, "backfill", "--from", start.isoformat(), "--to", last.isoformat(),
          "--progress", "json")
    for i in range(args.reruns):
        day = start + dt.timedelta(days=i * max(1, args.days // max(1, args.reruns)))
        tally(bin_, work, "ledger", "--date", day.isoformat())
    ledger = work / "lake" / "ledger"
    before_kill = {p for p in ledger.rglob("*.parquet")}
    for i in range(args.killed):
        day = last - dt.timedelta(days=i)
        subprocess.run([bin_, "ledger", "--date", day.isoformat()], cwd=work, capture_output=True,
                       env={**os.environ, "TALLY_FAILPOINT": "ledger_after_part_files"})
    week_ago = time.time() - 8 * 86400
    orphans = [p for p in ledger.rglob("*.parquet") if p not in before_kill]
    for p in orphans:
        os.utime(p, (week_ago, week_ago))
    # Three Parquet tables in tally.toml, for the start-up figure.
    raw = work / "lake" / "raw" / "payments"
    parts = sorted(raw.iterdir())
    (work / "tally.toml").write_text("".join(
        f'[tables.extra{i}]\nlocation = "{parts[i * 100]}"\nformat = "parquet"\n\n' for i in range(3)))
    setup_s = time.perf_counter() - t
    data_files = files_under(ledger) + files_under(work / "lake" / "ledger_conflicts")

    def vacuum(*extra, where=work):
        secs, rss, out = run_timed([bin_, "vacuum", "--format", "json", *extra], cwd=where)
        report = json.loads(out)
        return secs, sum(len(t["files"]) for t in report["tables"]), sum(t["bytes"] for t in report["tables"])

    dry = vacuum("--dry-run")
    week = vacuum()
    copies = {}
    for name in ("tally", "python"):
        copies[name] = work.parent / f"vacuum-{name}"
        shutil.rmtree(copies[name], ignore_errors=True)
        shutil.copytree(work, copies[name], symlinks=True)
    full = vacuum("--retain", "0s", where=copies["tally"])
    script = (
        "import os, sys, time\nfrom deltalake import DeltaTable\n"
        f"tables = {TABLES!r}\nlake = {str(copies['python'] / 'lake')!r}\n"
        "t = time.perf_counter(); n = 0\n"
        "for name in tables:\n"
        "    path = os.path.join(lake, name)\n"
        "    if os.path.isdir(os.path.join(path, '_delta_log')):\n"
        "        n += len(DeltaTable(path).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False, full=True))\n"
        "print(time.perf_counter() - t, n)\nsys.stdout.flush()\nos._exit(0)\n")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    py_wall = time.perf_counter() - t
    py_secs, py_files = out.split()
    select1 = min(run_timed([bin_, "sql", "SELECT 1"], cwd=work)[0] for _ in range(5))

    lines = [
        f"Machine: {machine()}. Command: `python3 bench/vacuum.py --days {args.days} --events {args.events} "
        f"--reruns {args.reruns} --killed {args.killed}`.",
        f"Lake: {args.days} ledger days ({data_files:,} ledger and conflicts data files, built in {setup_s:.0f} s), "
        f"{args.reruns} days rebuilt (their first files replaced), {args.killed} runs killed after writing "
        f"their part files ({len(orphans)} orphans, backdated 8 days). Fresh process each; deltalake-python "
        "1.6 in-process, timed around its vacuum calls (the wall time with its start-up in brackets).",
        "",
        "| run | time | data files deleted | bytes | target |",
        "|---|---|---|---|---|",
        f"| `tally vacuum --dry-run` (7 d) | {dry[0]:.2f} s | {dry[1]:,} (would be) | {dry[2]:,} | ≤ 10 s |",
        f"| `tally vacuum` (7 d: the killed runs' files) | {week[0]:.2f} s | {week[1]:,} | {week[2]:,} | ≤ 10 s |",
        f"| `tally vacuum --retain 0s` (a copy: every replaced file) | {full[0]:.2f} s | {full[1]:,} | {full[2]:,} | ≤ 10 s |",
        f"| deltalake-python `vacuum(retention_hours=0, full=True)`, each table (another copy) | {float(py_secs):.2f} s ({py_wall:.2f} s) | {int(py_files):,} | | |",
        f"| `tally sql \"SELECT 1\"` on this lake with three `tally.toml` Parquet tables (best of 5) | {select1:.2f} s | | | ≤ 0.3 s |",
        "",
        f"tally / deltalake-python, `--retain 0s`: {full[0] / float(py_secs):.2f} (tally's time includes its process start, "
        "the lease check and a dry-run plan before the deleting run).",
    ]
    write_section("vacuum: a year-old lake", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
