"""bench/live.py --restart: how fast `tally live` is back after kill -9 with a full dedup TTL.

The lander writes one file a second (`--rate` fresh events plus 3% retries) while `tally live
--interval 1s` follows it. After the TTL plus a minute (the dedup state full: ~120M keys at
200k events/s with the default 10-minute TTL) the process is killed with SIGKILL and started
again at once, the lander going on; the figure is the time from the kill to the restarted
process's first committed batch, with what its recovery did (snapshot keys loaded, raw files
re-read). Then the same again with the snapshot parts deleted first: the full rebuild from the
raw files that a restart did before snapshots (and still does when a snapshot is unusable).
"""

import json
import os
import shutil
import signal
import subprocess
import threading
import time

from common import WORK, machine, tally_bin, write_section


def dir_bytes(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


class Live:
    """One `tally live` process: its batch lines and its `live: recovered` log line."""

    def __init__(self, tally, lake, log, ttl):
        self.proc = subprocess.Popen(
            [tally, "live", "--interval", "1s", "--format", "json", "--lake", str(lake),
             "--dedup-ttl", f"{ttl}s"],
            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
            env={**os.environ, "RUST_LOG": "tally_engine::live=info", "NO_COLOR": "1"})
        self.log = log
        self.batches = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            d = json.loads(line)
            if "batch" in d:
                d["seen_at"] = time.time()
                self.batches.append(d)

    def recovered(self):
        for line in open(self.log):
            if "live: recovered" in line:
                fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                return fields
        return None

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def run(args, lander_cls):
    tally = tally_bin()
    lake = WORK / "live-restart" / "lake"
    shutil.rmtree(lake.parent, ignore_errors=True)
    lake.mkdir(parents=True)
    lander = lander_cls(lake, args.rate)
    lander.land(0)
    i = 1
    t0 = time.time()

    def land_until(t_end):
        nonlocal i
        while time.time() < t_end:
            tick = t0 + i
            lander.land(i)
            i += 1
            time.sleep(max(0.0, tick - time.time()))

    live = Live(tally, lake, lake.parent / "live-1.log", args.ttl)
    land_until(t0 + args.ttl + 60)
    keys_before = live.batches[-1]["state_keys"]
    runs = []
    for name, drop_snapshot in (("with the snapshot", False), ("snapshot deleted (full rebuild)", True)):
        live.kill()
        killed = time.time()
        snap_dir = lake / "live_view" / "_tally_live" / "keys"
        snap_bytes = dir_bytes(snap_dir)
        if drop_snapshot:
            shutil.rmtree(snap_dir, ignore_errors=True)
        live = Live(tally, lake, lake.parent / f"live-{len(runs) + 2}.log", args.ttl)
        # Keep landing until the restarted process has committed a batch.
        while not live.batches and time.time() - killed < 600:
            land_until(time.time() + 1)
        first = live.batches[0]["seen_at"] - killed if live.batches else float("nan")
        rec = live.recovered() or {}
        runs.append((name, first, rec, snap_bytes))
        land_until(time.time() + 30)

    live.kill()
    lines = [
        f"Machine: {machine()}. Command: `python3 bench/live.py --restart --rate {args.rate} --ttl {args.ttl}`.",
        f"One file a second ({args.rate:,} fresh events plus 3% retries) for {args.ttl + 60} s, the dedup state "
        f"then holding {keys_before:,} keys ({args.ttl} s TTL), then `kill -9` and a restart at once, the "
        "lander going on. Time from the kill to the restarted process's first committed batch:",
        "",
        "| restart | kill → first batch | recovery | snapshot keys loaded | raw files re-read | snapshot on disk | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, first, rec, snap_bytes in runs:
        loaded = int(rec.get("snapshot_keys", 0))
        per_m = f"{snap_bytes / 2**20:,.0f} MiB ({snap_bytes / max(loaded, 1) * 1e6 / 2**20:.1f} MiB per M keys)" \
            if loaded else f"{snap_bytes / 2**20:,.0f} MiB (deleted)"
        lines.append(
            f"| {name} | {first:.1f} s | {int(rec.get('ms', 0)) / 1000:.1f} s | {loaded:,} | "
            f"{rec.get('replayed_files', '?')} | {per_m} | ≤ 5 s |")
    write_section(f"live restart after kill -9: {args.rate:,} events/s, full TTL, local disk", "\n".join(lines))
    print("\n".join(lines))
