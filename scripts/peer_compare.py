#!/usr/bin/env python3
"""The gateway and rtpengine side by side, in one run: the same load generator places N
concurrent transcoded WebRTC calls (Opus, DTLS-SRTP) through each in turn, alternating, with
sipp -rtp_echo as the trunk's media; prints CPU and memory per call for each, their ratio,
and the libopus floor of the same run.

- gateway: `gateway run`, calls over SIP to sipp (echo.xml), Opus ⇄ PCMU in the gateway.
- rtpengine: Debian's rtpengine-daemon (user space, `--table=-1`), driven over its ng control
  protocol by `rtpengine-ws` (tests/src/bin/rtpengine_ws.rs), which speaks the gateway's /ws
  call protocol so `loadgen` drives both alike; rtpengine masks Opus towards the trunk and
  transcodes to PCMU; its trunk leg answers at sipp's echo port (no SIP: rtpengine is a
  media proxy and is charged nothing for signalling). Its Opus encoder runs at libavcodec's
  defaults, which the header line reads from the library (complexity 10, full band): not
  the gateway's settings, whatever `--complexity` says.
- floor: raw libopus decode + encode per call at the gateway's settings, of the signal these
  calls carry (loadgen's tone, and sipp's echo of it: criterion, gateway/benches/media.rs,
  "load floor"), in % of a core per call. The bench's speech-like signal ("floor"), which
  SILK codes more cheaply, is printed beside it for comparison with figures before
  2026-12-04's afternoon, which were set against it. So is the load floor for 50 calls'
  coders a frame each in turn ("load floor, 50 calls in turn"), each coder's state then
  waiting while the others' pass through the core's caches. The goals are set against the
  load floor.
- floor beside each round: the same load floor's work (one call's coders, frame after frame,
  `opus-paced --busy --calls 1`, tests/src/bin/opus_paced.rs), measured by its process's CPU
  time just before and just after the gateway's run in each round, and the gateway's cost
  that round set against their mean. Why: the box's speed drifts within minutes (the load
  floor read 46 and 73 µs a frame five minutes apart one night, docs/benchmarks-history.md),
  and the criterion floor, measured once after all rounds, may meet another minute than the
  gateway did. The per-round ratios' median is printed beside the criterion floor's ratio.

CPU is the media process's own (utime + stime from /proc) over a steady window once every
call is up, divided by the calls it reports up (the gateway's gauge; rtpengine's ng `list`).
Memory is its RSS above its idle RSS, per call. The generator, shim and sipp share the box.

With --awake every CPU runs a lowest-priority spinner throughout (load_ramp.py's
`cores_kept_awake`), so that no party's core idles and gives up its caches to the host: the
floor never sleeps, the gateway's paced worker does, and the comparison is then made on cores
that keep their caches.

usage: scripts/peer_compare.py [--calls 50] [--rounds 3] [--window 10] [--no-build] [--no-floor]
       [--complexity N] [--turn-ms N] [--awake]
Installs rtpengine-daemon from Debian when it is missing. Bounded: each round ends within
the call length plus the generator's own 30 s limit.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_ramp import (  # noqa: E402
    HTTP_PORT, ROOT, SIPP_MEDIA, SIPP_PORT, active_calls, config, cores_kept_awake, media_section,
    memory_mb, step, wait_http,
)

OUT = ROOT / "target" / "peer-compare"
NG_PORT, SHIM_PORT = 22230, 28195


def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(map(bencode, v)) + b"e"
    return b"d" + b"".join(bencode(k) + bencode(v[k]) for k in sorted(v)) + b"e"


def bdecode(data, i=0):
    """Decodes the value at data[i:]; returns it and the index after it."""
    c = data[i:i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1:end]), end + 1
    if c in (b"l", b"d"):
        items, i = [], i + 1
        while data[i:i + 1] != b"e":
            item, i = bdecode(data, i)
            items.append(item)
        return (items if c == b"l" else dict(zip(items[::2], items[1::2]))), i + 1
    colon = data.index(b":", i)
    end = colon + 1 + int(data[i:colon])
    return data[colon + 1:end], end


def ng(command, cookies=iter(range(1, 1 << 62))):
    """One ng command to rtpengine; its reply as a dict. Each request has a cookie of its
    own: rtpengine answers a cookie it has seen with the reply it cached for it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        cookie = b"peer-compare-%d-%d " % (os.getpid(), next(cookies))
        s.sendto(cookie + bencode(command), ("127.0.0.1", NG_PORT))
        reply = s.recv(1 << 20)
    return bdecode(reply, reply.index(b" ") + 1)[0]


def rtpengine_calls():
    return float(len(ng({"command": "list", "limit": 100000}).get(b"calls", [])))


def wait_rtpengine(timeout=20):
    until = time.time() + timeout
    while time.time() < until:
        try:
            if ng({"command": "ping"}).get(b"result") == b"pong":
                return
        except OSError:
            time.sleep(0.1)
    sys.exit("rtpengine did not come up; see target/peer-compare/rtpengine.log")


def rtpengine_opus_encoder():
    """How rtpengine codes Opus, read from the libavcodec it links: rtpengine 10.5 codes Opus
    through libavcodec's `libopus` encoder and sets only its frame duration
    (`opus_set_enc_options` in its lib/codeclib.c), so that encoder's defaults are its
    settings. `--complexity` changes only the gateway's."""
    import ctypes
    import ctypes.util
    try:
        avcodec = ctypes.CDLL(ctypes.util.find_library("avcodec") or "libavcodec.so.59")
        avutil = ctypes.CDLL(ctypes.util.find_library("avutil") or "libavutil.so.57")
        avcodec.avcodec_find_encoder_by_name.restype = ctypes.c_void_p
        avcodec.avcodec_alloc_context3.restype = ctypes.c_void_p
        avcodec.avcodec_alloc_context3.argtypes = [ctypes.c_void_p]
        avcodec.avcodec_free_context.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        avutil.av_opt_get_int.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                          ctypes.POINTER(ctypes.c_int64)]
        codec = avcodec.avcodec_find_encoder_by_name(b"libopus")
        ctx = ctypes.c_void_p(avcodec.avcodec_alloc_context3(codec)) if codec else None
        if not ctx:
            return "rtpengine's Opus encoder: libavcodec has no libopus encoder here"
        values = {}
        for name in (b"compression_level", b"cutoff"):
            value = ctypes.c_int64()
            # AV_OPT_SEARCH_CHILDREN (1): the codec's private options as well as the context's.
            if avutil.av_opt_get_int(ctx, name, 1, ctypes.byref(value)) == 0:
                values[name.decode()] = value.value
        avcodec.avcodec_free_context(ctypes.byref(ctx))
    except (OSError, AttributeError) as e:
        return f"rtpengine's Opus encoder: not read ({e})"
    band = {0: "full band"}.get(values.get("cutoff"), f"cutoff {values.get('cutoff')} Hz")
    return (f"rtpengine's Opus encoder at libavcodec's defaults: complexity "
            f"{values.get('compression_level', '?')}, {band}, at 48 kHz (as rtpengine codes all Opus)")


def opus_env(complexity):
    """The environment for a floor's run: ours, with the gateway's Opus complexity where one
    was given (`OPUS_COMPLEXITY`, which the bench and `opus-paced` read)."""
    return {**os.environ, **({"OPUS_COMPLEXITY": str(complexity)} if complexity is not None else {})}


def floor_pct(complexity):
    """The libopus floors per call (decode + encode, 50 frames a second) at the gateway's
    settings, % of a core: of the load's signal ("load"), the same for 50 calls' coders a
    frame each in turn ("calls", their states then out of the core's caches, as in a box
    carrying those calls), and of the bench's speech-like signal ("speech_like")."""
    env = opus_env(complexity)
    # `cargo bench -p gateway` also links target/release/gateway, with the features of the
    # gateway alone rather than those the build above unifies with gateway-tests': keep the
    # binary that was measured (or put in place to be measured) for the next run.
    gateway = ROOT / "target/release/gateway"
    kept = OUT / "gateway.measured"
    shutil.copy2(gateway, kept)
    try:
        out = subprocess.run(
            ["cargo", "bench", "--locked", "-p", "gateway", "--bench", "media", "--", "floor",
             "--warm-up-time", "1", "--measurement-time", "4", "--noplot"],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    finally:
        # A new file, not a write into the old one, which cargo's own copy may share (a hard
        # link) and would then take for its build.
        gateway.unlink(missing_ok=True)
        shutil.copy2(kept, gateway)
    floors = {}
    for key, name in (("load", "load floor: "), ("calls", "load floor, 50 calls in turn"),
                      ("speech_like", "floor: ")):
        m = re.search(r"^" + re.escape(name) + r"[^\n]*\n\s*time:\s*\[\S+ \S+ (\S+) (\S+)", out, re.M)
        if not m:
            sys.exit(f"no {name!r} figure in the bench's output:\n{out}")
        value, unit = float(m.group(1)), m.group(2)
        micros = value * {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3}[unit]
        floors[key] = round(micros * 50 / 1e6 * 100, 3)
    return floors


def floor_beside(complexity):
    """The load floor now, % of a core per call: one call's Opus coders frame after frame
    (`opus-paced --busy --calls 1`), 1,000 seconds of audio (about 2–4 s of CPU)."""
    env = opus_env(complexity)
    binary = ROOT / "target/release/opus-paced"
    if not binary.exists():
        sys.exit(f"{binary} is missing: run without --no-build, or build it with "
                 "`cargo build --release -p gateway-tests --bin opus-paced`")
    out = subprocess.run([str(binary), "--busy", "--calls", "1", "--seconds", "1000"],
                         env=env, check=True, capture_output=True, text=True).stdout
    m = re.search(r"\(([0-9.]+) µs a frame both ways\)", out)
    if not m:
        sys.exit(f"no figure in opus-paced's output: {out!r}")
    return round(float(m.group(1)) * 50 / 1e6 * 100, 4)


def run_gateway(n, window, complexity=None, turn_ms=None, worker_clock=None):
    text = config(n + 100) + media_section(complexity, turn_ms=turn_ms, worker_clock=worker_clock)
    (OUT / "gateway.toml").write_text(text)
    gateway = subprocess.Popen(
        [str(ROOT / "target/release/gateway"), "run", "--config", str(OUT / "gateway.toml")],
        stdout=subprocess.DEVNULL, stderr=open(OUT / "gateway.log", "w"))
    try:
        wait_http(HTTP_PORT)
        return step(gateway, n, window, [], memory_mb(gateway.pid))
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=90)


def run_rtpengine(n, window):
    rtpengine = subprocess.Popen(
        ["rtpengine", "--foreground", "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{NG_PORT}",
         "--port-min=30000", "--port-max=39999", "--table=-1", "--log-stderr", "--log-level=4",
         "--pidfile=/dev/null", "--delete-delay=0"],
        stdout=subprocess.DEVNULL, stderr=open(OUT / "rtpengine.log", "w"))
    shim = None
    try:
        wait_rtpengine()
        shim = subprocess.Popen(
            [str(ROOT / "target/release/rtpengine-ws"), "--listen", f"127.0.0.1:{SHIM_PORT}",
             "--ng", f"127.0.0.1:{NG_PORT}", "--echo", f"127.0.0.1:{SIPP_MEDIA}"],
            stdout=subprocess.DEVNULL, stderr=open(OUT / "rtpengine-ws.log", "w"))
        time.sleep(0.5)
        return step(rtpengine, n, window, [], memory_mb(rtpengine.pid),
                    url=f"ws://127.0.0.1:{SHIM_PORT}/ws", active=rtpengine_calls)
    finally:
        if shim:
            shim.terminate()
            shim.wait(timeout=10)
        rtpengine.terminate()
        rtpengine.wait(timeout=30)


def median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--calls", type=int, default=50)
    args.add_argument("--rounds", type=int, default=3, help="each round runs both, alternating")
    args.add_argument("--window", type=float, default=10.0, help="seconds of steady state measured")
    args.add_argument("--no-build", action="store_true")
    args.add_argument("--no-floor", action="store_true", help="skip the libopus floor bench")
    args.add_argument("--complexity", type=int, default=None,
                      help="the gateway's media.opus_complexity (default: its default, 1); "
                      "rtpengine always codes at its own default")
    args.add_argument("--turn-ms", type=int, default=None,
                      help="the gateway's media.turn_ms (default: its default, 2)")
    args.add_argument("--no-worker-clock", action="store_true",
                      help="the gateway's transcoding calls tick at their own times and send the "
                           "browser's audio on as it arrives (media.worker_clock = false)")
    args.add_argument("--awake", action="store_true",
                      help="keep every CPU from idling with a lowest-priority spinner throughout")
    a = args.parse_args()
    if not shutil.which("rtpengine"):
        print("installing rtpengine-daemon (Debian)", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "rtpengine-daemon"],
                       check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not shutil.which("sipp"):
        sys.exit("sipp not found: scripts/install-deps.sh installs it")
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "gateway", "-p",
                        "gateway-tests", "--bin", "gateway", "--bin", "loadgen", "--bin",
                        "rtpengine-ws", "--bin", "opus-paced"], cwd=ROOT, check=True)
    OUT.mkdir(parents=True, exist_ok=True)
    version = subprocess.run(["rtpengine", "--version"], capture_output=True, text=True)
    version = (version.stdout + version.stderr).strip()
    # One sipp for both: the gateway's SIP trunk, and for both the RTP echo on SIPP_MEDIA.
    sipp = subprocess.Popen(
        ["sipp", "-sf", str(ROOT / "tests/sipp/echo.xml"), "-i", "127.0.0.1", "-p", str(SIPP_PORT),
         "-mp", str(SIPP_MEDIA), "-rtp_echo", "-m", "1000000", "-nostdin", "-timeout", "3600s"],
        cwd=OUT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rounds = []

    def bracketed(run):
        # The floor just before and just after the run, unless told to skip the floor.
        if a.no_floor:
            return run()
        before = floor_beside(a.complexity)
        row = run()
        after = floor_beside(a.complexity)
        row["floor_beside_pct_per_call"] = round((before + after) / 2, 4)
        row["floor_beside_before_after"] = [before, after]
        return row

    with cores_kept_awake(a.awake):
        try:
            for r in range(a.rounds):
                # Alternate who goes first, so neither always meets the box warmer.
                order = [("gateway", lambda: bracketed(
                              lambda: run_gateway(a.calls, a.window, a.complexity, a.turn_ms,
                                                 False if a.no_worker_clock else None))),
                         ("rtpengine", lambda: run_rtpengine(a.calls, a.window))]
                row = {}
                for name, run in (order if r % 2 == 0 else order[::-1]):
                    row[name] = run()
                    print(name, json.dumps(row[name]), file=sys.stderr)
                    time.sleep(3)
                rounds.append(row)
        finally:
            sipp.terminate()
            sipp.wait(timeout=10)
        floors = None if a.no_floor else floor_pct(a.complexity)
    floor = floors and floors["load"]

    def med(name, key):
        return median([r[name][key] for r in rounds])

    table = {name: {key: med(name, key) for key in
                    ("calls_up", "gateway_cpu_pct_per_call", "gateway_rss_mb_per_call", "gateway_anon_mb_per_call",
                     "loss_pct", "tone_snr_db_p50", "calls_failed", "setup_ms_p50")}
             for name in ("gateway", "rtpengine")}
    for name in table:
        table[name]["tone_intact"] = all(r[name]["tone_intact"] for r in rounds)
    g, e = table["gateway"], table["rtpengine"]
    ratios = [r["rtpengine"]["gateway_cpu_pct_per_call"] / r["gateway"]["gateway_cpu_pct_per_call"]
              for r in rounds if r["gateway"]["gateway_cpu_pct_per_call"]]
    beside = [r["gateway"]["gateway_cpu_pct_per_call"] / r["gateway"]["floor_beside_pct_per_call"]
              for r in rounds if r["gateway"].get("floor_beside_pct_per_call")]
    cpu = Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(": \t")
    lines = [
        f"{cpu}, {os.cpu_count()} cores{' kept awake' if a.awake else ''}; {a.calls} calls, {a.rounds} rounds, medians; {version}; "
        f"gateway Opus complexity {1 if a.complexity is None else a.complexity}, narrow band, "
        f"media turn {2 if a.turn_ms is None else a.turn_ms} ms"
        f"{', calls at their own times' if a.no_worker_clock else ''}; {rtpengine_opus_encoder()}",
        "",
        "| | % of a core per call | MB per call | anon MB per call | calls up | loss % | tone (sampled, SNR dB) | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in (("gateway", g), ("rtpengine", e)):
        lines.append(f"| {name} | {t['gateway_cpu_pct_per_call']} | {t['gateway_rss_mb_per_call']} | "
                     f"{t['gateway_anon_mb_per_call']} | {t['calls_up']} | {t['loss_pct']} | {'yes' if t['tone_intact'] else 'NO'} "
                     f"({t['tone_snr_db_p50']}) | {t['calls_failed']} |")
    if floor is not None:
        lines.append(f"| libopus floor (these calls' signal) | {floor} | | | | | | |")
        lines.append(f"| … 50 calls' coders in turn | {floors['calls']} | | | | | | |")
        lines.append(f"| libopus floor (the bench's speech-like signal) | {floors['speech_like']} | | | | | | |")
    lines += ["", f"rtpengine / gateway CPU per call, per round: "
              f"{', '.join(f'{x:.2f}×' for x in ratios)}; median {median(ratios):.2f}×"]
    if e["gateway_rss_mb_per_call"] and g["gateway_rss_mb_per_call"]:
        lines.append(f"rtpengine / gateway memory per call: "
                     f"{e['gateway_rss_mb_per_call'] / g['gateway_rss_mb_per_call']:.2f}×"
                     + (f" (anonymous: {e['gateway_anon_mb_per_call'] / g['gateway_anon_mb_per_call']:.2f}×)"
                        if e["gateway_anon_mb_per_call"] and g["gateway_anon_mb_per_call"] else ""))
    if beside:
        lines.append(f"gateway / libopus floor beside each round (opus-paced --busy --calls 1, before "
                     f"and after the gateway's run: "
                     f"{', '.join(str(r['gateway']['floor_beside_pct_per_call']) for r in rounds)} %): "
                     f"{', '.join(f'{x:.2f}×' for x in beside)}; median {median(beside):.2f}×")
    if floor:
        lines.append(f"gateway / libopus floor: {g['gateway_cpu_pct_per_call'] / floor:.2f}× "
                     f"(against the speech-like signal's: {g['gateway_cpu_pct_per_call'] / floors['speech_like']:.2f}×)")
    # A panic is a bug; one the gateway survived still cost some call or datagram.
    faults = max((r["gateway"].get("gateway_faults") or 0 for r in rounds), default=0)
    if faults:
        lines.append(f"THE GATEWAY PANICKED ({faults} in a round, `gateway_faults_total`): a bug; "
                     f"the log of its last round, {OUT / 'gateway.log'}, says where. Its figures include what it cost.")
    (OUT / "compare.json").write_text(json.dumps(
        {"calls": a.calls, "cores_kept_awake": a.awake, "rounds": rounds, "median": table, "floor_pct_per_call": floor,
         "floor_speech_like_pct_per_call": floors and floors["speech_like"],
         "floor_calls_in_turn_pct_per_call": floors and floors["calls"],
         "ratio_rtpengine_over_gateway": ratios, "ratio_gateway_over_floor_beside": beside,
         "rtpengine": version}, indent=2))
    (OUT / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
