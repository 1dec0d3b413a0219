"""Package the frozen onedir build as a Trispr Flow module: zip + sha256 + modules-index.json.

    python scripts/package_module.py [--dist dist/vibevoice-rpc] [--out dist/module]
        [--asset-url-base URL] [--min-app-version 0.8.5] [--max-asset-bytes N]
        [--compression deflate|stored] [--level 1..9] [--index-in modules-index.json]

Writes into ``--out``:

* ``<id>-<version>.zip``: ``trispr-module.json`` at the root, the onedir folder under ``bin/``
  (``bin/vibevoice-rpc[.exe]`` + ``bin/_internal/``);
* ``<id>-<version>.sha256``: ``<hex>  <file name>`` (``sha256sum -c`` reads it);
* ``modules-index.json``: ``{"schema_version": 1, "modules": [entry]}``, the entry merged into a copy
  of ``--index-in`` when given (an entry with the same id is replaced, the others are kept).

The format is Trispr Flow's (Trissilein/Trispr_Flow): the manifest's fields follow
``module-sidecars/opus/trispr-module.json`` (a ``sidecar`` with an ``entrypoint`` under ``bin/``,
``host_capability`` empty, no ``executable_hooks``), the index entry's follow
``module-sidecars/modules-index.json``, and the release layout (assets on the ``modules-index``
release, zip + ``.sha256`` + index) ``docs/MODULE-PUBLISHING.md``. The module id is ``analysis``,
the app's Voice Analysis module (its ``src-tauri/src/modules/registry.rs``). The version is the
project's own (``vibevoice_rpc.__version__``).

The zip is reproducible: entries sorted, fixed timestamps, modes normalized to 0755/0644 (the
executable bit survives unzipping), symlinks stored as symlinks (Info-ZIP's convention; PyInstaller
makes some on Linux/macOS, none on Windows). A package over ``--max-asset-bytes`` (default 2 GiB, the
limit of one GitHub release asset) is refused: exit code 3, nothing left behind.

Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MANIFEST_FILE = "trispr-module.json"
MODULE_ID = "analysis"
MODULE_NAME = "Voice Analysis (VibeVoice-ASR)"
MODULE_KIND = "sidecar"
SCHEMA_VERSION = 1
BIN = "bin"
EXE_STEM = "vibevoice-rpc"
# The release that holds module assets (docs/MODULE-PUBLISHING.md: one release tagged
# `modules-index`, whose URL never changes).
ASSET_URL_BASE = "https://github.com/Trissilein/Trispr_Flow/releases/download/modules-index"
MIN_APP_VERSION = "0.8.5"  # what every entry of Trispr Flow's modules-index.json names today
MAX_ASSET_BYTES = 2 * 1024**3  # GitHub: "each file included in a release must be under 2 GiB"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: no build time in the bytes

# Files without which the bundle cannot start or transcribe, listed as required_assets (kind
# "file"), so the app's install check catches a truncated unpack. Each: id, and globs relative to
# the onedir folder tried in order (Windows, Linux, macOS names); the first match is taken.
REQUIRED_ASSETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "python_runtime",
        ("_internal/python3[0-9]*.dll", "_internal/libpython3*.so*", "_internal/Python"),
    ),
    ("python_stdlib", ("_internal/base_library.zip",)),
    (
        "torch_core",
        ("_internal/torch/lib/torch_cpu.dll", "_internal/torch/lib/libtorch_cpu.*"),
    ),
    ("speech_clip", ("_internal/vibevoice_rpc/data/two_speakers.opus",)),
)


class PackageError(Exception):
    """A bundle that cannot be packaged; the message says why and what to do."""


class TooLarge(PackageError):
    """The package would be over the release-asset limit."""


@dataclass(frozen=True)
class Package:
    zip_path: Path
    sha256_path: Path
    index_path: Path
    manifest: dict
    entry: dict
    files: int
    uncompressed: int
    seconds: float


def project_version(repo: Path = REPO) -> str:
    """``__version__`` of vibevoice_rpc, read from its source (the packager imports nothing)."""
    text = (repo / "vibevoice_rpc" / "__init__.py").read_text(encoding="utf-8")
    m = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.M)
    if not m:
        raise PackageError("no __version__ in vibevoice_rpc/__init__.py")
    return m.group(1)


def find_entrypoint(dist: Path) -> Path:
    for name in (EXE_STEM + ".exe", EXE_STEM):
        if (dist / name).is_file():
            return dist / name
    raise PackageError(
        f"{dist} holds no {EXE_STEM}[.exe]: build the onedir bundle first "
        "(pyinstaller --noconfirm --clean build_exe.spec)"
    )


def find_required_assets(dist: Path) -> list[dict]:
    assets = []
    for asset_id, globs in REQUIRED_ASSETS:
        hits = [p for g in globs for p in sorted(dist.glob(g)) if p.is_file()]
        if not hits:
            raise PackageError(
                f"{dist} is not a complete bundle: no {' or '.join(globs)} ({asset_id})"
            )
        assets.append({"id": asset_id, "path": zip_name(dist, hits[0]), "kind": "file"})
    return assets


def zip_name(dist: Path, path: Path) -> str:
    return f"{BIN}/{path.relative_to(dist).as_posix()}"


def make_manifest(version: str, entrypoint: str, assets: list[dict]) -> dict:
    """The trispr-module.json, with the field order of Trispr Flow's own manifests."""
    return {
        "schema_version": SCHEMA_VERSION,
        "id": MODULE_ID,
        "name": MODULE_NAME,
        "version": version,
        "kind": MODULE_KIND,
        "host_capability": "",  # as the opus sidecar's: a sidecar provides no host capability
        "entrypoint": entrypoint,
        "required_assets": assets,
        "sub_capabilities": [],
        "executable_hooks": [],  # the app refuses packages that declare any
    }


def make_index_entry(manifest: dict, asset_url: str, digest: str, size: int, min_app: str) -> dict:
    """The modules-index.json entry, with the field order of Trispr Flow's index."""
    return {
        "id": manifest["id"],
        "kind": manifest["kind"],
        "name": manifest["name"],
        "version": manifest["version"],
        "asset_url": asset_url,
        "sha256": digest,
        "size": size,
        "min_app_version": min_app,
    }


def bundle_members(dist: Path) -> list[tuple[str, Path]]:
    """(name in the zip, path) of every file and symlink of the bundle, sorted by name."""
    members = []
    for root, dirs, files in os.walk(dist):
        dirs.sort()
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                target = (path.parent / os.readlink(path)).resolve()
                if dist.resolve() not in target.parents:
                    raise PackageError(f"{path} links outside the bundle ({target})")
                members.append((zip_name(dist, path), path))
            elif name in files:
                if not path.is_file():
                    raise PackageError(f"{path} is neither a file nor a symlink")
                members.append((zip_name(dist, path), path))
    members.sort()
    return members


def _zipinfo(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.create_system = 3  # Unix: unzip tools honour the mode bits below
    info.external_attr = mode << 16
    return info


def _write_member(zf: zipfile.ZipFile, name: str, path: Path, executable: bool) -> None:
    if path.is_symlink():
        zf.writestr(_zipinfo(name, stat.S_IFLNK | 0o777), os.readlink(path))
        return
    st = path.stat()
    mode = 0o755 if executable or st.st_mode & stat.S_IXUSR else 0o644
    info = _zipinfo(name, stat.S_IFREG | mode)
    info.compress_type = zf.compression
    # zf.open(info) takes the level from the ZipInfo (3.10-3.12: this private name; 3.13 aliases it)
    info._compresslevel = zf.compresslevel  # type: ignore[attr-defined]
    info.file_size = st.st_size  # lets zipfile choose zip64 for a member over 2 GiB up front
    with path.open("rb") as src, zf.open(info, "w") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            h.update(block)
    return h.hexdigest()


def _too_large(zip_name_: str, limit: int, what: str) -> TooLarge:
    return TooLarge(
        f"{zip_name_} {what}, over the {limit:,} byte limit of one release asset "
        f"({limit / 2**30:.2f} GiB; GitHub refuses release files of 2 GiB and more). "
        "A CUDA bundle (~4 GB) does not fit in one module package: ship the CPU module and the "
        "CUDA engine as described in docs/TAURI.md, section 9 (the CUDA engine)."
    )


def package(
    dist: Path,
    out: Path,
    *,
    asset_url_base: str = ASSET_URL_BASE,
    min_app_version: str = MIN_APP_VERSION,
    max_asset_bytes: int = MAX_ASSET_BYTES,
    compression: int = zipfile.ZIP_DEFLATED,
    level: int | None = 6,
    index_in: Path | None = None,
    version: str | None = None,
) -> Package:
    """Build ``<id>-<version>.zip``, its ``.sha256`` and ``modules-index.json`` in ``out``."""
    t0 = time.monotonic()
    dist = dist.resolve()
    if not dist.is_dir():
        raise PackageError(f"{dist} is not a directory: build the onedir bundle first")
    if out.resolve() == dist or dist in out.resolve().parents:
        raise PackageError(f"--out {out} is inside the bundle {dist}: the zip would contain itself")
    version = version or project_version()
    exe = find_entrypoint(dist)
    entrypoint = zip_name(dist, exe)
    manifest = make_manifest(version, entrypoint, find_required_assets(dist))
    members = bundle_members(dist)
    base = f"{MODULE_ID}-{version}"
    zip_path = out / f"{base}.zip"
    uncompressed = sum(p.stat().st_size for _, p in members if not p.is_symlink())
    if compression == zipfile.ZIP_STORED and uncompressed > max_asset_bytes:
        raise _too_large(zip_path.name, max_asset_bytes, f"would hold {uncompressed:,} bytes")

    out.mkdir(parents=True, exist_ok=True)
    partial = zip_path.with_name(zip_path.name + ".partial")
    manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    try:
        with (
            partial.open("wb") as raw,
            zipfile.ZipFile(raw, "w", compression, compresslevel=level) as zf,
        ):
            zf.writestr(_zipinfo(MANIFEST_FILE, stat.S_IFREG | 0o644), manifest_bytes)
            for done, (name, path) in enumerate(members, 1):
                _write_member(zf, name, path, executable=name == entrypoint)
                if raw.tell() > max_asset_bytes:  # stop early, not after writing 4 GB
                    raise _too_large(
                        zip_path.name,
                        max_asset_bytes,
                        f"passed {raw.tell():,} bytes after {done} of {len(members)} files "
                        f"({uncompressed:,} bytes uncompressed in all)",
                    )
        size = partial.stat().st_size
        if size > max_asset_bytes:
            raise _too_large(zip_path.name, max_asset_bytes, f"is {size:,} bytes")
        os.replace(partial, zip_path)
    finally:
        partial.unlink(missing_ok=True)

    digest = sha256_of(zip_path)
    sha_path = out / f"{base}.sha256"
    sha_path.write_text(f"{digest}  {zip_path.name}\n", encoding="utf-8")
    entry = make_index_entry(
        manifest, f"{asset_url_base.rstrip('/')}/{zip_path.name}", digest, size, min_app_version
    )
    index = {"schema_version": 1, "modules": []}
    if index_in is not None:
        index = json.loads(index_in.read_text(encoding="utf-8"))
    modules = [m for m in index.get("modules", []) if m.get("id") != entry["id"]]
    index["modules"] = modules + [entry]
    index_path = out / "modules-index.json"
    index_path.write_text(json.dumps(index, indent=4) + "\n", encoding="utf-8")
    return Package(
        zip_path,
        sha_path,
        index_path,
        manifest,
        entry,
        len(members),
        uncompressed,
        time.monotonic() - t0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Package the frozen onedir build as a Trispr Flow module (zip + sha256 + index)."
    )
    parser.add_argument("--dist", type=Path, default=REPO / "dist" / "vibevoice-rpc")
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "module")
    parser.add_argument("--asset-url-base", default=ASSET_URL_BASE)
    parser.add_argument("--min-app-version", default=MIN_APP_VERSION)
    parser.add_argument(
        "--max-asset-bytes",
        type=int,
        default=MAX_ASSET_BYTES,
        help="refuse a package larger than this (default 2 GiB, one release asset's limit)",
    )
    parser.add_argument("--compression", choices=("deflate", "stored"), default="deflate")
    parser.add_argument("--level", type=int, default=6, help="deflate level 1-9 (default 6)")
    parser.add_argument(
        "--index-in", type=Path, help="an existing modules-index.json to merge the entry into"
    )
    args = parser.parse_args(argv)
    stored = args.compression == "stored"
    try:
        pkg = package(
            args.dist,
            args.out,
            asset_url_base=args.asset_url_base,
            min_app_version=args.min_app_version,
            max_asset_bytes=args.max_asset_bytes,
            compression=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED,
            level=None if stored else args.level,
            index_in=args.index_in,
        )
    except TooLarge as exc:
        print(f"package_module: REFUSED: {exc}", file=sys.stderr)
        return 3
    except PackageError as exc:
        print(f"package_module: FAIL: {exc}", file=sys.stderr)
        return 1
    size = pkg.entry["size"]
    how = "stored" if stored else f"deflate level {args.level}"
    print(f"module: {pkg.zip_path} ({how})")
    print(
        f"  {pkg.files} files, {pkg.uncompressed / 2**20:.0f} MiB -> {size:,} bytes "
        f"({size / 2**20:.0f} MiB, {size / max(pkg.uncompressed, 1):.0%}) in {pkg.seconds:.1f} s"
    )
    print(f"  sha256 {pkg.entry['sha256']}")
    print(f"  {pkg.sha256_path}")
    print(f"  {pkg.index_path}")
    print("manifest:")
    print(json.dumps(pkg.manifest, indent=2))
    print("index entry:")
    print(json.dumps(pkg.entry, indent=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
