"""Benchmark audio decoding: ``load_audio`` against the ffmpeg command line, and its peak memory.

Run by hand::

    python bench/bench_audio.py            # 10 min of 16 kHz mono Opus at 64 kbit/s, and M4A
    python bench/bench_audio.py --long     # also 60 min
    python bench/bench_audio.py --formats m4a,webm

The input is what the app records: 16 kHz mono Opus, libopus 64 kbit/s, VoIP mode, made from two
espeak-ng voices joined by sox and looped (synthetic tones and noise when those are missing); M4A
(AAC 64 kbit/s, what Windows' Sound Recorder saves) and WebM (Opus, what browsers record) of the
same. For each file it prints the median wall time of ``load_audio`` (default threads, and one
thread: for Opus/WAV/FLAC that is libsndfile without parallel parts; for M4A/WebM, PyAV), of
``load_audio`` through the ffmpeg program (the fallback when PyAV is missing; M4A/WebM only), of
``ffmpeg -i X -ac 1 -ar 24000 -f f32le -`` read fully through a pipe, their ratio measured in the
same run, and the peak RSS of ``load_audio`` in a fresh process (high-water mark minus a baseline
taken after imports and a warm-up decode) divided by the output array's size. Goals: ratio <= 1.0,
peak RSS <= 2x the output.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vibevoice_rpc.audio import pyav as audio_pyav  # noqa: E402
from vibevoice_rpc.audio.decode import find_ffmpeg, load_audio  # noqa: E402
from vibevoice_rpc.config import Config  # noqa: E402

TEXT_A = (
    "Good morning everyone, thanks for joining. Let's go through the numbers for the third "
    "quarter first, and then talk about the roadmap for next year."
)
TEXT_B = (
    "Thanks. Revenue is up eleven percent, mostly from the new region. Costs were flat, but "
    "hiring is behind plan, so we should discuss that before the roadmap."
)

RSS_SCRIPT = r"""
import json, os, resource, sys
sys.path.insert(0, sys.argv[1])
from vibevoice_rpc.audio.decode import load_audio


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024


def maxrss():
    # ru_maxrss survives exec (a child starts with its parent's peak), so prefer Linux's per-process
    # high-water mark VmHWM, which "5 > /proc/self/clear_refs" resets to the current RSS.
    if os.path.exists("/proc/self/clear_refs"):
        return status("VmHWM")
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


load_audio(sys.argv[2])  # warm-up: libraries loaded, code paged in
load_audio(sys.argv[4])  # the same for the decoder of the measured file (PyAV for M4A)
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    method = "VmHWM after clear_refs"
except OSError:
    method = "ru_maxrss"
base = maxrss()
audio = load_audio(sys.argv[3], max_seconds=1e9)
print(json.dumps({"base": base, "peak": maxrss(), "out": audio.samples.nbytes, "method": method}))
"""


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, timeout=1800)


def make_conversation(work: Path, ffmpeg: str) -> Path:
    """~20 s of two synthetic speakers at 16 kHz mono, or tones and noise without espeak/sox."""
    out = work / "conversation.wav"
    if out.exists():
        return out
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if espeak and sox:
        run([espeak, "-v", "en-us", "-w", str(work / "a.wav"), TEXT_A])
        run([espeak, "-v", "en-gb+f3", "-w", str(work / "b.wav"), TEXT_B])
        run([sox, str(work / "a.wav"), str(work / "b.wav"), "-r", "16000", "-c", "1", str(out)])
    else:
        src = "sine=f=220:r=16000:d=20,volume='gt(sin(2*PI*0.7*t),-0.2)':eval=frame"
        run([ffmpeg, "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i", src, str(out)])
    return out


def make_input(work: Path, ffmpeg: str, minutes: int, fmt: str) -> Path:
    path = work / f"meeting_{minutes}min.{fmt}"
    if path.exists():
        return path
    conv = make_conversation(work, ffmpeg)
    codec = (
        ["-c:a", "libopus", "-b:a", "64k", "-application", "voip"]
        if fmt in ("opus", "webm")
        else ["-c:a", "aac", "-b:a", "64k"]
    )
    print(f"  making {path.name} …", flush=True)
    cmd = [ffmpeg, "-nostdin", "-y", "-loglevel", "error", "-stream_loop", "-1", "-i", str(conv)]
    run([*cmd, "-t", str(minutes * 60), "-ac", "1", "-ar", "16000", *codec, str(path)])
    return path


CPU: dict[str, list[float]] = {"ours": [], "theirs": []}  # CPU seconds per run, same order


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def time_ffmpeg(ffmpeg: str, path: Path) -> float:
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path)]
    cmd += ["-ac", "1", "-ar", "24000", "-f", "f32le", "-"]
    buf = bytearray(1 << 20)
    c0, s0 = _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, bufsize=0)
    while proc.stdout.readinto(buf):
        pass
    proc.wait()
    took = time.perf_counter() - t0
    # the program's CPU plus ours reading the pipe (a caller has to read it too)
    CPU["theirs"].append(_cpu(resource.RUSAGE_CHILDREN) - c0 + _cpu(resource.RUSAGE_SELF) - s0)
    return took


def time_load(
    path: Path, threads: int | None, program: bool = False, ffmpeg: str | None = None
) -> float:
    """``load_audio`` wall time; ``program``: through the ffmpeg program ``ffmpeg``, as without
    PyAV."""
    real_import_av = audio_pyav.import_av
    if program:
        audio_pyav.import_av = lambda: None
    try:
        c0 = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        decoded = load_audio(path, max_seconds=1e9, threads=threads, ffmpeg=ffmpeg)
        took = time.perf_counter() - t0
        assert decoded.decoder == "ffmpeg" or not program
        if not program and not threads:
            CPU["ours"].append(_cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - c0)
        return took
    finally:
        audio_pyav.import_av = real_import_av


def peak_rss(path: Path, warmup: Path) -> dict:
    cmd = [sys.executable, "-c", RSS_SCRIPT, str(ROOT), str(warmup), str(path), str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(path: Path, ffmpeg: str, reps: int, warmup: Path) -> None:
    rss = peak_rss(path, warmup)  # first, in case the fallback ru_maxrss inherits our peak
    decoder = load_audio(path, max_seconds=1e9).decoder  # page cache warm for both sides
    time_ffmpeg(ffmpeg, path)
    in_process = decoder == "pyav"
    CPU["ours"].clear()
    CPU["theirs"].clear()
    ours, single, program, theirs = [], [], [], []
    for _ in range(reps):  # interleaved, so drift hits all alike
        ours.append(time_load(path, None))
        theirs.append(time_ffmpeg(ffmpeg, path))
        if in_process:
            program.append(time_load(path, None, program=True, ffmpeg=ffmpeg))
        else:
            single.append(time_load(path, 1))
    o, t = statistics.median(ours), statistics.median(theirs)
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    extra = rss["peak"] - rss["base"]
    mb = 1024 * 1024
    print(f"{path.name}  ({path.stat().st_size / mb:.1f} MB, {reps} reps, medians; {decoder})")
    print(f"  load_audio (default threads) {o:7.2f} s   ({min(ours):.2f}-{max(ours):.2f})")
    if in_process:
        f = statistics.median(program)
        print(f"  load_audio via ffmpeg program{f:7.2f} s   (fallback without PyAV: {f / t:.2f}x)")
    else:
        s = statistics.median(single)
        print(f"  load_audio (1 thread)        {s:7.2f} s   ({s / t:.2f}x)")
    print(f"  ffmpeg -ac 1 -ar 24000 f32le {t:7.2f} s   ({min(theirs):.2f}-{max(theirs):.2f})")
    print(
        f"  ratio load_audio / ffmpeg    {o / t:7.2f}x   (per round: median "
        f"{statistics.median(ratios):.2f}x, {min(ratios):.2f}-{max(ratios):.2f})"
    )
    co, ct = statistics.median(CPU["ours"]), statistics.median(CPU["theirs"])
    print(
        f"  CPU seconds (all threads)    {co:7.2f} s vs ffmpeg {ct:.2f} s = {co / ct:.2f}x"
        f"   (what counts when other processes want the cores too)"
    )
    print(
        f"  peak RSS over baseline       {extra / mb:7.1f} MB for a {rss['out'] / mb:.1f} MB output"
        f" array = {extra / rss['out']:.2f}x  ({rss['method']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="also benchmark 60 minutes")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--formats", default="opus,m4a", help="comma-separated: opus, m4a")
    parser.add_argument(
        "--workdir", default=str(Path(tempfile.gettempdir()) / "vibevoice-bench-audio")
    )
    args = parser.parse_args()
    ffmpeg = find_ffmpeg(Config.from_env().ffmpeg)  # VIBEVOICE_FFMPEG, checked as the server does
    if ffmpeg is None:
        sys.exit("ffmpeg not found: install it or set VIBEVOICE_FFMPEG")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout
    import av
    import soundfile
    import soxr

    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, soundfile "
        f"{soundfile.__version__} (libsndfile {soundfile.__libsndfile_version__}), soxr "
        f"{soxr.__version__}, PyAV {av.__version__} (libavcodec "
        f"{'.'.join(map(str, av.library_versions['libavcodec']))}), {version.splitlines()[0]}"
    )
    print(f"load average {os.getloadavg()[0]:.2f}; {' '.join(sys.argv)}")
    warmup = ROOT / "vibevoice_rpc" / "data" / "two_speakers.opus"
    for minutes in [10, 60] if args.long else [10]:
        for fmt in args.formats.split(","):
            bench(make_input(work, ffmpeg, minutes, fmt.strip()), ffmpeg, args.reps, warmup)


if __name__ == "__main__":
    main()
