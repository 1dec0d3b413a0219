"""The locks in requirements/ and their check (scripts/lock.py --check, which CI runs)."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import lock  # noqa: E402

CPU = next(t for t in lock.TARGETS if t.name == "cpu")


@pytest.fixture
def project() -> dict:
    return copy.deepcopy(lock.pyproject()["project"])


def edited(tmp_path: Path, target: lock.Target, old: str, new: str) -> Path:
    text = target.path.read_text(encoding="utf-8")
    assert re.search(old, text, re.M), old
    out = tmp_path / target.path.name
    out.write_text(re.sub(old, new, text, count=1, flags=re.M), encoding="utf-8")
    return out


@pytest.mark.parametrize("target", lock.TARGETS, ids=lambda t: t.name)
def test_every_lock_agrees_with_pyproject(target: lock.Target) -> None:
    assert lock.check(target) == []


def test_cpu_lock_names_the_cpu_build_of_torch() -> None:
    assert lock.pins(CPU.path)["torch"] == "2.13.0+cpu"


def test_a_changed_requirement_is_a_disagreement_even_if_the_pin_still_satisfies_it(
    project: dict,
) -> None:
    project["dependencies"] = [
        "transformers>=5.23,<5.99" if d.startswith("transformers") else d
        for d in project["dependencies"]
    ]
    problems = lock.check(CPU, project)
    assert len(problems) == 1 and "made from other requirements" in problems[0]


def test_a_new_requirement_missing_from_the_lock_is_named(project: dict) -> None:
    project["dependencies"].append("pyannote-audio>=3")
    problems = lock.check(CPU, project)
    assert any("lacks pyannote-audio" in p for p in problems), problems


def test_a_pin_outside_the_range_is_named(tmp_path: Path) -> None:
    path = edited(tmp_path, CPU, r"^transformers==[^ ]+", "transformers==5.20.0")
    problems = lock.check(CPU, path=path)
    assert problems == ["cpu.txt pins transformers==5.20.0, outside transformers>=5.23,<6"]


def test_the_cuda_build_of_torch_in_the_cpu_lock_is_refused(tmp_path: Path) -> None:
    path = edited(tmp_path, CPU, r"^torch==2\.13\.0\+cpu", "torch==2.13.0")
    assert lock.check(CPU, path=path) == ["cpu.txt pins torch==2.13.0, not 2.13.0+cpu"]


def test_a_package_without_a_hash_is_refused(tmp_path: Path) -> None:
    text = CPU.path.read_text(encoding="utf-8") + "tqdm==4.67.1\n"
    path = tmp_path / "cpu.txt"
    path.write_text(text, encoding="utf-8")
    assert lock.check(CPU, path=path) == ["cpu.txt has packages without hashes: ['tqdm']"]


def test_a_missing_lock_is_refused(tmp_path: Path) -> None:
    assert lock.check(CPU, path=tmp_path / "cpu.txt") == ["cpu.txt is missing"]


def test_check_command_exits_1_and_says_how_to_refresh(
    project: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project["dependencies"].append("pyannote-audio>=3")
    monkeypatch.setattr(lock, "pyproject", lambda: {"project": project})
    assert lock.main(["--check", "--target", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: cpu.txt lacks pyannote-audio" in out
    assert "python scripts/lock.py" in out
