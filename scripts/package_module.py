"""Package the frozen onedir build as a Trispr Flow module: zip + sha256 + modules-index.json.

    python scripts/package_module.py [--dist dist/vibevoice-rpc] [--out dist/module]
        [--asset-url-base URL] [--min-app-version 0.8.5] [--max-asset-bytes N]
        [--compression deflate|stored] [--level 1..9] [--index-in modules-index.json]
        [--split auto|never|always] [--runtime-version V]

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

**Split** (``--split auto``, the default, when the bundle's files add up to more than
``--max-asset-bytes``; ``--split always`` to force it): two modules, each one zip with its own
index entry and sha256 — the engine ``analysis-<version>.zip`` (kind ``sidecar``) and its libraries
``analysis_runtime-<runtime version>.zip`` (kind ``runtime``), laid out as ``module_parts.py``
describes. Refused (exit 3) when even a part does not fit. ``--runtime-version`` defaults to the
bundled torch's version; a runtime whose files differ from the one ``--index-in`` already lists
under the same version is refused (exit 1): bump the version, or the app would keep the old one.

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
sys.path.insert(0, str(Path(__file__).resolve().parent))
import module_parts as parts  # noqa: E402

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
        "A CUDA bundle (3.8 GB) ships in two parts, the engine and its CUDA runtime (--split, "
        "docs/TAURI.md section 9); this part does not fit even so."
    )


def _members_size(members: list[tuple[str, Path | bytes]]) -> int:
    return sum(
        len(src) if isinstance(src, bytes) else (0 if src.is_symlink() else src.stat().st_size)
        for _, src in members
    )


def _write_zip(
    zip_path: Path,
    manifest: dict,
    members: list[tuple[str, Path | bytes]],
    *,
    compression: int,
    level: int | None,
    max_asset_bytes: int,
) -> int:
    """Write ``<zip_path>.partial`` (manifest first, then ``members`` sorted); returns its size.
    Raises TooLarge as soon as it passes ``max_asset_bytes``; the caller renames or deletes it."""
    partial = zip_path.with_name(zip_path.name + ".partial")
    uncompressed = _members_size(members)
    manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    entrypoint = manifest["entrypoint"]
    with (
        partial.open("wb") as raw,
        zipfile.ZipFile(raw, "w", compression, compresslevel=level) as zf,
    ):
        zf.writestr(_zipinfo(MANIFEST_FILE, stat.S_IFREG | 0o644), manifest_bytes)
        for done, (name, src) in enumerate(sorted(members), 1):
            if isinstance(src, bytes):  # a file the packager writes (a part's descriptor)
                info = _zipinfo(name, stat.S_IFREG | 0o644)
                info.compress_type = compression
                zf.writestr(info, src)
            else:
                _write_member(zf, name, src, executable=name == entrypoint)
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
    return size


def _publish(
    zips: list[tuple[Path, dict]],
    out: Path,
    asset_url_base: str,
    min_app: str,
    t0: float,
    counts: list[tuple[int, int]],
) -> list[Package]:
    """Rename the finished ``.partial`` zips into place, write their .sha256 files; entries."""
    done = []
    for (zip_path, manifest), (files, uncompressed) in zip(zips, counts, strict=True):
        os.replace(zip_path.with_name(zip_path.name + ".partial"), zip_path)
        digest = sha256_of(zip_path)
        sha_path = zip_path.with_suffix(".sha256")
        sha_path.write_text(f"{digest}  {zip_path.name}\n", encoding="utf-8")
        url = f"{asset_url_base.rstrip('/')}/{zip_path.name}"
        entry = make_index_entry(manifest, url, digest, zip_path.stat().st_size, min_app)
        done.append(
            Package(
                zip_path,
                sha_path,
                out / "modules-index.json",
                manifest,
                entry,
                files,
                uncompressed,
                time.monotonic() - t0,
            )
        )
    return done


def _read_index(index_in: Path | None) -> dict:
    if index_in is None:
        return {"schema_version": 1, "modules": []}
    return json.loads(index_in.read_text(encoding="utf-8"))


def _write_index(out: Path, index: dict, entries: list[dict]) -> Path:
    """Merge ``entries`` into ``index`` (an entry with the same id is replaced) and write it."""
    ids = {e["id"] for e in entries}
    index["modules"] = [m for m in index.get("modules", []) if m.get("id") not in ids] + entries
    index_path = out / "modules-index.json"
    index_path.write_text(json.dumps(index, indent=4) + "\n", encoding="utf-8")
    return index_path


def _check_paths(dist: Path, out: Path) -> Path:
    dist = dist.resolve()
    if not dist.is_dir():
        raise PackageError(f"{dist} is not a directory: build the onedir bundle first")
    if out.resolve() == dist or dist in out.resolve().parents:
        raise PackageError(f"--out {out} is inside the bundle {dist}: the zip would contain itself")
    return dist


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
    dist = _check_paths(dist, out)
    version = version or project_version()
    exe = find_entrypoint(dist)
    entrypoint = zip_name(dist, exe)
    manifest = make_manifest(version, entrypoint, find_required_assets(dist))
    members: list[tuple[str, Path | bytes]] = list(bundle_members(dist))
    zip_path = out / f"{MODULE_ID}-{version}.zip"
    uncompressed = _members_size(members)
    if compression == zipfile.ZIP_STORED and uncompressed > max_asset_bytes:
        raise _too_large(zip_path.name, max_asset_bytes, f"would hold {uncompressed:,} bytes")
    index = _read_index(index_in)
    out.mkdir(parents=True, exist_ok=True)
    try:
        _write_zip(
            zip_path,
            manifest,
            members,
            compression=compression,
            level=level,
            max_asset_bytes=max_asset_bytes,
        )
        (pkg,) = _publish(
            [(zip_path, manifest)],
            out,
            asset_url_base,
            min_app_version,
            t0,
            [(len(members), uncompressed)],
        )
    finally:
        zip_path.with_name(zip_path.name + ".partial").unlink(missing_ok=True)
    _write_index(out, index, [pkg.entry])
    return pkg


def torch_version(dist: Path) -> str | None:
    """The bundled torch's version (its dist-info, which the spec copies), without a local tag."""
    for meta in sorted((dist / "_internal").glob("torch-*.dist-info")):
        return meta.name[len("torch-") : -len(".dist-info")].split("+")[0]
    return None


def _asset_id(rel: str, taken: set[str]) -> str:
    name = rel.rsplit("/", 1)[-1]
    asset_id = name if name not in taken else rel
    taken.add(asset_id)
    return asset_id


def package_split(
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
    runtime_version: str | None = None,
) -> list[Package]:
    """The engine part and the runtime part (module_parts.py), each a zip with its own .sha256
    and index entry, both entries merged into ``modules-index.json``. Returns [engine, runtime]."""
    t0 = time.monotonic()
    dist = _check_paths(dist, out)
    version = version or project_version()
    runtime_version = runtime_version or torch_version(dist)
    if not runtime_version:
        raise PackageError(f"{dist} has no torch-*.dist-info: pass --runtime-version")
    exe = find_entrypoint(dist)
    entrypoint = zip_name(dist, exe)
    members = bundle_members(dist)
    rel = {name: name[len(BIN) + 1 :] for name, _ in members}
    links = {
        rel[name]: (path.parent / os.readlink(path)).resolve().relative_to(dist).as_posix()
        for name, path in members
        if path.is_symlink()
    }
    runtime = parts.runtime_members(sorted(rel.values()), links)
    if not runtime:
        raise PackageError(f"{dist} has no CUDA libraries and no torch CPU library to split off")
    in_runtime = set(runtime)
    runtime_files = [r for r in runtime if r not in links]
    cuda = any(r.startswith("_internal/nvidia/") or r.endswith(".dll") for r in runtime_files)
    fingerprint = parts.fingerprint(dist, runtime)
    preload = parts.preload_order(dist, sorted(rel.values()), runtime)

    assets = find_required_assets(dist)
    taken = {a["id"] for a in assets}
    engine_assets = [a for a in assets if a["path"][len(BIN) + 1 :] not in in_runtime]
    runtime_assets = [a for a in assets if a["path"][len(BIN) + 1 :] in in_runtime]
    runtime_assets += [
        {"id": _asset_id(r, taken), "path": f"{BIN}/{r}", "kind": "file"}
        for r in runtime_files
        if f"{BIN}/{r}" not in {a["path"] for a in runtime_assets}
    ]
    engine_manifest = make_manifest(version, entrypoint, engine_assets)
    runtime_manifest = make_manifest(
        runtime_version, f"{BIN}/{parts.RUNTIME_DESCRIPTOR}", runtime_assets
    )
    runtime_manifest.update(
        id=parts.RUNTIME_ID,
        name=f"{parts.RUNTIME_NAME} ({'CUDA, ' if cuda else ''}torch {runtime_version})",
        kind="runtime",
    )
    needs = {
        "schema_version": parts.SCHEMA_VERSION,
        "runtime_id": parts.RUNTIME_ID,
        "runtime_version": runtime_version,
        "fingerprint": fingerprint,
        "preload": preload,
        "library_dirs": parts.library_dirs(runtime_files),
    }
    descriptor = {
        "schema_version": parts.SCHEMA_VERSION,
        "id": parts.RUNTIME_ID,
        "version": runtime_version,
        "fingerprint": fingerprint,
        "files": len(runtime_files),
        "bytes": sum((dist / r).stat().st_size for r in runtime_files),
    }
    engine_members: list[tuple[str, Path | bytes]] = [
        (name, path) for name, path in members if rel[name] not in in_runtime
    ]
    engine_members.append(
        (f"{BIN}/{parts.NEEDS_RUNTIME}", (json.dumps(needs, indent=2) + "\n").encode())
    )
    runtime_members: list[tuple[str, Path | bytes]] = [
        (name, path) for name, path in members if rel[name] in in_runtime
    ]
    runtime_members.append(
        (f"{BIN}/{parts.RUNTIME_DESCRIPTOR}", (json.dumps(descriptor, indent=2) + "\n").encode())
    )
    engine_zip = out / f"{MODULE_ID}-{version}.zip"
    runtime_zip = out / f"{parts.RUNTIME_ID}-{runtime_version}.zip"
    plan = [
        (engine_zip, engine_manifest, engine_members),
        (runtime_zip, runtime_manifest, runtime_members),
    ]
    if compression == zipfile.ZIP_STORED:
        for zip_path, _, part in plan:
            if _members_size(part) > max_asset_bytes:
                raise _too_large(
                    zip_path.name, max_asset_bytes, f"would hold {_members_size(part):,} bytes"
                )
    index = _read_index(index_in)
    published = next((m for m in index.get("modules", []) if m.get("id") == parts.RUNTIME_ID), None)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for zip_path, manifest, part in plan:
            _write_zip(
                zip_path,
                manifest,
                part,
                compression=compression,
                level=level,
                max_asset_bytes=max_asset_bytes,
            )
        pkgs = _publish(
            [(z, m) for z, m, _ in plan],
            out,
            asset_url_base,
            min_app_version,
            t0,
            [(len(p), _members_size(p)) for _, _, p in plan],
        )
    finally:
        for zip_path, _, _ in plan:
            zip_path.with_name(zip_path.name + ".partial").unlink(missing_ok=True)
    new_runtime = pkgs[1].entry
    if (
        published is not None
        and published.get("version") == new_runtime["version"]
        and published.get("sha256") != new_runtime["sha256"]
    ):
        for pkg in pkgs:
            pkg.zip_path.unlink(missing_ok=True)
            pkg.sha256_path.unlink(missing_ok=True)
        raise PackageError(
            f"{runtime_zip.name} differs from the {parts.RUNTIME_ID} {runtime_version} the index "
            f"already lists (sha256 {published.get('sha256')}): its libraries changed, so give it a "
            "new --runtime-version (the app installs a module again only when its version changes)"
        )
    _write_index(out, index, [p.entry for p in pkgs])
    return pkgs


def build_module(dist: Path, out: Path, *, split: str = "auto", **kw) -> list[Package]:
    """One zip, or the engine and runtime parts: ``split`` is never, always or auto (split when
    the bundle's files add up to more than ``max_asset_bytes``: only then can one zip miss)."""
    runtime_version = kw.pop("runtime_version", None)
    if split == "auto":
        total = (
            sum(p.stat().st_size for _, p in bundle_members(dist.resolve()) if not p.is_symlink())
            if dist.is_dir()
            else 0
        )
        split = "always" if total > kw.get("max_asset_bytes", MAX_ASSET_BYTES) else "never"
    if split == "always":
        return package_split(dist, out, runtime_version=runtime_version, **kw)
    return [package(dist, out, **kw)]


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
        help="refuse a zip larger than this (default 2 GiB, one release asset's limit)",
    )
    parser.add_argument("--compression", choices=("deflate", "stored"), default="deflate")
    parser.add_argument("--level", type=int, default=6, help="deflate level 1-9 (default 6)")
    parser.add_argument(
        "--split",
        choices=("auto", "never", "always"),
        default="auto",
        help="ship the engine and its libraries as two modules (auto: when the bundle's files add "
        "up to more than --max-asset-bytes)",
    )
    parser.add_argument(
        "--runtime-version", help="the runtime part's version (default: the bundled torch's)"
    )
    parser.add_argument(
        "--index-in", type=Path, help="an existing modules-index.json to merge the entries into"
    )
    args = parser.parse_args(argv)
    stored = args.compression == "stored"
    try:
        pkgs = build_module(
            args.dist,
            args.out,
            split=args.split,
            runtime_version=args.runtime_version,
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
    how = "stored" if stored else f"deflate level {args.level}"
    for pkg in pkgs:
        size = pkg.entry["size"]
        print(f"module {pkg.entry['id']} ({pkg.entry['kind']}): {pkg.zip_path} ({how})")
        print(
            f"  {pkg.files} files, {pkg.uncompressed / 2**20:.0f} MiB -> {size:,} bytes "
            f"({size / 2**20:.0f} MiB, {size / max(pkg.uncompressed, 1):.0%}) in {pkg.seconds:.1f} s"
        )
        print(f"  sha256 {pkg.entry['sha256']}")
        print(f"  {pkg.sha256_path}")
    print(f"index: {pkgs[0].index_path}")
    for pkg in pkgs:
        print(f"manifest of {pkg.zip_path.name}:")
        print(json.dumps(pkg.manifest, indent=2))
    print("index entries:")
    print(json.dumps([p.entry for p in pkgs], indent=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
