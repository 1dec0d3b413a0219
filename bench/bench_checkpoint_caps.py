"""Peak memory of the server when a checkpoint's config.json is a 1 GiB file (sparse: no disk used),
and how long the answer takes — the cost of reading a file whole before its size was capped.

    python bench/bench_checkpoint_caps.py [--size-mib 1024]

One server (the tiny model configured), one ``reload_model`` per case; the figure is the growth of
the server's peak RSS (``VmHWM`` in /proc/<pid>/status, Linux) across that call. "good" reloads
the intact tiny model first, so the import of torch/transformers and the model itself are in the
baseline of the cases after it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.rpc_client import RpcProcess, server_env  # noqa: E402


def _hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM (Linux only)")


def _copy(src: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in src.iterdir():
        os.link(f, dest / f.name)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    args = ap.parse_args()
    from vibevoice_rpc.model.tiny import tiny_model_dir

    tiny = tiny_model_dir("auto")
    tmp = Path(tempfile.mkdtemp(prefix="bench-caps-"))
    try:
        cases = {"good": tiny}
        for name in ("config.json", "tokenizer.json"):
            folder = _copy(tiny, tmp / name)
            (folder / name).unlink()
            with open(folder / name, "wb") as f:
                f.truncate(args.size_mib * 2**20)
            cases[f"{args.size_mib} MiB {name}"] = folder
        env = server_env(VIBEVOICE_MODEL_PATH=str(tiny), VIBEVOICE_PRECISION="fp32")
        with RpcProcess(env=env) as p:
            p.call("health", timeout=60)
            print(f"{'case':28s} {'answer':44s} {'peak RSS +MiB':>14s} {'seconds':>8s}")
            for case, folder in cases.items():
                before = _hwm_kib(p.pid)
                t0 = time.perf_counter()
                reply = p.call(
                    "reload_model", {"precision": "fp32", "model_path": str(folder)}, timeout=600
                )
                took = time.perf_counter() - t0
                grew = (_hwm_kib(p.pid) - before) / 1024
                err = reply.get("error")
                answer = f"{err['code']} {err['data']['kind']}" if err else "success"
                print(f"{case:28s} {answer:44s} {grew:14.0f} {took:8.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
