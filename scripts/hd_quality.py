#!/usr/bin/env python3
"""HD voice by measurement: PESQ in its wideband mode (ITU-T P.862.2, MOS-LQO) of speech that
reached a browser from a G.711 trunk and from a G.722 trunk, both through the gateway's own
code (gateway/examples/hd_quality.rs: G.711 → Opus at 8 kHz, or G.722 → Opus at 16 kHz) and
decoded at 16 kHz as a browser would, against the 16 kHz speech before it.

The speech is synthesised with espeak-ng (two voices, two passages of about 8 s each), so the
scores compare the two paths with each other; they are not the scores of recorded speech.

usage: scripts/hd_quality.py
Needs espeak-ng (`apt-get install espeak-ng`); installs numpy and pesq from PyPI into
target/quality-venv on first use. Writes target/hd-quality/quality.{json,md}.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from opus_quality import PASSAGES, ROOT, VOICES, in_venv  # noqa: E402

OUT = ROOT / "target" / "hd-quality"


def resample(samples, rate, to):
    """Band-limited resampling (spectrum cut at the new Nyquist, inverse FFT at the new length)."""
    import numpy as np

    n = int(round(len(samples) * to / rate))
    spectrum = np.fft.rfft(samples)[: n // 2 + 1]
    return np.fft.irfft(spectrum, n) * (n / len(samples))


def speech(text, voice):
    import numpy as np

    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "--stdout", text],
                         check=True, capture_output=True).stdout
    rate = int.from_bytes(wav[24:28], "little")
    pcm = resample(np.frombuffer(wav[44:], dtype="<i2").astype(np.float64), rate, 16000)
    # Active speech near -26 dBov, the level P.862 expects.
    rms = np.sqrt(np.mean(pcm[np.abs(pcm) > 100] ** 2))
    pcm = pcm * (32768 * 10 ** (-26 / 20) / rms)
    return np.clip(np.round(pcm), -32768, 32767)


def main():
    if not shutil.which("espeak-ng"):
        sys.exit("espeak-ng not found: apt-get install espeak-ng")
    in_venv(__file__)
    import numpy as np
    from pesq import pesq

    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "gateway", "--example",
                    "hd_quality"], cwd=ROOT, check=True)
    tool = ROOT / "target" / "release" / "examples" / "hd_quality"
    OUT.mkdir(parents=True, exist_ok=True)
    rows = {"g711": [], "g722": []}
    for i, text in enumerate(PASSAGES):
        for voice in VOICES:
            ref = speech(text, voice)
            name = f"speech-{i}-{voice.replace('+', '-')}"
            wide = OUT / f"{name}.16k.s16le"
            wide.write_bytes(ref.astype("<i2").tobytes())
            narrow = OUT / f"{name}.8k.s16le"
            narrow.write_bytes(np.clip(np.round(resample(ref, 16000, 8000)), -32768, 32767)
                               .astype("<i2").tobytes())
            for path, inp in (("g711", narrow), ("g722", wide)):
                out = OUT / f"{name}.{path}.out"
                subprocess.run([str(tool), str(inp), str(out), path], check=True)
                deg = np.frombuffer(out.read_bytes(), dtype="<i2").astype(np.float64)
                n = min(len(ref), len(deg))
                rows[path].append(pesq(16000, ref[:n], deg[:n], "wb"))
    result = {p: {"pesq_wb": [round(s, 3) for s in scores],
                  "pesq_wb_mean": round(float(np.mean(scores)), 3)} for p, scores in rows.items()}
    (OUT / "quality.json").write_text(json.dumps(result, indent=2))
    lines = ["| trunk codec (browser decodes at 16 kHz) | PESQ-WB mean | per sample |",
             "|---|---:|---|"]
    for path, label in (("g711", "G.711 → Opus 8 kHz"), ("g722", "G.722 → Opus 16 kHz")):
        r = result[path]
        lines.append(f"| {label} | {r['pesq_wb_mean']} | {', '.join(map(str, r['pesq_wb']))} |")
    (OUT / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
