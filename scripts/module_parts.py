"""How a bundle too large for one release asset is split into two Trispr Flow modules.

The packager (``package_module.py --split``) and the checker (``check_module.py``) share this; the
engine's half of the contract is ``vibevoice_rpc/model/split_bundle.py`` (the file names and fields
below are repeated there, and ``tests/test_module_package.py`` checks that they agree).

* The **runtime part** (module ``analysis_runtime``, kind ``runtime``) holds the bundle's CUDA
  libraries (``_internal/nvidia/**``; on Windows also the CUDA DLLs that PyTorch's wheels put in
  ``torch/lib``), at the same relative paths as in the whole bundle, so the libraries' own
  ``$ORIGIN`` search paths still find each other. A bundle without CUDA libraries (the CPU bundle)
  gives torch's CPU library instead, so the split path runs in CI without CUDA.
* The **engine part** (module ``analysis``, kind ``sidecar``) holds everything else, plus
  ``bin/vibevoice-needs-runtime.json``: which runtime (id, version, fingerprint) it needs and the
  libraries to load from it, in dependency order, before ``import torch``.
* The runtime part's ``bin/vibevoice-runtime.json`` names its id, version and fingerprint (the
  sha256 of its files' names, sizes and contents), so an engine refuses a runtime built from other
  libraries instead of crashing in them.

Standard library only (an ELF reader for ``DT_NEEDED``/``DT_SONAME`` is below).
"""

from __future__ import annotations

import hashlib
import os
import struct
from fnmatch import fnmatch
from pathlib import Path

RUNTIME_ID = "analysis_runtime"
RUNTIME_NAME = "Voice Analysis runtime libraries"
RUNTIME_DESCRIPTOR = "vibevoice-runtime.json"  # in the runtime part, next to the libraries' bin/
NEEDS_RUNTIME = "vibevoice-needs-runtime.json"  # in the engine part, next to the executable
SCHEMA_VERSION = 1

# Relative to the onedir folder. Linux/CUDA 13 wheels: nvidia/cu13/lib, nvidia/cudnn/lib, ...;
# Windows: the PyTorch index's CUDA wheels carry the CUDA DLLs in torch/lib (names below), newer
# ones may use nvidia/*/bin like Linux.
CUDA_LIBRARIES = (
    "_internal/nvidia/*",
    "_internal/torch/lib/cublas*64_*.dll",
    "_internal/torch/lib/cudart64_*.dll",
    "_internal/torch/lib/cudnn*64_*.dll",
    "_internal/torch/lib/cufft*64_*.dll",
    "_internal/torch/lib/curand64_*.dll",
    "_internal/torch/lib/cusolver*64_*.dll",
    "_internal/torch/lib/cusparse*64_*.dll",
    "_internal/torch/lib/cupti64_*.dll",
    "_internal/torch/lib/nvrtc*64_*.dll",
    "_internal/torch/lib/nvJitLink*.dll",
    "_internal/torch/lib/nvToolsExt64_*.dll",
    "_internal/torch/lib/zlibwapi.dll",  # cuDNN 8's dependency on Windows
)
# Without CUDA libraries: torch's CPU library (415 MB of the 860 MB CPU bundle).
CPU_LIBRARIES = ("_internal/torch/lib/libtorch_cpu.so", "_internal/torch/lib/torch_cpu.dll")
# Loaded with dlopen by a bare name from a library that has no search path of its own: found in a
# whole bundle only through libtorch_cuda's RPATH, so they must be loaded up front from a runtime
# part in another folder. nvrtc -> its builtins (measured: an NVRTC compile fails without it).
LOADED_BY_NAME = ("libnvrtc-builtins.so.*",)
# Shared libraries, by name (Linux: lib*.so, lib*.so.13, ...; Windows: *.dll).
LIBRARY_GLOBS = ("*.so", "*.so.*", "*.dll")


def is_library(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch(name, g) for g in LIBRARY_GLOBS)


def runtime_members(rels: list[str], links: dict[str, str]) -> list[str]:
    """The onedir-relative paths that go to the runtime part: the CUDA libraries, else torch's CPU
    library; symlinks go with what they point to (PyInstaller links libraries into ``_internal``).
    ``links`` maps a symlink's path to its target's path (both onedir-relative)."""
    cuda = [r for r in rels if any(fnmatch(r, p) for p in CUDA_LIBRARIES) and r not in links]
    chosen = set(cuda or [r for r in rels if r in CPU_LIBRARIES])
    chosen |= {link for link, target in links.items() if target in chosen}
    return sorted(chosen)


# --- ELF: the libraries a shared object needs ---------------------------------------------------

_DT_NEEDED, _DT_STRTAB, _DT_SONAME = 1, 5, 14


def elf_needs(path: Path) -> tuple[str, list[str]] | None:
    """(soname or file name, DT_NEEDED names) of a 64-bit little-endian ELF; None otherwise."""
    with path.open("rb") as fh:
        head = fh.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        phoff, phentsize, phnum = (
            struct.unpack_from("<Q", head, 32)[0],
            *struct.unpack_from("<HH", head, 54),
        )
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
        loads, dynamic = [], None
        for i in range(phnum):
            p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
                "<IIQQQQ", table, i * phentsize
            )
            if p_type == 1:  # PT_LOAD: to map the string table's address to a file offset
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == 2:  # PT_DYNAMIC
                dynamic = (p_offset, p_filesz)
        if dynamic is None:
            return None
        fh.seek(dynamic[0])
        raw = fh.read(dynamic[1])
        entries = [struct.unpack_from("<qQ", raw, i) for i in range(0, len(raw) - 15, 16)]
        strtab = next((v for t, v in entries if t == _DT_STRTAB), None)
        offset = next((o + strtab - v for v, o, n in loads if v <= (strtab or -1) < v + n), None)
        if offset is None:
            return None

        def name_at(index: int) -> str:
            fh.seek(offset + index)
            data = fh.read(256)
            return data[: data.find(b"\0")].decode("utf-8", "replace")

        needed = [name_at(v) for t, v in entries if t == _DT_NEEDED]
        soname = next((name_at(v) for t, v in entries if t == _DT_SONAME), path.name)
    return soname, needed


def preload_order(dist: Path, rels: list[str], runtime: list[str]) -> list[str]:
    """The libraries to load, in dependency order, before ``import torch`` when the runtime part is
    in another folder: every runtime library that a library of the engine part links against
    (directly or through other runtime libraries), plus :data:`LOADED_BY_NAME`, each preceded by
    the libraries it links against that are in either part. Empty for Windows bundles (there the
    engine adds the runtime's folders to the DLL search path instead)."""
    files = {r: dist / r for r in rels if is_library(r) and not (dist / r).is_symlink()}
    info = {r: elf_needs(p) for r, p in files.items()}
    info = {r: i for r, i in info.items() if i is not None}
    by_name: dict[str, str] = {}
    for rel, (soname, _) in sorted(info.items()):
        by_name.setdefault(soname, rel)
        by_name.setdefault(rel.rsplit("/", 1)[-1], rel)
    in_runtime = set(runtime)
    wanted = {
        r
        for r in info
        if r in in_runtime and any(fnmatch(r.rsplit("/", 1)[-1], p) for p in LOADED_BY_NAME)
    }
    for rel, (_, needed) in info.items():
        if rel not in in_runtime:
            wanted |= {by_name[n] for n in needed if by_name.get(n) in in_runtime}
    order: list[str] = []
    seen: set[str] = set()

    def visit(rel: str, stack: tuple[str, ...]) -> None:
        if rel in seen or rel in stack:
            return
        for name in info[rel][1]:
            dep = by_name.get(name)
            if dep is not None and (dep in in_runtime or rel in in_runtime):
                visit(dep, (*stack, rel))
        seen.add(rel)
        order.append(rel)

    for rel in sorted(wanted):
        visit(rel, ())
    return order


def library_dirs(runtime: list[str]) -> list[str]:
    """The folders of the runtime part that hold libraries (for Windows' DLL search path)."""
    return sorted({r.rsplit("/", 1)[0] for r in runtime if is_library(r) and "/" in r})


def fingerprint(dist: Path, runtime: list[str]) -> str:
    """sha256 over the runtime part's files: name, size and content (symlinks: their target)."""
    h = hashlib.sha256()
    for rel in sorted(runtime):
        path = dist / rel
        if path.is_symlink():
            h.update(f"{rel}\0->\0{os.readlink(path)}\n".encode())
            continue
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1024 * 1024), b""):
                digest.update(block)
        h.update(f"{rel}\0{path.stat().st_size}\0{digest.hexdigest()}\n".encode())
    return h.hexdigest()
