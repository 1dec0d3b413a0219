"""Tauri line-framing compatibility: a Node client that reads the engine's stdout exactly the way Tauri
v2's shell plugin does (tests/node/tauri_shell.mjs) runs a whole conversation against the real server
with a scripted answer on the tiny model (tests/node/tauri_framing.mjs) and proves that no message is
split, merged or lost. Needs ``node`` on PATH."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .rpc_client import REPO, server_env

NODE = shutil.which("node")
NODE_DIR = REPO / "tests" / "node"
SCRIPT = NODE_DIR / "tauri_framing.mjs"

needs_node = pytest.mark.skipif(NODE is None, reason="node (Node.js) is not on PATH")


def _run_node(
    args: list[str], env: dict[str, str] | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )


@needs_node
@pytest.mark.timeout(60)
def test_the_tauri_stdout_stand_in_splits_and_judges_lines_like_the_plugin() -> None:
    proc = _run_node(["--self-test"], None, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok: self-test")


@needs_node
@pytest.mark.model
@pytest.mark.timeout(180)
def test_a_tauri_style_client_gets_every_message_whole(tiny_model: Path, speech_clip: Path) -> None:
    env = server_env(
        VIBEVOICE_MODEL_PATH=str(tiny_model),
        VIBEVOICE_PRECISION="fp32",
        VIBEVOICE_TEST_SCRIPT="default",
        VIBEVOICE_TEST_STEP_DELAY="0.05",
    )
    args = [
        "--audio", str(speech_clip),
        "--expect", "Grüß Gott! 🎙",
        "--expect", "我很好，谢谢。",
        "--timeout-s", "160",
        "--",
        sys.executable, "-m", "tests.scripted_server",
    ]  # fmt: skip
    proc = _run_node(args, env, timeout=170)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}"
    assert proc.stdout.splitlines()[-1].startswith("ok: "), proc.stdout
    print(proc.stdout.strip())


def test_the_client_under_test_is_the_one_in_docs_tauri_md() -> None:
    source = (NODE_DIR / "vibevoice.ts").read_text(encoding="utf-8")
    doc = (REPO / "docs" / "TAURI.md").read_text(encoding="utf-8")
    assert source.rstrip("\n") in doc, (
        "docs/TAURI.md no longer shows tests/node/vibevoice.ts verbatim"
    )
    generated = (NODE_DIR / "vibevoice_client.mjs").read_text(encoding="utf-8")
    recorded = re.search(r"^// source sha256: ([0-9a-f]{64})$", generated, re.M)
    assert recorded, "vibevoice_client.mjs lacks its source hash"
    assert recorded.group(1) == hashlib.sha256(source.encode("utf-8")).hexdigest(), (
        "vibevoice_client.mjs is stale: run `node tests/node/gen_client.mjs`"
    )
