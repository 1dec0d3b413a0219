"""The locks: what the README's set-up, CI and the bundles install, pinned with hashes.

    pip install uv==0.13.10 && python scripts/lock.py           # refresh every lock (needs the network)
    python scripts/lock.py --check                               # CI: do the locks agree with pyproject.toml?

``pyproject.toml`` keeps ranges (people who ``pip install`` the library bring their own torch); the
locks under ``requirements/`` pin every package of one environment, with the sha256 of each file, for
one target each:

* ``cpu.txt`` — Linux x86_64, Python 3.11, ``torch==2.13.0+cpu``: the README's set-up, ``.ci/run``
  and the CPU bundle. It names the ``+cpu`` build on purpose: on a machine without a CPU wheel at
  hand, ``torch==2.13.0`` resolves PyPI's CUDA 13 build (1.1 GB + 2.7 GB of nvidia wheels), and the
  bundle built from it is 4.5 GB. pip finds the ``+cpu`` file in the PyTorch CPU index
  (``--extra-index-url https://download.pytorch.org/whl/cpu``) or in a local wheel folder (these
  machines' pip configuration adds one).
* ``cuda-linux.txt`` — Linux x86_64, Python 3.11, PyPI's ``torch==2.13.0`` (CUDA 13.0) and its nvidia
  wheels: the CUDA bundle (README, "The CUDA engine").
* ``cpu-windows.txt`` — Windows x86_64, Python 3.11, PyPI's ``torch==2.13.0`` (on Windows PyPI's torch
  is the CPU build): the Windows workflow.

Each lock holds the extras ``quant``, ``dev`` and ``build`` (the Windows one ``dev`` and ``build``:
its workflow leaves bitsandbytes out). The resolver is uv (``uv pip compile``: it resolves for another
platform than the one it runs on, hashes every file of a pinned release, and is released every week or
two); what it writes is a plain requirements file, installed by plain pip with ``--require-hashes``.

Each lock's header records a digest of what it was made from (the dependency tables of
``pyproject.toml`` and the target's settings). ``--check`` fails when that digest differs — a
requirement was added, removed or changed in ``pyproject.toml`` and the lock was not refreshed — and
when a requirement of the target is missing from the lock or its pinned version is outside the
range. Standard library only, except ``--check``'s version comparison (``packaging``, which every
venv of this project has).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
LOCK_DIR = REPO / "requirements"
UV_VERSION = "0.13.10"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_WHEEL_FOLDERS = ("/opt/wheels",)  # where these machines keep torch's CPU wheel


@dataclass(frozen=True)
class Target:
    name: str
    platform: str  # uv's --python-platform
    torch: str  # the exact torch pin
    extras: tuple[str, ...]
    cpu_wheel: bool  # torch comes from the PyTorch CPU index (or a local copy of it)
    sys_platform: str  # for evaluating markers in --check
    purpose: str

    @property
    def path(self) -> Path:
        return LOCK_DIR / f"{self.name}.txt"


PYTHON = "3.11"
TARGETS = (
    Target(
        "cpu",
        "x86_64-manylinux_2_28",
        "2.13.0+cpu",
        ("quant", "dev", "build"),
        True,
        "linux",
        "the README's set-up, .ci/run and the CPU bundle (Linux x86_64)",
    ),
    Target(
        "cuda-linux",
        "x86_64-manylinux_2_28",
        "2.13.0",
        ("quant", "dev", "build"),
        False,
        "linux",
        "the CUDA bundle (Linux x86_64; PyPI's torch 2.13.0 is the CUDA 13.0 build)",
    ),
    Target(
        "cpu-windows",
        "x86_64-pc-windows-msvc",
        "2.13.0",
        ("dev", "build"),
        False,
        "win32",
        "the Windows workflow (PyPI's Windows torch is the CPU build)",
    ),
)


def pyproject() -> dict:
    with (REPO / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def inputs_digest(target: Target, project: dict | None = None) -> str:
    """What a lock is made from: the project's requirements, the target's extras and settings."""
    project = project or pyproject()["project"]
    extras = project.get("optional-dependencies", {})
    data = {
        "dependencies": sorted(project.get("dependencies", [])),
        "requires-python": project.get("requires-python"),
        "extras": {e: sorted(extras.get(e, [])) for e in target.extras},
        "target": [target.platform, PYTHON, target.torch, target.cpu_wheel],
    }
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _cpu_wheel_source() -> list[str]:
    """uv's source of torch's +cpu wheel: a local folder holding it, else the PyTorch CPU index."""
    for folder in CPU_WHEEL_FOLDERS:
        if any(Path(folder).glob("torch-*+cpu-*.whl")):
            return ["--find-links", folder]
    return ["--extra-index-url", PYTORCH_CPU_INDEX, "--index-strategy", "unsafe-best-match"]


def refresh(target: Target, uv: str) -> None:
    LOCK_DIR.mkdir(exist_ok=True)
    constraints = LOCK_DIR / f".{target.name}.constraints.txt"
    constraints.write_text(f"torch=={target.torch}\n", encoding="utf-8")
    cmd = [
        uv, "pip", "compile", "pyproject.toml",
        *[x for e in target.extras for x in ("--extra", e)],
        "--generate-hashes",
        "--python-version", PYTHON,
        "--python-platform", target.platform,
        "--constraint", str(constraints.relative_to(REPO)),
        "--no-header",
        "--quiet",
        "--output-file", str(target.path.relative_to(REPO)),
    ]  # fmt: skip
    if target.cpu_wheel:
        cmd += _cpu_wheel_source()
    try:
        subprocess.run(cmd, cwd=REPO, check=True)
    finally:
        constraints.unlink(missing_ok=True)
    body = target.path.read_text(encoding="utf-8")
    # The source of torch is the installer's business (README), not the lock's: a find-links or
    # index line of the machine that made it would send pip to a folder or host others lack.
    body = "\n".join(
        line
        for line in body.splitlines()
        if not line.startswith(("--find-links", "--extra-index-url", "--index-url"))
    )
    header = (
        f"# Lock for {target.purpose}.\n"
        f"# Made by scripts/lock.py (uv {UV_VERSION} pip compile, Python {PYTHON}, "
        f"{target.platform}, torch=={target.torch}, extras {','.join(target.extras)}).\n"
        "# Refresh: pip install uv==" + UV_VERSION + " && python scripts/lock.py\n"
        f"# inputs-digest: {inputs_digest(target)}\n"
    )
    target.path.write_text(header + body.strip() + "\n", encoding="utf-8")
    print(f"wrote {target.path.relative_to(REPO)} ({len(pins(target.path))} packages)")


# --- check -----------------------------------------------------------------------------------

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """Package name (normalised) -> pinned version, for every ``name==version`` line."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _PIN.match(line)
        if m:
            out[_norm(m.group(1))] = m.group(2)
    return out


def recorded_digest(path: Path) -> str | None:
    m = re.search(r"^# inputs-digest: (\w+)$", path.read_text(encoding="utf-8"), re.M)
    return m.group(1) if m else None


def check(target: Target, project: dict | None = None, path: Path | None = None) -> list[str]:
    """The ways ``target``'s lock (or ``path``) disagrees with pyproject.toml's ``[project]`` table
    (or ``project``); empty: it agrees."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    path = path or target.path
    if not path.is_file():
        return [f"{path.name} is missing"]
    problems = []
    project = project or pyproject()["project"]
    if recorded_digest(path) != inputs_digest(target, project):
        problems.append(
            f"{path.name} was made from other requirements than pyproject.toml's "
            "(a dependency, extra or requires-python changed)"
        )
    locked = pins(path)
    wanted = list(project.get("dependencies", []))
    for extra in target.extras:
        wanted += project.get("optional-dependencies", {}).get(extra, [])
    env = {"sys_platform": target.sys_platform, "python_version": PYTHON, "extra": ""}
    for text in wanted:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        version = locked.get(_norm(req.name))
        if version is None:
            problems.append(f"{path.name} lacks {req.name} (pyproject.toml: {text})")
        elif not req.specifier.contains(Version(version), prereleases=True):
            problems.append(f"{path.name} pins {req.name}=={version}, outside {text}")
    torch = locked.get("torch")
    if torch != target.torch:
        problems.append(f"{path.name} pins torch=={torch}, not {target.torch}")
    unhashed = [
        line.split("==")[0]
        for line, nxt in zip(*_lines_and_next(path), strict=True)
        if _PIN.match(line) and "--hash=" not in line + nxt
    ]
    if unhashed:
        problems.append(f"{path.name} has packages without hashes: {unhashed}")
    return problems


def _lines_and_next(path: Path) -> tuple[list[str], list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines, lines[1:] + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Refresh or check the locks in requirements/.")
    parser.add_argument("--check", action="store_true", help="check the locks, change nothing")
    parser.add_argument(
        "--target", action="append", choices=[t.name for t in TARGETS], help="only these"
    )
    args = parser.parse_args(argv)
    targets = [t for t in TARGETS if not args.target or t.name in args.target]
    if args.check:
        problems = [p for t in targets for p in check(t)]
        for p in problems:
            print(f"FAIL: {p}")
        if problems:
            print("Refresh the locks: pip install uv==" + UV_VERSION + " && python scripts/lock.py")
            return 1
        print(f"locks agree with pyproject.toml: {', '.join(t.path.name for t in targets)}")
        return 0
    uv = shutil.which("uv") or os.path.join(os.path.dirname(sys.executable), "uv")
    if not os.path.exists(uv):
        print(f"uv not found: pip install uv=={UV_VERSION}")
        return 2
    for target in targets:
        refresh(target, uv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
