"""bench/live.py --restart: how fast `tally live` is back after kill -9 with a full dedup TTL.

The lander writes one file a second (`--rate` fresh events plus 3% retries) while `tally live
--interval 1s` follows it. After the TTL plus a minute (the dedup state full: ~120M keys at
200k events/s with the default 10-minute TTL) the process is killed with SIGKILL and started
again at once, the lander going on; the figure is the time from the kill to the restarted
process's first committed batch, with what its recovery did (snapshot keys loaded, raw files
re-read, batches replayed from their key files). Then the same again with the snapshot parts
and key files deleted first: the full rebuild from the raw files that a restart did before
snapshots (and still does when a snapshot is unusable).

With `--s3` the lake is in a bucket on the S3 test server (moto, started here on loopback): the
lander PUTs its files there and tally reads and writes everything through S3.
"""

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from common import ROOT, WORK, machine, tally_bin, write_section


def dir_bytes(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


class LocalLake:
    """The lake on local disk."""

    def __init__(self, path):
        self.path = path
        self.url = str(path)
        self.env = {}

    def keys_bytes(self):
        return dir_bytes(self.path / "live_view" / "_tally_live" / "keys")

    def drop_keys(self):
        shutil.rmtree(self.path / "live_view" / "_tally_live" / "keys", ignore_errors=True)

    def close(self):
        pass


class S3Lake:
    """The lake in a bucket on the S3 test server (moto), started here on loopback."""

    BUCKET = "live-restart"

    def __init__(self):
        import boto3

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = ROOT / "tests" / "e2e" / "s3_server.py"
        self.server = subprocess.Popen([sys.executable, str(server), "-H", "127.0.0.1", "-p", str(port)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}"
        self.env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
        self.client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench",
                                   aws_secret_access_key="bench", region_name="us-east-1")
        for _ in range(100):
            try:
                self.client.create_bucket(Bucket=self.BUCKET)
                break
            except Exception:
                time.sleep(0.2)
        self.url = f"s3://{self.BUCKET}/lake"

    def objects(self, prefix):
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.BUCKET, Prefix=prefix)
        return [o for page in pages for o in page.get("Contents", [])]

    def keys_bytes(self):
        return sum(o["Size"] for o in self.objects("lake/live_view/_tally_live/keys/"))

    def drop_keys(self):
        for o in self.objects("lake/live_view/_tally_live/keys/"):
            self.client.delete_object(Bucket=self.BUCKET, Key=o["Key"])

    def put(self, key, body):
        self.client.put_object(Bucket=self.BUCKET, Key=f"lake/{key}", Body=body)

    def close(self):
        self.server.kill()


def s3_lander(lander_cls, lake, rate):
    """The bench's lander, PUTting each file to the bucket (an S3 PUT is atomic: no rename)."""
    import pyarrow.parquet as pq

    class S3Lander(lander_cls):
        def land(self, i, bad=None):
            now = time.time()
            day = time.strftime("%Y-%m-%d", time.gmtime(now))
            t = self.table(now)
            buf = io.BytesIO()
            pq.write_table(t, buf, compression="zstd")
            lake.put(f"raw/payments/ingest_date={day}/land-{i:06d}.parquet", buf.getvalue())
            return t.num_rows

    return S3Lander(None, rate)


class Live:
    """One `tally live` process: its batch lines and its `live: recovered` log line."""

    def __init__(self, tally, lake, log, ttl):
        self.proc = subprocess.Popen(
            [tally, "live", "--interval", "1s", "--format", "json", "--lake", lake.url,
             "--dedup-ttl", f"{ttl}s"],
            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
            env={**os.environ, **lake.env, "RUST_LOG": "tally_engine::live=info", "NO_COLOR": "1"})
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
    work = WORK / "live-restart"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if args.s3:
        lake = S3Lake()
        lander = s3_lander(lander_cls, lake, args.rate)
    else:
        lake = LocalLake(work / "lake")
        lake.path.mkdir()
        lander = lander_cls(lake.path, args.rate)
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

    live = Live(tally, lake, work / "live-1.log", args.ttl)
    land_until(t0 + args.ttl + 60)
    keys_before = live.batches[-1]["state_keys"]
    runs = []
    for name, drop_snapshot in (("with the snapshot", False), ("snapshot and key files deleted (full rebuild)", True)):
        live.kill()
        killed = time.time()
        snap_bytes = lake.keys_bytes()
        if drop_snapshot:
            lake.drop_keys()
        live = Live(tally, lake, work / f"live-{len(runs) + 2}.log", args.ttl)
        # Keep landing until the restarted process has committed a batch.
        while not live.batches and time.time() - killed < 600:
            land_until(time.time() + 1)
        # The first batch is back when it is committed (visible in live_view), which its
        # metrics line stamps; the key file and snapshot writes after it only ready a restart.
        first = live.batches[0]["committed_at_ms"] / 1000 - killed if live.batches else float("nan")
        rec = live.recovered() or {}
        runs.append((name, first, rec, snap_bytes))
        land_until(time.time() + 30)

    live.kill()
    lake.close()
    where = "the S3 test server (moto)" if args.s3 else "local disk"
    flag = " --s3" if args.s3 else ""
    lines = [
        f"Machine: {machine()}. Command: `python3 bench/live.py --restart --rate {args.rate} --ttl {args.ttl}{flag}`.",
        f"One file a second ({args.rate:,} fresh events plus 3% retries) for {args.ttl + 60} s, the dedup state "
        f"then holding {keys_before:,} keys ({args.ttl} s TTL), then `kill -9` and a restart at once, the "
        "lander going on. Time from the kill to the restarted process's first committed batch (its `committed_at_ms`: visible in live_view):",
        "",
        "| restart | kill → first batch | recovery | snapshot keys loaded | batches replayed (from key files) | raw files re-read | snapshot and key files | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, first, rec, snap_bytes in runs:
        loaded = int(rec.get("snapshot_keys", 0))
        per_m = f"{snap_bytes / 2**20:,.0f} MiB ({snap_bytes / max(loaded, 1) * 1e6 / 2**20:.1f} MiB per M keys)" \
            if loaded else f"{snap_bytes / 2**20:,.0f} MiB (deleted)"
        lines.append(
            f"| {name} | {first:.1f} s | {int(rec.get('ms', 0)) / 1000:.1f} s | {loaded:,} | "
            f"{rec.get('replayed_batches', '?')} ({rec.get('replayed_from_keys', '0')}) | "
            f"{rec.get('replayed_files', '?')} | {per_m} | ≤ 5 s |")
    write_section(f"live restart after kill -9: {args.rate:,} events/s, full TTL, {where}", "\n".join(lines))
    print("\n".join(lines))
