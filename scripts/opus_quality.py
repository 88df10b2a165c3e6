#!/usr/bin/env python3
"""Listening quality of the audio the gateway sends to browsers, per Opus encoder setting:
PESQ (ITU-T P.862, narrowband MOS-LQO) of speech that went trunk G.711 → jitter buffer →
Opus encoder (the gateway's own code, gateway/examples/opus_quality.rs) → Opus decoder,
against the speech before it. For choosing `media.opus_complexity` by measurement.

The speech is synthesised with espeak-ng (two voices, two passages of about 8 s each), so
the scores compare settings with each other; they are not the scores of recorded speech.

With --browser, the other direction instead, per band and bitrate a browser codes at (what
the gateway's answer allows it): speech captured at 48 kHz → a browser's Opus encoder
(libwebrtc's settings, tests/src/browser_opus.rs) → the gateway's decoder at 8 kHz → G.711
(gateway/examples/browser_quality.rs), against the same speech at 8 kHz (PESQ NB); and for
HD voice, decoded at 16 kHz → G.722, against the speech at 16 kHz (PESQ WB, P.862.2).

usage: scripts/opus_quality.py [--complexities 0,1,2,3,5,8,10] [--browser]
Needs espeak-ng (`apt-get install espeak-ng`); installs numpy and pesq from PyPI into
target/quality-venv on first use. Writes target/opus-quality/quality.{json,md}.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "opus-quality"
VENV = ROOT / "target" / "quality-venv"

PASSAGES = [
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish.",
    "Thank you for calling. Please hold while we connect you to the next available agent. "
    "Your order number is four seven two nine, and it will ship on Thursday morning.",
]
VOICES = ["en-us", "en-us+f3"]


def in_venv(script=__file__):
    """Re-runs `script` (this one unless a caller names itself) inside a venv with numpy and
    pesq when they are missing."""
    try:
        import numpy  # noqa: F401
        import pesq  # noqa: F401
        return
    except ImportError:
        pass
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    # Also after an install that was cut short: the venv exists, its packages do not.
    if subprocess.run([str(python), "-c", "import numpy, pesq"],
                      capture_output=True).returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy<3", "pesq==0.0.4"],
                       check=True)
    os.execv(str(python), [str(python), script, *sys.argv[1:]])


def resample(samples, rate, new_rate):
    """Band-limited resampling (spectrum cut at the lower Nyquist frequency, inverse FFT at
    the new length)."""
    import numpy as np

    n = int(round(len(samples) * new_rate / rate))
    spectrum = np.fft.rfft(samples)[: n // 2 + 1]
    return np.fft.irfft(spectrum, n) * (n / len(samples))


def speech(text, voice, rates=(8000,)):
    """The passage at each of `rates`, all with the gain that puts the 8 kHz one at -26 dBov."""
    import numpy as np

    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "--stdout", text],
                         check=True, capture_output=True).stdout
    # espeak-ng writes a 44-byte RIFF header and 16-bit mono PCM at 22050 Hz.
    source_rate = int.from_bytes(wav[24:28], "little")
    source = np.frombuffer(wav[44:], dtype="<i2").astype(np.float64)
    pcm = resample(source, source_rate, 8000)
    # Active speech near -26 dBov, the level P.862 expects.
    gain = 32768 * 10 ** (-26 / 20) / np.sqrt(np.mean(pcm[np.abs(pcm) > 100] ** 2))
    return [np.clip(np.round(resample(source, source_rate, r) * gain), -32768, 32767)
            .astype("<i2") for r in rates]


def browser_rows(np, pesq, samples):
    """PESQ of the browser → trunk direction per browser band and bitrate."""
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "gateway", "--example",
                    "browser_quality"], cwd=ROOT, check=True)
    tool = ROOT / "target" / "release" / "examples" / "browser_quality"
    # (label, trunk codec, the browser's maxplaybackrate, its bitrate)
    settings = [("G.711 call: full band, 32 kb/s (a browser's default)", "g711", 48000, 32000)]
    settings += [(f"G.711 call: narrowband, {b // 1000} kb/s", "g711", 8000, b)
                 for b in (12000, 16000, 20000, 24000, 32000)]
    settings.append(("G.722 call: full band, 32 kb/s (a browser's default)", "g722", 48000, 32000))
    settings += [(f"G.722 call: wideband, {b // 1000} kb/s", "g722", 16000, b)
                 for b in (20000, 24000, 32000)]
    rows = []
    for label, codec, playback, bitrate in settings:
        scores = []
        for ref_path, wide_path, hd_path in samples:
            out = ref_path.with_suffix(f".browser-{codec}-{playback}-{bitrate}.out")
            subprocess.run([str(tool), str(wide_path), str(out), str(playback), str(bitrate),
                            codec], check=True)
            ref_file, rate, mode = (ref_path, 8000, "nb") if codec == "g711" else (hd_path, 16000, "wb")
            ref = np.frombuffer(ref_file.read_bytes(), dtype="<i2").astype(np.float64)
            deg = np.frombuffer(out.read_bytes(), dtype="<i2").astype(np.float64)
            n = min(len(ref), len(deg))
            scores.append(pesq(rate, ref[:n], deg[:n], mode))
        rows.append({"setting": label, "codec": codec, "pesq_mode": mode,
                     "playback_hz": playback, "bitrate": bitrate,
                     "pesq": [round(s, 3) for s in scores],
                     "pesq_mean": round(float(np.mean(scores)), 3)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--complexities", default="0,1,2,3,5,8,10")
    args.add_argument("--browser", action="store_true",
                      help="the browser → trunk direction, per browser band and bitrate")
    a = args.parse_args()
    if not shutil.which("espeak-ng"):
        sys.exit("espeak-ng not found: apt-get install espeak-ng")
    in_venv()
    import numpy as np
    from pesq import pesq

    OUT.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, text in enumerate(PASSAGES):
        for voice in VOICES:
            path = OUT / f"speech-{i}-{voice.replace('+', '-')}.s16le"
            narrow, wide, hd = speech(text, voice, (8000, 48000, 16000))
            path.write_bytes(narrow.tobytes())
            wide_path = path.with_suffix(".48k.s16le")
            wide_path.write_bytes(wide.tobytes())
            hd_path = path.with_suffix(".16k.s16le")
            hd_path.write_bytes(hd.tobytes())
            samples.append((path, wide_path, hd_path))
    if a.browser:
        rows = browser_rows(np, pesq, samples)
        (OUT / "browser.json").write_text(json.dumps(rows, indent=2))
        lines = ["| call, and what the browser codes | PESQ (MOS-LQO), mean of 4 | per sample |",
                 "|---|---:|---|"]
        for r in rows:
            lines.append(f"| {r['setting']} | {r['pesq_mean']} ({r['pesq_mode'].upper()}) | "
                         f"{', '.join(map(str, r['pesq']))} |")
        (OUT / "browser.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    samples = [path for path, _, _ in samples]
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "gateway", "--example",
                    "opus_quality"], cwd=ROOT, check=True)
    tool = ROOT / "target" / "release" / "examples" / "opus_quality"
    # (label, complexity, expected loss % the encoder codes FEC for, % of packets lost).
    settings = [("G.711 only (the ceiling)", "g711", 0, 0)]
    settings += [(f"complexity {c}", c, 0, 0) for c in map(int, a.complexities.split(","))]
    settings.append(("complexity 5, FEC for 10 % loss, nothing lost", 5, 10, 0))
    for c in (1, 3, 5):
        settings.append((f"10 % lost: complexity {c}, no FEC", c, 0, 10))
        settings.append((f"10 % lost: complexity {c}, FEC for 10 %", c, 10, 10))
    rows = []
    for label, complexity, loss, lost in settings:
        scores = []
        for path in samples:
            out = path.with_suffix(f".c{complexity}-l{loss}-d{lost}.out")
            subprocess.run([str(tool), str(path), str(out), str(complexity), str(loss), str(lost)],
                           check=True)
            ref = np.frombuffer(path.read_bytes(), dtype="<i2").astype(np.float64)
            deg = np.frombuffer(out.read_bytes(), dtype="<i2").astype(np.float64)
            scores.append(pesq(8000, ref, deg, "nb"))
        rows.append({"setting": label, "complexity": complexity, "expected_loss_pct": loss,
                     "packets_lost_pct": lost,
                     "pesq_nb": [round(s, 3) for s in scores],
                     "pesq_nb_mean": round(float(np.mean(scores)), 3)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    (OUT / "quality.json").write_text(json.dumps(rows, indent=2))
    lines = ["| setting | PESQ NB (MOS-LQO), mean of 4 | per sample |", "|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['pesq_nb_mean']} | {', '.join(map(str, r['pesq_nb']))} |")
    (OUT / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
