#!/usr/bin/env python3
"""End-to-end load ramp: N concurrent transcoded WebRTC calls through the gateway to sipp
(-rtp_echo), for each N in the ramp, all on this machine (gateway + generator + sipp).

Per step it records, from /proc, the gateway's CPU (as % of one core, in total and per call)
and RSS (above idle, per call) over a steady window when every call is up, and from the load
generator the setup time p50/p99, packet loss, jitter and whether the sampled calls (every
10th decodes and checks the tone) still carry it. Writes target/load-ramp/ramp.json and
ramp.md and prints the table.

usage: scripts/load_ramp.py [--steps 50,100,200,300,400] [--window 10] [--runs 1] [--pin]
       [--workers N] [--turn-ms N] [--nap-us N] [--nice N] [--no-io-uring]
       [--no-worker-clock]
       [--complexity N]
       [--opus-trunk | --g722-trunk | --trunk-codecs LIST] [--no-build] [--full-band]
       [--media-load-pct N]
       [--economy-load-pct N] [--late-tick-ms N] [--ramp-rate R] [--trace] [--profile] [--awake]
With --pin the gateway runs on CPU 0 alone and the generator and sipp on the other CPUs, so a
step shows what one core of gateway carries, without the generator competing for it.
With --profile each step's window is also recorded with `perf` (sampling at 999 Hz, with call
graphs, and counting the gateway's system calls): after the table it prints where the
gateway's time went — libopus, the kernel (and within it each system call, and the loopback
delivery to the generator and sipp that runs inside the gateway's sends), the gateway's own
code and its busiest functions, libc — as shares of the samples and as % of a core per call.
`perf` takes some of the box while it records: compare profiled steps with each other.
With --awake every CPU also runs a spinner at the lowest priority there is (SCHED_IDLE, one
per CPU, killed at the end), so no core ever goes idle: see `cores_kept_awake`.
Bounded: every step ends within its call length plus the generator's own 30 s limit.
"""

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "load-ramp"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

SIP_PORT, SIPP_PORT, SIPP_MEDIA, HTTP_PORT, WEBRTC_PORT = 25170, 25160, 26160, 28180, 19180


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid):
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6


def memory_mb(pid):
    """The process's resident memory and its anonymous part (heap, stacks; RssAnon), in MB.

    The difference is mostly the binary's and libraries' code, mapped from their files: the
    first call pages in some 2 MB of it (DTLS, SIP, Opus), which RSS per call spreads over
    the calls of a step, so it reads higher for 50 calls than for 250. The anonymous memory
    above idle is what the calls themselves hold."""
    status = Path(f"/proc/{pid}/status").read_text()
    anon_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:"))
    return rss_mb(pid), anon_kb * 1024 / 1e6


@contextlib.contextmanager
def cores_kept_awake(enabled=True):
    """While in it (when `enabled`), a spinner on each CPU this process may use, at SCHED_IDLE:
    it runs only when nothing else wants the CPU, so the CPU never idles, and it takes no time
    from the gateway, the peers or the generator, whose CPU is measured per process.

    Why: on a virtual machine an idle CPU halts (HLT leaves the guest), and the host may then
    run other work on that core and take its caches. A paced process pays for that after each
    sleep: on the Intel host, a pass over 1 MB took 28.6 µs after a 2 ms sleep against 6.5 µs
    back to back and 10.6 µs with a spinner keeping the core (docs/benchmarks-history.md,
    "2026-12-05, late night"). The libopus floor codes frame after frame and never sleeps; the
    gateway's workers and rtpengine's threads do, each as much as its load leaves it. With the
    cores kept awake, every party is measured on a core that keeps its caches. It is a
    measuring aid, not a deployment setting: the spinners burn the cores' idle time."""
    def die_with_us():
        # A spinner left behind would keep the box awake for every later measurement: it gets
        # SIGKILL when this process ends, however it ends (prctl(2), PR_SET_PDEATHSIG).
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)

    spinners = []
    try:
        if enabled:
            for cpu in sorted(os.sched_getaffinity(0)):
                spinners.append(subprocess.Popen(
                    ["taskset", "-c", str(cpu), "chrt", "--idle", "0",
                     sys.executable, "-c", "while True: pass"], preexec_fn=die_with_us))
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def wait_http(port, timeout=20):
    import urllib.request

    until = time.time() + timeout
    while time.time() < until:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit("the gateway did not come up")


def config(max_calls):
    return f"""[sip]
udp = "127.0.0.1:{SIP_PORT}"

[rtp]
ip = "127.0.0.1"
port_min = 20000
port_max = 29999

[http]
listen = "127.0.0.1:{HTTP_PORT}"
anonymous = true

[webrtc]
udp = "127.0.0.1:{WEBRTC_PORT}"

[limits]
max_calls = {max_calls}

[trunks.echo]
addresses = ["127.0.0.1:{SIPP_PORT}"]
options_interval = 0

[targets.echo]
trunk = "echo"
number = "100"
"""


def media_section(complexity=None, workers=None, turn_ms=None, io_uring=None, nap_us=None,
                  worker_clock=None, nice=None):
    """The gateway's `[media]` settings that were asked for (none: its defaults)."""
    media = [f"{key} = {str(value).lower() if isinstance(value, bool) else value}"
             for key, value in
             (("opus_complexity", complexity), ("workers", workers), ("turn_ms", turn_ms),
              ("io_uring", io_uring), ("nap_us", nap_us), ("worker_clock", worker_clock),
              ("nice", nice))
             if value is not None]
    return "\n[media]\n" + "\n".join(media) + "\n" if media else ""


def gateway_metrics():
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/metrics", timeout=5) as r:
        return r.read().decode().splitlines()


def gauges():
    """The gateway's `/metrics` as a map from each series (name and labels) to its value."""
    return {line.split()[0]: float(line.split()[1]) for line in gateway_metrics()
            if line.startswith("gateway_") and len(line.split()) == 2}


def per_worker(values, name):
    """The values of `name{worker="…"}` in `values` (from `gauges`), by worker."""
    return [v for k, v in sorted(values.items()) if k.startswith(name + "{")]


def active_calls():
    return gauges().get("gateway_active_calls", 0.0)


def gauges_if_any():
    """`gauges()`, or `None` where no gateway answers (another engine)."""
    try:
        return gauges()
    except OSError:
        return None


def media_demand(values):
    """From `gauges_if_any()`: the gateway's media workers' demand (the share of a core each
    ran or waited for in its last half second), highest first, its load level (1: economy),
    the calls it refused for load so far, and its panics so far (bugs, `gateway_faults_total`);
    `None` where no gateway answered."""
    if values is None:
        return None
    level = values.get("gateway_load_level")
    return {"demand": sorted(per_worker(values, "gateway_media_worker_demand"), reverse=True),
            "shed": int(values.get("gateway_calls_shed_total", 0)),
            "level": None if level is None else int(level),
            "faults": int(values.get("gateway_faults_total", 0))}


TICK_LATENESS = "gateway_media_tick_lateness_seconds"


def tick_lateness(values):
    """From `gauges_if_any()`: the gateway's ticks so far by lateness, [(upper bound in ms,
    cumulative count)], the last bound infinite; `None` where no gateway answered."""
    if values is None:
        return None
    buckets = []
    for key, count in values.items():
        if key.startswith(TICK_LATENESS + "_bucket{le=\""):
            bound = key.split('le="')[1].rstrip('"}')
            buckets.append((float("inf") if bound == "+Inf" else float(bound) * 1000, count))
    return sorted(buckets) or None


def lateness_quantile(before, after, q):
    """The upper bound, ms, of the bucket holding quantile `q` of the ticks between two
    `tick_lateness()` readings (`inf` past the last bound, which Python's json writes as
    `Infinity`); `None` without ticks."""
    if not before or not after:
        return None
    counts = [(bound, a - b) for (bound, a), (_, b) in zip(after, before)]
    total = counts[-1][1]
    if total <= 0:
        return None
    return next(bound for bound, cumulative in counts if cumulative >= q * total)


def mean_lateness_ms(before, after):
    """The ticks' mean lateness, ms, between two `gauges_if_any()` readings (the histogram's
    sum over its count): finer than a bucket, for comparing builds whose ticks all fall in
    the same ones; `None` without ticks."""
    if not before or not after:
        return None
    ticks = after.get(TICK_LATENESS + "_count", 0) - before.get(TICK_LATENESS + "_count", 0)
    if ticks <= 0:
        return None
    seconds = after.get(TICK_LATENESS + "_sum", 0) - before.get(TICK_LATENESS + "_sum", 0)
    return round(seconds / ticks * 1000, 3)


def share_later_than(before, after, ms):
    """The share of the ticks between two `tick_lateness()` readings that ran later than the
    bucket bound `ms`: the same measure whatever `late_tick_ms` counts as late; `None` without
    ticks."""
    if not before or not after:
        return None
    counts = {bound: a - b for (bound, a), (_, b) in zip(after, before)}
    total = counts.get(float("inf"), 0)
    if total <= 0:
        return None
    return round(1 - counts.get(float(ms), 0) / total, 4)


def bucket_ms(bound):
    """A `lateness_quantile` for a table: "≤ 5", "> 100", "–"."""
    if bound is None:
        return "–"
    return "> 100" if bound == float("inf") else f"≤ {bound:g}"


def box_cpu():
    """The box's CPU time so far, all of it and idle (with I/O wait), in clock ticks
    (`/proc/stat`'s first line)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4]


def trace(path, stop, every=0.5):
    """Until `stop` is set, appends the gateway's load to `path` every `every` seconds, one
    JSON line each: active calls, the load level (1 economy, 2 shedding for late ticks), each
    worker's calls and demand, the share of late ticks, the calls refused so far and the
    ticks' lateness p99 since the last line (the bucket it falls in, ms) and the share of
    them later than 20 ms (`over_20ms`, whatever `late_tick_ms` says), and the box's idle
    share of its cores since the last line (`box_idle`, `/proc/stat`). For seeing how a step's
    burst filled the workers and the box, and when the gate and economy acted."""
    with open(path, "w") as out:
        t0 = time.time()
        lateness = tick_lateness(gauges_if_any())
        cpu = box_cpu()
        while not stop.wait(every):
            value = gauges_if_any()
            if value is None:
                continue
            before, lateness = lateness, tick_lateness(value)
            was, cpu = cpu, box_cpu()
            total = cpu[0] - was[0]
            out.write(json.dumps({
                "t": round(time.time() - t0, 2),
                "active": value.get("gateway_active_calls"),
                "level": value.get("gateway_load_level"),
                "late": value.get("gateway_late_ticks_ratio"),
                "shed": value.get("gateway_calls_shed_total"),
                "worker_calls": per_worker(value, "gateway_media_worker_calls"),
                "worker_demand": per_worker(value, "gateway_media_worker_demand"),
                "tick_late_ms_p99": lateness_quantile(before, lateness, 0.99),
                "over_20ms": share_later_than(before, lateness, 20),
                "box_idle": round((cpu[1] - was[1]) / total, 3) if total else None,
            }) + "\n")
            out.flush()


# New calls a second while a step's calls start (`--ramp-rate`).
RAMP = [100.0]

# Extra loadgen arguments for every step (`--full-band`).
LOADGEN_EXTRA = []


# System calls counted by --profile: the media path's sends, receives and waits.
SYSCALLS = ["io_uring_enter", "sendto", "sendmmsg", "recvfrom", "recvmmsg", "epoll_wait",
            "clock_nanosleep"]

# Where a sample's time is charged, by the object it ran in (`perf report --sort dso`).
# libopus is linked into the gateway statically (vendor/README.md), so its samples are also
# told from the gateway's own by their function: `libopus_functions`.
PLACES = [("libopus", "libopus"), ("kernel", "[kernel"), ("gateway's code", "gateway"),
          ("libc", "libc"), ("libm", "libm")]

# Kernel functions whose share (with what they call) --profile prints: the system calls;
# `net_rx_action`, the loopback's receiving half (queueing a datagram on the generator's or
# sipp's socket and waking them), which runs inside the gateway's sends on loopback and on a
# real network would be paid by the receiving machine; and the gateway's thread preempted by
# the peer its send woke, on the two cores they share: at the send's return
# (`exit_to_user_mode_loop`) or between a `sendmmsg`'s datagrams (`__cond_resched`). Its
# share is the switch's own cost, not the peer's run, which perf does not sample.
KERNEL_PARTS = [("io_uring_enter (a turn's sends)", "__do_sys_io_uring_enter"),
                ("sendto", "__x64_sys_sendto"), ("sendmmsg", "__x64_sys_sendmmsg"),
                ("recvmmsg", "__x64_sys_recvmmsg"), ("recvfrom", "__x64_sys_recvfrom"),
                ("epoll_wait", "__x64_sys_epoll_wait"),
                ("clock_nanosleep (the paced turn)", "__x64_sys_clock_nanosleep"),
                ("of which delivery to the peers (net_rx_action)", "net_rx_action"),
                ("preempted at a system call's return (mostly by a woken peer)",
                 "exit_to_user_mode_loop"),
                ("preempted between a sendmmsg's datagrams", "__cond_resched")]


# The gateway's functions that wake and poll the calls' tasks, by a part of their names: what
# a worker loop that drove the calls' media itself would replace.
WAKING = ["tokio::", "futures_core::", "raw_waker", "as core::future::future::Future>::poll",
          "call::driver::sources::", "atomic_waker"]


# Seconds the system calls are counted for, after the window: counting them makes every
# system call take the kernel's tracing path, which would inflate the kernel's share of the
# profile if done during it.
STAT_SECONDS = 5.0


def start_profile(pid, window, base):
    """`perf record` on the gateway for `window` seconds, into `base`.data."""
    if not shutil.which("perf"):
        sys.exit("--profile needs perf (Debian: apt-get install linux-perf)")
    return subprocess.Popen(
        ["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", f"{base}.data", "--",
         "sleep", str(window)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def report_shares(data, *args):
    """`perf report`'s percentage per row, by the row's label (a symbol without its `[k]` or
    `[.]` mark)."""
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", *args],
                         capture_output=True, text=True).stdout
    shares = []
    for line in out.splitlines():
        fields = line.split()
        pcts = [f for f in fields if f.endswith("%")]
        if not pcts or line.lstrip().startswith("#"):
            continue
        try:
            label = " ".join(fields[len(pcts):]).removeprefix("[k] ").removeprefix("[.] ")
            shares.append((float(pcts[0].rstrip("%")), label))
        except ValueError:
            continue
    return shares


def finish_recording(record, pid, base, window):
    """Waits for the step's `perf record`, then counts the gateway's system calls for
    `STAT_SECONDS` (the calls still up)."""
    events = ",".join(f"syscalls:sys_enter_{s}" for s in SYSCALLS)
    stat = ["perf", "stat", "-x", ",", "-e", events, "-p", str(pid), "-o", f"{base}.stat", "--",
            "sleep", str(STAT_SECONDS)]
    for proc, what in ((record, "perf record"), (subprocess.Popen(
            stat, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), "perf stat")):
        _, err = proc.communicate(timeout=window + 60)
        if proc.returncode != 0:
            sys.exit(f"{what} failed ({err.strip()[-300:]}); as another user than root, "
                     "`sysctl kernel.perf_event_paranoid=-1` lets it see the kernel")


def libopus_functions():
    """The functions of the libopus the build linked statically: every function the static
    library `opusic-sys` built defines, by `nm`. Empty when there is none (a build linked
    against a shared libopus, whose samples `PLACES` charges by object)."""
    archives = sorted((ROOT / "target/release/build").glob("opusic-sys-*/out/lib/libopus.a"),
                      key=lambda a: a.stat().st_mtime)
    if not archives:
        return set()
    out = subprocess.run(["nm", "--defined-only", str(archives[-1])], capture_output=True,
                         text=True, check=True).stdout
    return {f[2] for f in (line.split() for line in out.splitlines())
            if len(f) == 3 and f[1] in "tT"}


def read_profile(base, cpu_per_call, up):
    """Where the gateway's time went, from `finish_recording`'s files."""
    data = f"{base}.data"
    by_dso = report_shares(data, "--no-children", "--sort", "dso", "-g", "none")
    places = {name: 0.0 for name, _ in PLACES}
    places["other"] = 0.0
    for share, dso in by_dso:
        name = next((n for n, key in PLACES if key in dso), "other")
        places[name] += share
    with_children = {sym: share for share, sym in
                     report_shares(data, "--children", "--sort", "sym", "-g", "none")}
    kernel = {name: with_children.get(sym, 0.0) for name, sym in KERNEL_PARTS}
    functions = report_shares(data, "--no-children", "--sort", "sym", "--dsos", "gateway", "-g", "none")
    codec = libopus_functions()
    in_libopus = sum(share for share, f in functions if f in codec)
    places["libopus"] += in_libopus
    places["gateway's code"] -= in_libopus
    functions = [(share, f) for share, f in functions if f not in codec]
    waking = sum(share for share, f in functions if any(m in f for m in WAKING))
    calls = {}
    for line in Path(f"{base}.stat").read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2].startswith("syscalls:sys_enter_"):
            try:
                calls[fields[2].removeprefix("syscalls:sys_enter_")] = float(fields[0])
            except ValueError:
                pass
    return {
        "cpu_pct_per_call": cpu_per_call,
        "places_pct": {k: round(v, 1) for k, v in places.items()},
        "kernel_parts_pct": {k: round(v, 1) for k, v in kernel.items()},
        "gateway_functions_pct": [(round(s, 2), f) for s, f in functions[:12]],
        "waking_pct": round(waking, 2),
        "syscalls_per_call_per_second": {k: round(v / STAT_SECONDS / up, 1)
                                         for k, v in calls.items()},
        "perf_data": data,
    }


def print_profile(row):
    prof = row.get("profile")
    if not prof:
        return
    per_call = prof["cpu_pct_per_call"]
    print(f"\nWhere the time went at {row['calls']} calls ({per_call} % of a core a call, "
          f"perf attached; `perf report -i {prof['perf_data']}`):\n")
    print("| where | share of samples | % of a core per call |")
    print("|---|---:|---:|")
    for name, share in prof["places_pct"].items():
        print(f"| {name} | {share} % | {per_call * share / 100:.4f} |")
    for name, share in prof["kernel_parts_pct"].items():
        print(f"| kernel: {name}, with what it calls | {share} % | {per_call * share / 100:.4f} |")
    print("\nThe gateway's busiest functions (own time, share of all samples): " +
          "; ".join(f"{f} {s} %" for s, f in prof["gateway_functions_pct"]))
    print(f"Waking and polling the calls' tasks (tokio's scheduler, timers and readiness, the "
          f"wakers, the call's future; own time): {prof['waking_pct']} % of the samples")
    print("System calls per call per second: " +
          ", ".join(f"{k} {v}" for k, v in prof["syscalls_per_call_per_second"].items()))


def step(gateway, n, window, prefix, idle, url=f"ws://127.0.0.1:{HTTP_PORT}/ws",
         active=active_calls, profile=None):
    """One step of n calls against the media process `gateway` (a Popen) signalled at `url`;
    `active()` counts the calls it carries; `idle` is its `memory_mb` before its first call;
    with `profile` (a path without extension) the window is recorded with `perf` there."""
    ramp = max(2.0, n / RAMP[0])  # start calls over this long: DTLS handshakes are CPU work
    settle = 3.0
    # With a profile, the calls stay up while their system calls are counted after the window.
    seconds = ramp + settle + window + 2.0 + (STAT_SECONDS + 1.0 if profile else 0.0)
    generator = subprocess.Popen(
        prefix + [str(ROOT / "target/release/loadgen"), "--ws", url,
         "--to", "echo", "--calls", str(n), "--concurrency", str(n), "--seconds", str(seconds),
         "--ramp-seconds", str(ramp), "--light", "--sample", "10", "--json"] + LOADGEN_EXTRA,
        stdout=subprocess.PIPE, text=True)
    time.sleep(ramp + settle)
    up0 = active()
    perf = profile and start_profile(gateway.pid, window, profile)
    ours = active is active_calls
    values0 = gauges_if_any() if ours else None
    lateness0 = tick_lateness(values0)
    c0, g0, t0 = cpu_seconds(gateway.pid), cpu_seconds(generator.pid), time.time()
    time.sleep(window)
    c1, g1, t1 = cpu_seconds(gateway.pid), cpu_seconds(generator.pid), time.time()
    after = gauges_if_any() if ours else None
    lateness1, load = tick_lateness(after), media_demand(after)
    rss, anon = memory_mb(gateway.pid)
    # Per-call figures divide by the calls actually up in the window (the gateway's own
    # gauge), not by the calls attempted: under overload many never connect.
    up = max(1.0, (up0 + active()) / 2)
    if perf:
        finish_recording(perf, gateway.pid, profile, window)
    out, _ = generator.communicate(timeout=seconds + 60)
    summary = json.loads(out)
    cpu = (c1 - c0) / (t1 - t0) * 100
    row = {
        "calls": n,
        "calls_up": round(up),
        "gateway_cpu_pct": round(cpu, 1),
        "gateway_cpu_pct_per_call": round(cpu / up, 3),
        "gateway_rss_mb": round(rss, 1),
        "gateway_rss_mb_per_call": round(max(0.0, rss - idle[0]) / up, 3),
        "gateway_anon_mb_per_call": round(max(0.0, anon - idle[1]) / up, 3),
        "failures_sample": summary["failures"][:3],
        "generator_cpu_pct": round((g1 - g0) / (t1 - t0) * 100, 1),
        "calls_ok": summary["calls_ok"],
        "calls_failed": summary["calls_failed"],
        "setup_ms_p50": summary["setup_ms_p50"],
        "setup_ms_p99": summary["setup_ms_p99"],
        "setup_ms_max": summary["setup_ms_max"],
        "setup_ms_first": summary["setup_ms_first"],
        "loss_pct": summary["loss_pct"],
        "jitter_ms_p50": summary["jitter_ms_p50"],
        "jitter_ms_p99": summary["jitter_ms_p99"],
        # The gateway's own lateness over the window: how late its ticks sent their frames, by
        # the bucket the quantile falls in (ms; `inf` past the last bound).
        "tick_late_ms_p50": lateness_quantile(lateness0, lateness1, 0.5),
        "tick_late_ms_p99": lateness_quantile(lateness0, lateness1, 0.99),
        "tick_late_ms_p999": lateness_quantile(lateness0, lateness1, 0.999),
        "tick_late_ms_mean": mean_lateness_ms(values0, after),
        "tone_intact": summary["tone_detected"],
        "tone_snr_db_p50": summary["tone_snr_db"],
        "tone_calls_checked": summary["tone_calls_checked"],
        "worker_demand": load and load["demand"],
        "calls_shed": load and load["shed"],
        "load_level": load and load["level"],
        "gateway_faults": load and load["faults"],
    }
    if perf:
        row["profile"] = read_profile(profile, row["gateway_cpu_pct_per_call"], up)
    return row


def markdown(rows):
    head = ("| calls | up | gateway CPU % | % per call | RSS MB | MB per call | anon MB per call | "
            "setup p50 ms | setup p99 ms | loss % | jitter p50/p99 ms | gateway's tick lateness "
            "p99 ms | tone (sampled) | failed |")
    lines = [head, "|" + "---:|" * 14]
    for r in rows:
        tone = f"{'yes' if r['tone_intact'] else 'NO'} ({r['tone_calls_checked']}, {r['tone_snr_db_p50']} dB)"
        lines.append(
            f"| {r['calls']} | {r['calls_up']} | {r['gateway_cpu_pct']} | {r['gateway_cpu_pct_per_call']} | "
            f"{r['gateway_rss_mb']} | {r['gateway_rss_mb_per_call']} | {r['gateway_anon_mb_per_call']} | "
            f"{r['setup_ms_p50']} | "
            f"{r['setup_ms_p99']} | {r['loss_pct']} | {r['jitter_ms_p50']}/{r['jitter_ms_p99']} | "
            f"{bucket_ms(r.get('tick_late_ms_p99'))} | {tone} | {r['calls_failed']} |")
    return "\n".join(lines)


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--steps", default="50,100,200,300,400")
    args.add_argument("--window", type=float, default=10.0, help="seconds of steady state measured")
    args.add_argument("--runs", type=int, default=1, help="repeat the ramp; the table shows medians")
    args.add_argument("--no-build", action="store_true")
    args.add_argument("--complexity", type=int, default=None,
                      help="the gateway's media.opus_complexity (default: its default, 1)")
    args.add_argument("--workers", type=int, default=None,
                      help="the gateway's media.workers (default: its default, one per core)")
    args.add_argument("--no-io-uring", action="store_true",
                      help="the gateway's media workers send with sendmmsg and sendto, as where "
                           "the kernel refuses io_uring (media.io_uring = false)")
    args.add_argument("--turn-ms", type=int, default=None,
                      help="the gateway's media.turn_ms (default: its default, 2)")
    args.add_argument("--no-worker-clock", action="store_true",
                      help="transcoding calls tick at their own times and send the browser's "
                           "audio on as it arrives (media.worker_clock = false)")
    args.add_argument("--nap-us", type=int, default=None,
                      help="the gateway's media.nap_us: a busy worker waits out its turn in naps "
                           "this long (default: its default, 0: one sleep)")
    args.add_argument("--nice", type=int, default=None,
                      help="the gateway's media.nice: the nice value its media workers run at "
                           "(default: its default, 0: the gateway's own; negative needs "
                           "CAP_SYS_NICE)")
    args.add_argument("--opus-trunk", action="store_true",
                      help="the trunk speaks Opus: calls are relayed, not transcoded")
    args.add_argument("--g722-trunk", action="store_true",
                      help="the trunk speaks G.722 (HD voice): calls are transcoded at 16 kHz")
    args.add_argument("--trunk-codecs", default=None,
                      help="the trunk's `codecs`, comma-separated (e.g. opus,PCMU), sipp "
                           "answering G.711 all the same: a trunk that may speak a wider codec "
                           "answers a narrower one")
    args.add_argument("--full-band", action="store_true",
                      help="callers code full band whatever the gateway's answer allows")
    args.add_argument("--ramp-rate", type=float, default=RAMP[0],
                      help="new calls a second while a step's calls start (default 100)")
    args.add_argument("--media-load-pct", type=int, default=None,
                      help="the gateway's limits.media_load_pct (default: its default)")
    args.add_argument("--economy-load-pct", type=int, default=None,
                      help="the gateway's limits.economy_load_pct (default: its default)")
    args.add_argument("--late-tick-ms", type=int, default=None,
                      help="the gateway's limits.late_tick_ms: a tick this late counts as late "
                           "(default: its default, 20)")
    args.add_argument("--trace", action="store_true",
                      help="sample the gateway's load every half second into "
                           "target/load-ramp/trace-<run>.jsonl")
    args.add_argument("--profile", action="store_true",
                      help="record each step's window with perf and print where the time went")
    args.add_argument("--pin", action="store_true",
                      help="gateway on CPU 0 only; generator and sipp on the other CPUs")
    args.add_argument("--awake", action="store_true",
                      help="keep every CPU from idling with a lowest-priority spinner (see "
                      "cores_kept_awake): the cost on a core that keeps its caches")
    a = args.parse_args()
    if a.full_band:
        LOADGEN_EXTRA.append("--full-band")
    RAMP[0] = a.ramp_rate
    cpus = sorted(os.sched_getaffinity(0))
    if a.pin and len(cpus) < 2:
        sys.exit("--pin needs at least two CPUs")
    # taskset also narrows the gateway's runtime: tokio sizes its workers from the affinity.
    gateway_prefix = ["taskset", "-c", str(cpus[0])] if a.pin else []
    others_prefix = ["taskset", "-c", ",".join(map(str, cpus[1:]))] if a.pin else []
    steps = [int(s) for s in a.steps.split(",")]
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "gateway", "-p",
                        "gateway-tests", "--bin", "gateway", "--bin", "loadgen"], cwd=ROOT, check=True)
    if not shutil.which("sipp"):
        sys.exit("sipp not found: scripts/install-deps.sh installs it")
    OUT.mkdir(parents=True, exist_ok=True)
    text = config(max(steps) + 100) + media_section(
        a.complexity, a.workers, a.turn_ms, False if a.no_io_uring else None, a.nap_us,
        False if a.no_worker_clock else None, a.nice)
    if a.media_load_pct is not None:
        text = text.replace("[limits]\n", f"[limits]\nmedia_load_pct = {a.media_load_pct}\n")
    if a.economy_load_pct is not None:
        text = text.replace("[limits]\n", f"[limits]\neconomy_load_pct = {a.economy_load_pct}\n")
    if a.late_tick_ms is not None:
        text = text.replace("[limits]\n", f"[limits]\nlate_tick_ms = {a.late_tick_ms}\n")
    scenario = "echo.xml"
    if a.opus_trunk:
        text = text.replace("[trunks.echo]\n", '[trunks.echo]\ncodecs = ["opus", "PCMU"]\n')
        scenario = "echo_opus.xml"
    elif a.g722_trunk:
        text = text.replace("[trunks.echo]\n", '[trunks.echo]\ncodecs = ["G722", "PCMU"]\n')
        scenario = "echo_g722.xml"
    elif a.trunk_codecs:
        codecs = ", ".join(f'"{c.strip()}"' for c in a.trunk_codecs.split(","))
        text = text.replace("[trunks.echo]\n", f"[trunks.echo]\ncodecs = [{codecs}]\n")
    (OUT / "gateway.toml").write_text(text)
    runs = []
    with cores_kept_awake(a.awake):
        for run in range(a.runs):
            sipp = subprocess.Popen(
                others_prefix + ["sipp", "-sf", str(ROOT / "tests/sipp" / scenario), "-i", "127.0.0.1", "-p", str(SIPP_PORT),
                 "-mp", str(SIPP_MEDIA), "-rtp_echo", "-m", "1000000", "-nostdin", "-timeout", "3600s"],
                cwd=OUT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            gateway = subprocess.Popen(
                gateway_prefix + [str(ROOT / "target/release/gateway"), "run", "--config", str(OUT / "gateway.toml")],
                stdout=subprocess.DEVNULL, stderr=open(OUT / "gateway.log", "w"))
            stop = threading.Event()
            try:
                wait_http(HTTP_PORT)
                if a.trace:
                    threading.Thread(target=trace, args=(OUT / f"trace-{run + 1}.jsonl", stop),
                                     daemon=True).start()
                # Memory per call is measured against the gateway before its first call: what an
                # earlier step left allocated (the allocator keeps freed pages) must not be
                # subtracted from a later one.
                idle = memory_mb(gateway.pid)
                rows = []
                for n in steps:
                    profile = a.profile and str(OUT / f"perf-{n}-run{run + 1}")
                    row = step(gateway, n, a.window, others_prefix, idle, profile=profile)
                    print(json.dumps(row), file=sys.stderr)
                    rows.append(row)
                    time.sleep(3)  # calls hang up; let the gateway settle
                runs.append(rows)
            finally:
                stop.set()
                gateway.send_signal(signal.SIGTERM)
                sipp.terminate()
                gateway.wait(timeout=90)
                sipp.wait(timeout=10)
    # Medians across runs, per step.
    def median(values):
        values = sorted(v for v in values if v is not None)
        return values[len(values) // 2] if values else None

    table = []
    for i, n in enumerate(steps):
        per = [r[i] for r in runs]
        row = {k: median([p[k] for p in per]) for k in per[0]
               if k not in ("calls", "tone_intact", "failures_sample", "worker_demand", "profile")}
        row["calls"] = n
        row["tone_intact"] = all(p["tone_intact"] for p in per)
        table.append(row)
    cpu = Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(": \t")
    result = {"machine": {"cpu": cpu, "cores": os.cpu_count()}, "opus_complexity": 1 if a.complexity is None else a.complexity,
              "pinned": a.pin, "cores_kept_awake": a.awake, "runs": runs, "median": table}
    (OUT / "ramp.json").write_text(json.dumps(result, indent=2))
    md = markdown(table)
    (OUT / "ramp.md").write_text(md + "\n")
    print(f"{cpu}, {os.cpu_count()} cores{', kept awake' if a.awake else ''}, {a.runs} run(s), "
          "medians:\n")
    print(md)
    # A panic is a bug, and one the gateway survived still cost some call or datagram: the
    # figures above are then not of a healthy gateway.
    faults = max((row.get("gateway_faults") or 0 for rows in runs for row in rows), default=0)
    if faults:
        print(f"\nTHE GATEWAY PANICKED ({faults} in a run, `gateway_faults_total`): a bug; the log "
              f"of its last run, {OUT / 'gateway.log'}, says where. The figures above include what "
              "it cost.")
    for rows in runs:
        for row in rows:
            print_profile(row)


if __name__ == "__main__":
    main()
