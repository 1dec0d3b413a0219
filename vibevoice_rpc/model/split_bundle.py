"""The engine half of a split bundle finds its runtime part and loads its libraries before torch.

A CUDA bundle is too large for one release asset, so it ships as two Trispr Flow modules
(``scripts/module_parts.py``): the engine (``analysis``) and the CUDA libraries
(``analysis_runtime``), unpacked by the app into sibling folders of its modules folder,
``<modules>/analysis/`` and ``<modules>/analysis_runtime/``. The engine part carries
``bin/vibevoice-needs-runtime.json`` next to the executable; a whole bundle does not, and then
nothing here does anything.

Where the runtime is: the sibling folder named by the runtime's id (the app installs every module
at ``<modules>/<id>/``), else the engine's own folder (both parts unpacked into one tree).
Its ``bin/vibevoice-runtime.json`` must name the fingerprint the engine was built with.

How the libraries are found before ``import torch``:

* Linux: the dynamic loader reads ``LD_LIBRARY_PATH`` only at process start, and torch's libraries
  look for CUDA through an RPATH relative to themselves (``$ORIGIN/../../nvidia/...``), which points
  into the engine's folder. So each library in the descriptor's ``preload`` list is loaded by its
  full path (``ctypes.CDLL``, ``RTLD_GLOBAL``) in dependency order: once a library with a given
  soname is loaded, the loader uses it for every later library that links against that name.
* Windows: the runtime's library folders go to ``os.add_dll_directory`` (the search path torch's
  own loader uses, ``LOAD_LIBRARY_SEARCH_DEFAULT_DIRS``) and to ``PATH`` (for libraries that load
  others with a plain ``LoadLibrary``).

Both happen on the first ``import torch`` (a one-shot import hook), not at start-up, so ``ready``
is not delayed; a missing or mismatched runtime makes that import fail with a message that names
the module to install, which the engine reports as ``torch_import_failed``.
"""

from __future__ import annotations

import ctypes
import importlib.abc
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUNTIME_DESCRIPTOR = "vibevoice-runtime.json"
NEEDS_RUNTIME = "vibevoice-needs-runtime.json"
MAX_DESCRIPTOR_BYTES = 1 << 20  # a few KB in practice; a descriptor is read whole


@dataclass
class Plan:
    """What the engine needs from its runtime part and where it found it."""

    runtime_id: str
    runtime_version: str
    fingerprint: str
    preload: list[str]
    library_dirs: list[str]
    runtime_bin: Path | None = None  # the runtime's bin/ folder; None: not found
    same_tree: bool = False  # both parts unpacked into one folder: nothing to load
    problem: str | None = None  # why the runtime cannot be used
    searched: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        data = fh.read(MAX_DESCRIPTOR_BYTES + 1)
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise ValueError(f"{path} is larger than {MAX_DESCRIPTOR_BYTES} bytes")
    value = json.loads(data.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object")
    return value


def _str_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} is not a list of strings")
    for v in value:  # relative paths inside a part, never outside it
        parts = v.replace("\\", "/").split("/")
        if not v or v.startswith(("/", "\\")) or ":" in v or ".." in parts:
            raise ValueError(f"{what} holds an unsafe path {v!r}")
    return value


def find_runtime(exe_dir: Path) -> Plan | None:
    """The plan for the engine whose executable is in ``exe_dir``; None for a whole bundle."""
    needs_path = exe_dir / NEEDS_RUNTIME
    if not needs_path.is_file():
        return None
    needs = _read_json(needs_path)
    plan = Plan(
        runtime_id=str(needs.get("runtime_id", "")),
        runtime_version=str(needs.get("runtime_version", "")),
        fingerprint=str(needs.get("fingerprint", "")),
        preload=_str_list(needs.get("preload", []), "preload"),
        library_dirs=_str_list(needs.get("library_dirs", []), "library_dirs"),
    )
    if not plan.runtime_id or "/" in plan.runtime_id or "\\" in plan.runtime_id:
        raise ValueError(f"{needs_path}: runtime_id {plan.runtime_id!r} is not a module id")
    # <modules>/analysis/bin/vibevoice-rpc -> <modules>/analysis_runtime/bin/
    candidates = [exe_dir.parent.parent / plan.runtime_id / "bin", exe_dir]
    for bin_dir in candidates:
        descriptor = bin_dir / RUNTIME_DESCRIPTOR
        plan.searched.append(str(descriptor))
        if not descriptor.is_file():
            continue
        plan.runtime_bin = bin_dir
        plan.same_tree = bin_dir.resolve() == exe_dir.resolve()
        try:
            found = _read_json(descriptor)
        except (OSError, ValueError) as exc:
            plan.problem = f"its descriptor {descriptor} is unreadable: {exc}"
            return plan
        if found.get("id") != plan.runtime_id or found.get("fingerprint") != plan.fingerprint:
            plan.problem = (
                f"{bin_dir.parent} holds {found.get('id')} {found.get('version')} "
                f"(fingerprint {str(found.get('fingerprint'))[:12]}), not the one this engine was "
                f"built with ({plan.runtime_id} {plan.runtime_version}, fingerprint "
                f"{plan.fingerprint[:12]}): install the matching {plan.runtime_id} module"
            )
        return plan
    plan.problem = (
        f"the runtime module {plan.runtime_id} {plan.runtime_version} is not installed "
        f"(looked for {' and '.join(plan.searched)}): install it next to this engine"
    )
    return plan


def load_runtime(plan: Plan, exe_dir: Path, windows: bool = os.name == "nt") -> list[Any]:
    """Put the runtime's libraries where torch finds them (module docstring). Returns what must
    stay referenced (Windows' DLL-directory handles, Linux' library handles). Raises ImportError
    naming the problem."""
    if plan.problem is not None or plan.runtime_bin is None:
        raise ImportError(f"PyTorch cannot load: {plan.problem}")
    if plan.same_tree:
        return []
    keep: list[Any] = []
    if windows:
        dirs = [plan.runtime_bin / d for d in plan.library_dirs]
        for folder in dirs:
            if folder.is_dir():
                keep.append(os.add_dll_directory(str(folder)))  # type: ignore[attr-defined]
        path = os.environ.get("PATH", "")
        os.environ["PATH"] = os.pathsep.join([*(str(d) for d in dirs), path])
        log.info(
            "runtime: %d DLL folders of %s %s added from %s",
            len(keep),
            plan.runtime_id,
            plan.runtime_version,
            plan.runtime_bin.parent,
        )
        return keep
    mode = getattr(os, "RTLD_GLOBAL", 0) | getattr(os, "RTLD_NOW", 0)
    for rel in plan.preload:  # from the runtime part, else from the engine's own folder
        path = plan.runtime_bin / rel
        if not path.is_file():
            path = exe_dir / rel
        try:
            keep.append(ctypes.CDLL(str(path), mode=mode))
        except OSError as exc:
            raise ImportError(
                f"PyTorch cannot load: the runtime library {rel} from {plan.runtime_bin.parent} "
                f"failed to load ({exc}): reinstall the {plan.runtime_id} module"
            ) from exc
    log.info(
        "runtime: %d libraries of %s %s loaded from %s",
        len(plan.preload),
        plan.runtime_id,
        plan.runtime_version,
        plan.runtime_bin.parent,
    )
    return keep


class _BeforeTorch(importlib.abc.MetaPathFinder):
    """Runs :func:`load_runtime` once, the first time anything looks for ``torch``."""

    def __init__(self, plan: Plan, exe_dir: Path) -> None:
        self.plan = plan
        self.exe_dir = exe_dir
        self.lock = threading.Lock()
        self.done = False
        self.error: ImportError | None = None
        self.keep: list[Any] = []

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname != "torch":
            return None
        with self.lock:
            if not self.done:
                self.done = True
                try:
                    self.keep = load_runtime(self.plan, self.exe_dir)
                except ImportError as exc:
                    log.error("%s", exc)
                    self.error = exc
        if self.error is not None:
            raise ImportError(str(self.error))
        return None  # the normal finders import torch


def install(exe_dir: Path | None = None) -> Plan | None:
    """At start-up of a frozen engine, before anything imports torch: find its runtime part
    (cheap: two small files) and arrange for its libraries to load on the first ``import torch``.
    A no-op for a whole bundle and outside PyInstaller."""
    if exe_dir is None:
        if not getattr(sys, "frozen", False):
            return None
        exe_dir = Path(sys.executable).resolve().parent
    try:
        plan = find_runtime(exe_dir)
    except (OSError, ValueError) as exc:
        plan = Plan("", "", "", [], [], problem=f"{exe_dir / NEEDS_RUNTIME} is unreadable: {exc}")
    if plan is not None:  # (logging is not set up yet: the hook logs when it runs)
        sys.meta_path.insert(0, _BeforeTorch(plan, exe_dir))
    return plan
