"""The Rust functions in docs/TAURI.md that are not covered by the Node tests (the stderr drain and
the spawn error message), compiled verbatim from the page and run with rustc's test harness."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUSTC = shutil.which("rustc")

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(RUSTC is None, reason="rustc is not installed"),
]

PRELUDE = "use std::io::{self, BufRead, BufReader, Read};\nuse std::path::Path;\n\n"


def _snippet() -> str:
    doc = (REPO / "docs" / "TAURI.md").read_text(encoding="utf-8")
    start = doc.index("/// The engine's stderr, one log line each")
    end = doc.index("\n```", start)
    return doc[start:end] + "\n"


@pytest.mark.parametrize("edition", ["2021", "2024"])
def test_rust_snippets_from_the_tauri_page_compile_and_pass(tmp_path: Path, edition: str) -> None:
    source = tmp_path / "snippets.rs"
    tests = (REPO / "tests" / "rust" / "tauri_snippets_tests.rs").read_text(encoding="utf-8")
    source.write_text(PRELUDE + _snippet() + "\n" + tests, encoding="utf-8")
    binary = tmp_path / "snippets"
    build = subprocess.run(
        [RUSTC, "--edition", edition, "--test", "-D", "warnings", str(source), "-o", str(binary)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "3 passed" in run.stdout, run.stdout + run.stderr
