#!/usr/bin/env python3
"""What sharing state through Redis ([cluster]) costs a call: call setup p50/p99 with and
without [cluster], and the Redis commands the node runs per call and per second.

One gateway (release build) to sipp (-rtp_echo), `loadgen` placing calls, and a
redis-server started here; the two configurations alternate, --rounds times. Redis's
`INFO commandstats` before and after each cluster round gives the commands it ran; the
node's background refresh (two round trips every 0.5 s, whatever the load) is measured in an
idle window of the same length and shown apart.

usage: scripts/cluster_cost.py [--calls 200] [--concurrency 20] [--seconds 2] [--rounds 3]
                               [--no-build]
Bounded: each round ends within its calls' length plus loadgen's own 30 s limit.
"""

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_ramp import HTTP_PORT, ROOT, SIPP_MEDIA, SIPP_PORT, config, wait_http  # noqa: E402

OUT = ROOT / "target" / "cluster-cost"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, check=True).stdout


def commands(port):
    """Total commands Redis has run (INFO commandstats), EVALSHA/EVAL and others apart."""
    total = 0
    for line in redis_cli(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            total += int(line.split("calls=")[1].split(",")[0])
    return total


def run_gateway(text, calls, concurrency, seconds):
    (OUT / "gateway.toml").write_text(text)
    gateway = subprocess.Popen([str(ROOT / "target/release/gateway"), "run", "--config",
                                str(OUT / "gateway.toml")],
                               stdout=subprocess.DEVNULL, stderr=open(OUT / "gateway.log", "w"))
    try:
        wait_http(HTTP_PORT)
        time.sleep(1.0)
        out = subprocess.run(
            [str(ROOT / "target/release/loadgen"), "--ws", f"ws://127.0.0.1:{HTTP_PORT}/ws",
             "--to", "echo", "--calls", str(calls), "--concurrency", str(concurrency),
             "--seconds", str(seconds), "--light", "--json"],
            capture_output=True, text=True, timeout=calls / concurrency * (seconds + 5) + 60)
        return json.loads(out.stdout), gateway
    except BaseException:
        gateway.kill()
        raise


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--calls", type=int, default=200)
    args.add_argument("--concurrency", type=int, default=20)
    args.add_argument("--seconds", type=float, default=2.0)
    args.add_argument("--rounds", type=int, default=3)
    args.add_argument("--no-build", action="store_true")
    a = args.parse_args()
    for tool in ["sipp", "redis-server", "redis-cli"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: scripts/install-deps.sh installs it")
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "gateway", "-p",
                        "gateway-tests", "--bin", "gateway", "--bin", "loadgen"], cwd=ROOT,
                       check=True)
    OUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"], cwd=OUT,
                             stdout=subprocess.DEVNULL)
    sipp = subprocess.Popen(
        ["sipp", "-sf", str(ROOT / "tests/sipp/echo.xml"), "-i", "127.0.0.1", "-p", str(SIPP_PORT),
         "-mp", str(SIPP_MEDIA), "-rtp_echo", "-m", "1000000", "-nostdin", "-timeout", "3600s"],
        cwd=OUT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = config(a.concurrency + 50)
    clustered = base + (f'\n[cluster]\nredis_url = "redis://127.0.0.1:{port}/0"\n'
                        'node_id = "bench"\n')
    clustered = clustered.replace("options_interval = 0\n",
                                  f"options_interval = 0\nmax_channels = {a.concurrency + 50}\n")
    rows = {"alone": [], "cluster": []}
    try:
        time.sleep(0.5)
        for _ in range(a.rounds):
            for name, text in [("alone", base), ("cluster", clustered)]:
                before = commands(port)
                started = time.time()
                summary, gateway = run_gateway(text, a.calls, a.concurrency, a.seconds)
                busy = time.time() - started
                during = commands(port) - before
                idle = 0
                if name == "cluster":
                    # The same node with no calls for as long: its background refresh alone.
                    before = commands(port)
                    time.sleep(busy)
                    idle = commands(port) - before
                gateway.terminate()
                gateway.wait(timeout=90)
                rows[name].append({
                    "setup_ms_p50": summary["setup_ms_p50"], "setup_ms_p99": summary["setup_ms_p99"],
                    "calls_ok": summary["calls_ok"], "calls_failed": summary["calls_failed"],
                    "redis_commands": during, "redis_commands_idle": idle, "seconds": busy})
    finally:
        for p in (sipp, redis):
            p.kill()
    (OUT / "cluster-cost.json").write_text(json.dumps(rows, indent=2))
    med = lambda name, key: statistics.median(r[key] for r in rows[name])  # noqa: E731
    print("| gateway | setup p50 ms | setup p99 ms | calls ok | failed |")
    print("|---|---:|---:|---:|---:|")
    for name in rows:
        print(f"| {name} | {med(name, 'setup_ms_p50')} | {med(name, 'setup_ms_p99')} | "
              f"{med(name, 'calls_ok')} | {med(name, 'calls_failed')} |")
    per_call = [(r["redis_commands"] - r["redis_commands_idle"]) / max(1, r["calls_ok"])
                for r in rows["cluster"]]
    per_second = [r["redis_commands_idle"] / r["seconds"] for r in rows["cluster"]]
    print(f"\nRedis commands per call (beyond the idle refresh), per round: "
          f"{', '.join(f'{x:.1f}' for x in per_call)}; median {statistics.median(per_call):.1f}")
    print(f"Redis commands per second of an idle node: median {statistics.median(per_second):.1f}")


if __name__ == "__main__":
    main()
