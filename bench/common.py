"""Shared helpers for tally's benchmarks: finding the binary, timing commands, peak RSS,
and writing a section of bench/RESULTS.md. Every figure is measured in the same run as its
peer, on the same files."""

import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("TALLY_BENCH_WORK", ROOT / "bench" / "work"))


def tally_bin() -> str:
    """The tally binary: $TALLY_BIN, else build it (the same profile the README uses)."""
    if os.environ.get("TALLY_BIN"):
        return os.environ["TALLY_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    subprocess.run(["cargo", "build", "-q", "-p", "tally-cli"], cwd=ROOT, check=True)
    return str(target / "debug" / "tally")


def ensure_duckdb():
    try:
        import duckdb  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "duckdb"], check=True)
    import duckdb

    return duckdb


def wait_listening(proc, count, what):
    """The addresses a tally server prints as `listening <name> <addr>` lines, once it has
    printed `count` of them."""
    addrs = {}
    while len(addrs) < count:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{what} ended before listening")
        parts = line.split()
        if len(parts) == 3 and parts[0] == "listening":
            addrs[parts[1]] = parts[2]
    return addrs


def run_timed(cmd, **kw):
    """Runs a command; returns (seconds, peak RSS in MiB of that child, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - start
    out = proc.stdout.read()
    err = proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {err}")
    return secs, usage.ru_maxrss / 1024.0, out


def best_of(n, fn):
    """Median and best of n timings of fn() -> seconds."""
    times = [fn() for _ in range(n)]
    return statistics.median(times), min(times)


def write_section(name: str, body: str):
    """Replaces the section `## name` of bench/RESULTS.md with body."""
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# tally benchmark results\n\nEach section is rewritten by its script; figures come from one run on this machine.\n"
    block = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(block + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text)
    print(f"wrote section '{name}' of {path}")


def machine() -> str:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"


def vm_hwm_mib(pid) -> float:
    """Peak RSS (VmHWM) of a running process, in MiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0
