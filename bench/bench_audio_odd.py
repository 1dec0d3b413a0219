"""Peak memory of ``load_audio`` on odd and hostile files, with each decoder (issue #19.6).

Run by hand::

    python bench/bench_audio_odd.py                 # the limit at its default, 4 h
    python bench/bench_audio_odd.py --limit 600     # a 10 min limit: the bound is then 57.6 MB

Files (made at run time in a temporary folder): a 255-channel WAV (refused: more than 64 channels),
a 1 Hz WAV whose 14,400 samples would stretch to 4 h (refused: below 1 kHz), a WAV header claiming
2^31-1 Hz (refused: it used to ask numpy for 80 GB for one block), the widest file still accepted
(64 channels at 768 kHz, 1 s: 98 MB of input), and 10 min of ADTS AAC whose rate alternates between
16 and 44.1 kHz every minute. Each is decoded in a fresh process through soundfile (``.wav``), PyAV
(the same bytes named ``.mka``) and the ffmpeg program (``.mka`` with PyAV switched off), after a
warm-up decode of the bundled clip with the same decoder (the clip as 16-bit PCM in Matroska for
PyAV and the program). The figure is the high-water mark of RSS above the baseline taken after the
warm-up (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), next to the bound of the
design: the output array of the limit (``limit x 24000 x 4`` bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import print_header, temp_dir  # noqa: E402

RSS_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from vibevoice_rpc.audio import decode as audio, pyav as audio_pyav
from vibevoice_rpc.errors import RpcError

root, warm, path, decoder, limit = sys.argv[1:6]
if decoder == "ffmpeg":
    audio_pyav.import_av = lambda: None
if decoder != "soundfile":
    warm = os.path.join(os.path.dirname(path), "warm.mka")  # the clip, for PyAV/the program


def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024


audio.load_audio(warm)  # libraries loaded, code paged in
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = hwm()
try:
    a = audio.load_audio(path, max_seconds=float(limit))
    what = f"decoded {a.duration:.1f} s with {a.decoder}" + (" (+warning)" if a.warnings else "")
    out = a.samples.nbytes
except RpcError as err:
    what, out = f"{err.code} {err.kind}", 0
print(json.dumps({"peak": hwm() - base, "what": what, "out": out}))
"""


def _wav(path: Path, rate: int, channels: int, frames: int, fill: bytes = b"\0\0") -> Path:
    """A 16-bit PCM WAV with any header values."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * channels * 2) % 2**32, channels * 2, 16)
    size = frames * channels * 2
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE")
        f.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size))
        chunk = fill * (1 << 20)
        left = size
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
    return path


def _adts_mixed(work: Path, ffmpeg: str) -> Path:
    """10 min of ADTS AAC: a minute at 16 kHz, one at 44.1 kHz, and so on, joined byte for byte."""
    out = work / "mixed_rates.aac"
    data = b""
    for rate in (16000, 44100):
        part = work / f"part_{rate}.aac"
        src = f"sine=f=220:r={rate}:d=60,volume='gt(sin(2*PI*0.7*t),-0.2)':eval=frame"
        cmd = [ffmpeg, "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i", src]
        subprocess.run([*cmd, "-c:a", "aac", "-b:a", "64k", str(part)], check=True, timeout=120)
        data += part.read_bytes()
    out.write_bytes(data * 5)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=float, default=4 * 3600.0, help="max_seconds (default 4 h)")
    args = parser.parse_args()
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        sys.exit("ffmpeg not found: it makes the AAC file and is one of the decoders measured")
    print_header("audio: peak RSS on odd and hostile files")
    work = temp_dir("vibevoice-bench-odd-")
    files = {
        "255 channels, 24 kHz, 10 s": _wav(work / "c255.wav", 24000, 255, 240_000),
        "1 Hz, 14,400 samples (4 h)": _wav(work / "r1.wav", 1, 1, 14_400),
        "2^31-1 Hz header": _wav(work / "huge_rate.wav", 2**31 - 1, 1, 4800),
        "64 channels, 768 kHz, 1 s": _wav(work / "c64.wav", 768_000, 64, 768_000, b"\x01\x02"),
        "ADTS 10 min, 16/44.1 kHz": _adts_mixed(work, ffmpeg),
    }
    warm = ROOT / "vibevoice_rpc" / "data" / "two_speakers.opus"
    cmd = [ffmpeg, "-nostdin", "-y", "-loglevel", "error", "-i", str(warm), "-c:a", "pcm_s16le"]
    subprocess.run([*cmd, str(work / "warm.mka")], check=True, timeout=60)
    bound = args.limit * 24000 * 4
    print(f"limit {args.limit:g} s: its output array is {bound / 2**20:.1f} MiB")
    print(f"{'file':<28} {'decoder':<9} {'outcome':<42} {'peak RSS':>10} {'/ bound':>8}")
    for name, path in files.items():
        for decoder in ("soundfile", "pyav", "ffmpeg"):
            target = path
            if path.suffix == ".aac" and decoder == "soundfile":
                continue  # libsndfile does not read AAC
            if path.suffix == ".wav" and decoder != "soundfile":
                target = path.with_suffix(".mka")  # PyAV first (then the ffmpeg program)
                if not target.exists():
                    os.link(path, target)
            cmd = [sys.executable, "-c", RSS_SCRIPT, str(ROOT), str(warm), str(target), decoder]
            out = subprocess.run(
                [*cmd, str(args.limit)], capture_output=True, text=True, timeout=1800
            )
            if out.returncode:
                print(f"{name:<28} {decoder:<9} FAILED: {out.stderr.strip()[-300:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{name:<28} {decoder:<9} {r['what'][:42]:<42} "
                f"{r['peak'] / 2**20:8.1f} MiB {r['peak'] / bound:8.3f}"
            )
    return 0


if __name__ == "__main__":
    from bench._common import run_main

    run_main(main)
