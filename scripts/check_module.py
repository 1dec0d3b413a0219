"""Check Trispr Flow module packages the way the app will use them: the engine must transcribe.

    python scripts/check_module.py dist/module/analysis-0.1.0.zip dist/module/modules-index.json
    python scripts/check_module.py dist/module/analysis-0.1.0.zip \\
        dist/module/analysis_runtime-2.13.0.zip dist/module/modules-index.json   # a split bundle

Every ``.zip`` given is one module (the engine, and the runtime part of a split bundle); the one
``.json`` is the index that lists them. For each zip, before anything is extracted:

* its members are safe to unpack (:func:`check_members`): relative names without ``..``, drive,
  backslash, colon or control characters; no name twice (also not in another letter case, as
  Windows' and macOS' file systems would merge them); no member inside a symlink or a file; every
  symlink (followed through other symlinks of the zip) stays inside the folder; deflate or stored
  only; no member of 2 GiB or more or claiming more than deflate can inflate (1032-fold), no two
  members sharing data, and no more than 20 times the zip's size (or 16 GiB) unpacked in all;
* ``trispr-module.json`` is at its root, valid for Trispr Flow (schema_version 1, id, name,
  version, kind ``sidecar`` for the engine and ``runtime`` for a runtime part, ``entrypoint`` and
  every ``required_assets`` path safe, relative and present in the zip, no ``executable_hooks``);
  the engine is of this project's version;
* the index holds one entry for the module's id with exactly the index fields, the manifest's
  kind/name/version, an ``asset_url`` ending in the zip's name, and the zip's sha256 and size.

Then each zip is unpacked (modes and symlinks restored) into ``<tmp>/modules/<id>/``, the layout
the app installs modules in, every required asset must be there, and a split engine must name the
runtime part given (id, version, fingerprint). The engine, started from its folder with a desktop
app's minimal environment, must write ``ready`` (of its version) first, **transcribe** the bundled
speech clip (``bin/_internal/vibevoice_rpc/data/two_speakers.opus``) with the tiny checkpoint, and,
when bitsandbytes is in the bundle, reload in int8 and transcribe again; then ``shutdown`` -> exit 0.
The tiny checkpoint is built by this Python (``vibevoice_rpc.model.tiny``, which needs torch and
transformers) unless ``--tiny-model DIR`` names one.

Prints the figures; exits 1 with a ``FAIL:`` line on the first failure. Every wait has a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import unicodedata
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import module_parts as parts  # noqa: E402
from package_module import MANIFEST_FILE, project_version, sha256_of  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests.rpc_client import RpcProcess  # noqa: E402  (standard library only)

READY_TIMEOUT = 120.0  # a cold start of freshly unpacked files on a busy machine
TRANSCRIBE_TIMEOUT = 300.0  # torch import + model load + a few tokens of the tiny model
EXIT_TIMEOUT = 30.0
TINY_BUILD_TIMEOUT = 600.0
CLIP = "bin/_internal/vibevoice_rpc/data/two_speakers.opus"
CLIP_SECONDS = 11.5

# What an unzip may be asked to write. A release asset is under 2 GiB, so no member of 2 GiB or
# more can be honest (the largest file shipped, cublasLt, is 517 MiB). Deflate cannot inflate more
# than 1032-fold, so a member that claims more has a forged header. Our packages unpack to 1.8-3.3
# times their zip's size (the CUDA bundle at level 1, the CPU bundle at level 9); a zip bomb to
# thousands of times: a zip that would unpack to more than 20 times its size, or 16 GiB, is refused.
MAX_MEMBER_BYTES = 2**31
MAX_TOTAL_BYTES = 16 * 2**30
MAX_ARCHIVE_RATIO = 20
MAX_MEMBER_RATIO = 1100
MAX_MEMBERS = 200_000
MAX_LINK_BYTES = 4096
MAX_LINK_HOPS = 40
MANIFEST_KEYS = (
    "schema_version",
    "id",
    "name",
    "version",
    "kind",
    "host_capability",
    "entrypoint",
    "required_assets",
    "sub_capabilities",
    "executable_hooks",
)
INDEX_KEYS = ("id", "kind", "name", "version", "asset_url", "sha256", "size", "min_app_version")


class CheckFailure(Exception):
    pass


def check(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailure(message)


def safe_relative(path: str) -> bool:
    """What the app accepts: relative, no ``..``, ``.`` or drive, forward slashes."""
    p = PurePosixPath(path.rstrip("/"))
    return (
        bool(path)
        and "\\" not in path
        and not p.is_absolute()
        and ":" not in p.parts[0]
        and all(part not in ("", ".", "..") for part in p.parts)
    )


# --- the zip's members, before anything is written --------------------------------------------


def _is_link(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _fold(name: str) -> str:
    """The key two names collide under on a case-insensitive file system (Windows, macOS)."""
    return unicodedata.normalize("NFC", name).casefold()


def _resolve_link(name: str, links: dict[str, str]) -> None:
    """Follow symlink ``name`` as the file system would, through every symlink of the zip it
    passes (a link to a link, a link inside a linked folder); fail when it leaves the folder."""
    hops = 0
    current = name.split("/")[:-1]  # the link's folder
    pending = list(reversed(links[_fold(name)].split("/")))
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            check(current, f"zip member {name!r} is a symlink that leads outside the folder")
            current.pop()
            continue
        current.append(part)
        target = links.get(_fold("/".join(current)))
        if target is not None:
            hops += 1
            check(hops <= MAX_LINK_HOPS, f"zip member {name!r} is a symlink loop")
            current.pop()
            check(
                not target.startswith("/"),
                f"zip member {name!r} is a symlink that leads outside the folder (via {target!r})",
            )
            pending.extend(reversed(target.split("/")))


def check_members(zf: zipfile.ZipFile) -> dict[str, Any]:
    """Refuse a zip whose unpacking could write outside its folder, overwrite its own files or
    fill the disk — from the central directory alone, before any member is extracted. Returns
    figures (members, declared bytes, largest member, highest ratio)."""
    infos = zf.infolist()
    check(len(infos) <= MAX_MEMBERS, f"the zip has {len(infos):,} members (limit {MAX_MEMBERS:,})")
    kinds: dict[str, tuple[str, str]] = {}  # folded name -> (name, "dir" | "file" | "link")
    links: dict[str, str] = {}  # folded name -> target
    total = 0
    largest = (0, "")
    ratio = (0.0, "")
    for info in infos:
        name = info.filename
        check(
            safe_relative(name)
            and ":" not in name
            and not any(ord(c) < 32 or ord(c) == 127 for c in name),
            f"zip member {name!r} is not a safe relative path",
        )
        key = _fold(name.rstrip("/"))
        if key in kinds:
            other = kinds[key][0]
            check(
                False,
                f"zip member {name!r} appears twice"
                if other.rstrip("/") == name.rstrip("/")
                else f"zip members {other!r} and {name!r} are the same file on Windows and macOS",
            )
        check(
            info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED),
            f"zip member {name!r} uses compression method {info.compress_type} "
            "(the app unzips deflate and stored only)",
        )
        check(
            info.file_size < MAX_MEMBER_BYTES,
            f"zip member {name!r} declares {info.file_size:,} bytes (2 GiB or more)",
        )
        r = info.file_size / max(info.compress_size, 1)
        check(
            r <= MAX_MEMBER_RATIO,
            f"zip member {name!r} claims to inflate {info.compress_size:,} bytes to "
            f"{info.file_size:,} ({r:,.0f}-fold; deflate cannot exceed 1032-fold)",
        )
        ratio = max(ratio, (r, name))
        total += info.file_size
        check(
            total <= MAX_TOTAL_BYTES,
            f"the zip unpacks to more than {MAX_TOTAL_BYTES:,} bytes (at {name!r})",
        )
        largest = max(largest, (info.file_size, name))
        if _is_link(info):
            check(not info.is_dir(), f"zip member {name!r} is a symlink named as a folder")
            check(
                info.file_size <= MAX_LINK_BYTES,
                f"zip member {name!r} is a symlink of {info.file_size:,} bytes",
            )
            target = zf.read(info).decode("utf-8", "replace")
            check(
                target
                and not target.startswith("/")
                and "\\" not in target
                and "\0" not in target
                and ":" not in target.split("/")[0],
                f"zip member {name!r} is a symlink to {target!r}",
            )
            links[key] = target
            kinds[key] = (name, "link")
        else:
            kinds[key] = (name, "dir" if info.is_dir() else "file")
    size = zf.fp.seek(0, os.SEEK_END) if zf.fp is not None else 0
    check(
        total <= MAX_ARCHIVE_RATIO * max(size, 1),
        f"the zip ({size:,} bytes) unpacks to {total:,} bytes, more than {MAX_ARCHIVE_RATIO} "
        f"times its size: a zip bomb (largest: {largest[1]!r}, {largest[0]:,} bytes)",
    )
    end = 0  # members whose data overlap (one compressed stream counted many times): a bomb
    for info in sorted(infos, key=lambda i: i.header_offset):
        check(
            info.header_offset >= end,
            f"zip member {info.filename!r} overlaps the data of the member before it",
        )
        end = info.header_offset + 30 + len(info.orig_filename.encode()) + info.compress_size
    for key, (name, _) in kinds.items():  # nothing is written through a symlink or into a file
        folders = key.split("/")[:-1]
        for i in range(1, len(folders) + 1):
            above = kinds.get("/".join(folders[:i]))
            if above is not None and above[1] != "dir":
                what = "a symlink" if above[1] == "link" else "a file"
                check(False, f"zip member {name!r} would be written through {above[0]!r}, {what}")
    for name, kind in kinds.values():
        if kind == "link":
            _resolve_link(name, links)
    return {"members": len(infos), "declared_bytes": total, "largest": largest, "ratio": ratio}


def check_manifest(zf: zipfile.ZipFile, version: str | None, kind: str | None = None) -> dict:
    """The zip's trispr-module.json; ``kind``: the one expected (None: sidecar or runtime)."""
    names = set(zf.namelist())
    check(MANIFEST_FILE in names, f"{MANIFEST_FILE} is not at the zip's root")
    check(zf.getinfo(MANIFEST_FILE).file_size < 1 << 20, f"{MANIFEST_FILE} is over 1 MiB")
    try:
        manifest = json.loads(zf.read(MANIFEST_FILE).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckFailure(f"{MANIFEST_FILE} is not JSON: {exc}") from None
    check(isinstance(manifest, dict), f"{MANIFEST_FILE} is not an object")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    check(not missing, f"{MANIFEST_FILE} lacks {missing}")
    check(manifest["schema_version"] == 1, f"schema_version {manifest['schema_version']!r} != 1")
    for key in ("id", "name", "version"):
        check(
            isinstance(manifest[key], str) and manifest[key].strip(), f"{key} is empty: {manifest}"
        )
    kinds = (kind,) if kind else ("sidecar", "runtime")
    check(manifest["kind"] in kinds, f"kind {manifest['kind']!r} is not {' or '.join(kinds)}")
    check(isinstance(manifest["host_capability"], str), "host_capability is not a string")
    if version is not None and manifest["kind"] == "sidecar":
        check(manifest["version"] == version, f"version {manifest['version']} != project {version}")
    entry = manifest["entrypoint"]
    check(isinstance(entry, str) and safe_relative(entry), f"entrypoint {entry!r} is not safe")
    check(entry in names, f"the entrypoint {entry} is not in the zip")
    check(
        manifest["executable_hooks"] == [], "executable_hooks must be empty (the app refuses them)"
    )
    check(isinstance(manifest["sub_capabilities"], list), "sub_capabilities is not a list")
    assets = manifest["required_assets"]
    check(isinstance(assets, list), "required_assets is not a list")
    ids = set()
    for asset in assets:
        check(
            isinstance(asset, dict) and set(asset) == {"id", "path", "kind"},
            f"required asset {asset!r} is not {{id, path, kind}}",
        )
        check(asset["id"] and asset["id"] not in ids, f"asset id {asset['id']!r} empty or repeated")
        ids.add(asset["id"])
        check(safe_relative(asset["path"]), f"asset path {asset['path']!r} is not safe")
        if asset["kind"] == "file":
            check(asset["path"] in names, f"required asset {asset['path']} is not in the zip")
        else:
            check(asset["kind"] == "directory", f"asset kind {asset['kind']!r}")
            prefix = asset["path"].rstrip("/") + "/"
            check(any(n.startswith(prefix) for n in names), f"asset dir {prefix} is empty/missing")
    return manifest


def check_index(index_path: Path, manifest: dict, zip_path: Path) -> dict:
    index = json.loads(index_path.read_text(encoding="utf-8"))
    check(index.get("schema_version") == 1, f"index schema_version {index.get('schema_version')}")
    entries = [m for m in index.get("modules", []) if m.get("id") == manifest["id"]]
    check(len(entries) == 1, f"the index has {len(entries)} entries for {manifest['id']!r}")
    entry = entries[0]
    check(tuple(entry) == INDEX_KEYS, f"index entry keys {list(entry)} != {list(INDEX_KEYS)}")
    for key in ("kind", "name", "version"):
        check(entry[key] == manifest[key], f"index {key} {entry[key]!r} != {manifest[key]!r}")
    check(
        entry["asset_url"].startswith("https://")
        and entry["asset_url"].endswith("/" + zip_path.name),
        f"asset_url {entry['asset_url']} does not name {zip_path.name}",
    )
    check(entry["min_app_version"], "min_app_version is empty")
    size = zip_path.stat().st_size
    check(entry["size"] == size, f"index size {entry['size']} != the zip's {size}")
    digest = sha256_of(zip_path)
    check(entry["sha256"] == digest, f"index sha256 {entry['sha256']} != the zip's {digest}")
    sha_file = zip_path.with_suffix(".sha256")
    if sha_file.is_file():
        check(
            sha_file.read_text(encoding="utf-8").split() == [digest, zip_path.name],
            f"{sha_file.name} does not say '{digest}  {zip_path.name}'",
        )
    return entry


def unzip(zip_path: Path, dest: Path) -> None:
    """Extract with the modes and symlinks the zip records (zipfile.extractall drops both).
    :func:`check_members` first: nothing is written for a zip it refuses."""
    with zipfile.ZipFile(zip_path) as zf:
        check_members(zf)
        for info in zf.infolist():
            target = dest / info.filename
            mode = info.external_attr >> 16
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if _is_link(info):
                os.symlink(zf.read(info).decode("utf-8"), target)
                continue
            written = 0
            with zf.open(info) as src, target.open("xb") as dst:  # x: never through a link
                for block in iter(lambda: src.read(1024 * 1024), b""):
                    written += len(block)
                    check(written <= info.file_size, f"{info.filename} inflates past its size")
                    dst.write(block)
            if mode & 0o777:
                target.chmod(mode & 0o777)


# --- running the engine -----------------------------------------------------------------------


def minimal_env(work: Path, **extra: str) -> dict[str, str]:
    """A desktop app's child at worst: no venv, no PYTHON*, no locale."""
    home = work / "home"
    tmp = work / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env = {"HOME": str(home), "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp)}
    if os.name == "nt":
        for key in ("SYSTEMROOT", "WINDIR", "USERNAME", "SYSTEMDRIVE"):
            if key in os.environ:
                env[key] = os.environ[key]
        env["PATH"] = os.path.join(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32")
        env["USERPROFILE"] = str(home)
        env["LOCALAPPDATA"] = str(home / "AppData" / "Local")
        env["APPDATA"] = str(home / "AppData" / "Roaming")
    else:
        env["PATH"] = "/usr/bin:/bin"
    env["VIBEVOICE_OFFLINE"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def build_tiny_model() -> Path:
    """The tiny checkpoint, built (or found in its cache) by this Python from this checkout."""
    code = (
        "import sys\n"
        "from vibevoice_rpc.model.tiny import tiny_model_dir\n"
        "sys.stdout.write(str(tiny_model_dir()) + '\\n')\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", VIBEVOICE_OFFLINE="1")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=str(REPO),
            env=env,
            capture_output=True,
            timeout=TINY_BUILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise CheckFailure(
            f"building the tiny model took over {TINY_BUILD_TIMEOUT:.0f} s"
        ) from None
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    check(
        proc.returncode == 0 and lines,
        "no tiny model: this Python cannot build it (it needs vibevoice_rpc with torch and "
        "transformers); pass --tiny-model DIR\n" + proc.stderr.decode("utf-8", "replace")[-2000:],
    )
    return Path(lines[-1])


def _result(server: RpcProcess, rid: Any, what: str) -> dict:
    _, reply = server.reply(rid, TRANSCRIBE_TIMEOUT, what)
    err = reply.get("error")
    check(err is None, f"{what}: error {json.dumps(err, ensure_ascii=False)[:1500]}")
    result = reply.get("result")
    check(isinstance(result, dict), f"{what}: result is not an object: {reply!r}")
    return result


def _check_transcript(result: dict, precision: str) -> None:
    check(result.get("status") == "success", f"transcribe status: {result.get('status')!r}")
    check(isinstance(result.get("segments"), list), f"segments is not a list: {result!r}")
    meta = result.get("metadata")
    check(isinstance(meta, dict), f"metadata is not an object: {result!r}")
    duration = meta.get("duration")
    check(
        isinstance(duration, (int, float)) and abs(duration - CLIP_SECONDS) < 0.5,
        f"metadata.duration {duration!r} is not the clip's ~{CLIP_SECONDS} s",
    )
    got = meta.get("model_precision")
    check(got == precision, f"transcribed in {got!r}, not {precision}")
    speech = meta.get("speech_seconds")
    check(
        meta.get("vad") is True and isinstance(speech, (int, float)) and speech > 1.0,
        f"voice activity detection did not run in the engine: vad={meta.get('vad')!r}, "
        f"speech_seconds={speech!r}, warnings={meta.get('warnings')!r}",
    )


def check_engine(
    exe: Path, work: Path, version: str, tiny: Path, runtime: Path | None = None
) -> dict[str, float]:
    """Spawn the entrypoint as the app would; ``ready`` first, transcribe the bundled clip (and
    int8 when bitsandbytes is bundled), ``shutdown`` -> exit 0. Returns timings. ``runtime``: the
    runtime part's folder, whose libraries the engine's log must say it loaded."""
    check(exe.is_file(), f"the unzipped entrypoint {exe} is not a file")
    if os.name != "nt":
        check(os.access(exe, os.X_OK), f"the unzipped entrypoint {exe} is not executable")
    clip = exe.parent / CLIP.split("/", 1)[1]
    check(clip.is_file(), f"the bundled speech clip {clip} is missing")
    env = minimal_env(work, VIBEVOICE_MODEL_PATH=str(tiny), VIBEVOICE_PRECISION="fp32")
    figures: dict[str, float] = {}
    server = RpcProcess(cmd=[str(exe)], env=env, cwd=str(work), failure=CheckFailure, strict=False)
    try:
        first = server.wait_for(lambda m: True, READY_TIMEOUT, "the ready notification")
        figures["ready_s"] = (server.ready_at or time.perf_counter()) - server.started
        check(
            isinstance(first, dict) and first.get("method") == "ready",
            f"the first stdout line is not ready: {first!r}",
        )
        got = (first.get("params") or {}).get("version")
        check(got == version, f"ready.version {got} != the manifest's {version}")
        t0 = time.perf_counter()
        rid = server.request("transcribe", {"audio_path": str(clip), "max_new_tokens": 8})
        _check_transcript(_result(server, rid, "transcribe of the bundled clip"), "fp32")
        figures["transcribe_s"] = time.perf_counter() - t0
        if (exe.parent / "_internal" / "bitsandbytes").is_dir():
            t0 = time.perf_counter()
            rid = server.request("reload_model", {"precision": "int8"})
            reload = _result(server, rid, "reload_model int8")
            check("int8" in str(reload.get("message")), f"reload_model int8: {reload}")
            rid = server.request("transcribe", {"audio_path": str(clip), "max_new_tokens": 4})
            _check_transcript(_result(server, rid, "int8 transcribe"), "int8")
            figures["int8_s"] = time.perf_counter() - t0
        sid = server.request("shutdown")
        server.result(sid, EXIT_TIMEOUT, "the shutdown response")
        code = server.wait_exit(EXIT_TIMEOUT)
        check(code == 0, f"exit code {code} after shutdown")
        if runtime is not None:  # the libraries really came from the other folder
            check(
                f"loaded from {runtime}" in server.stderr,
                f"the engine's log does not say it loaded its libraries from {runtime}",
            )
    except CheckFailure as exc:
        text = str(exc)
        if "stderr tail:" not in text:
            text += f"\nstderr tail:\n{server.stderr[-3000:]}"
        raise CheckFailure(text) from None
    finally:
        server.kill()
    return figures


# --- the whole check --------------------------------------------------------------------------


def _read_part_file(folder: Path, name: str) -> dict:
    path = folder / "bin" / name
    check(path.is_file(), f"{path} is missing")
    value = json.loads(path.read_text(encoding="utf-8"))
    check(isinstance(value, dict), f"{path} is not a JSON object")
    return value


def check_module(
    zips: list[Path] | Path,
    index_path: Path,
    version: str | None = None,
    tiny_model: Path | None = None,
) -> dict:
    """Run every check on one module or the parts of a split one; returns figures."""
    zips = [zips] if isinstance(zips, Path) else list(zips)
    figures: dict = {"parts": []}
    manifests: list[tuple[Path, dict]] = []
    for zip_path in zips:
        with zipfile.ZipFile(zip_path) as zf:
            try:
                members = check_members(zf)
                manifest = check_manifest(zf, version)
            except CheckFailure as exc:
                raise CheckFailure(f"{zip_path.name}: {exc}") from None
            bad = zf.testzip()
            check(bad is None, f"{zip_path.name}: CRC error in {bad}")
        entry = check_index(index_path, manifest, zip_path)
        manifests.append((zip_path, manifest))
        figures["parts"].append(
            {
                "zip": zip_path.name,
                "id": manifest["id"],
                "kind": manifest["kind"],
                "size": entry["size"],
                "sha256": entry["sha256"],
                **members,
            }
        )
    engines = [(z, m) for z, m in manifests if m["kind"] == "sidecar"]
    runtimes = [(z, m) for z, m in manifests if m["kind"] == "runtime"]
    check(len(engines) == 1, f"{len(engines)} engine (sidecar) modules given, not 1")
    check(len(runtimes) <= 1, f"{len(runtimes)} runtime modules given, not 0 or 1")
    check(len({m["id"] for _, m in manifests}) == len(manifests), "two zips are the same module")
    engine_zip, engine = engines[0]
    tiny = tiny_model or build_tiny_model()
    check((tiny / "config.json").is_file(), f"the tiny model {tiny} has no config.json")
    work = Path(tempfile.mkdtemp(prefix="trispr-module-check-"))
    try:
        t0 = time.monotonic()
        for zip_path, manifest in manifests:  # the app's layout: <modules>/<id>/
            folder = work / "modules" / manifest["id"]
            unzip(zip_path, folder)
            for asset in manifest["required_assets"]:
                path = folder / asset["path"]
                ok = path.is_file() if asset["kind"] == "file" else path.is_dir()
                check(ok, f"{manifest['id']}: required asset {asset['path']} missing after unzip")
        figures["unzip_s"] = time.monotonic() - t0
        engine_dir = work / "modules" / engine["id"]
        needs_path = engine_dir / "bin" / parts.NEEDS_RUNTIME
        if runtimes:
            check(needs_path.is_file(), f"{engine_zip.name} is not an engine part ({needs_path})")
            needs = _read_part_file(engine_dir, parts.NEEDS_RUNTIME)
            runtime = runtimes[0][1]
            have = _read_part_file(work / "modules" / runtime["id"], parts.RUNTIME_DESCRIPTOR)
            check(
                (needs.get("runtime_id"), needs.get("runtime_version"), needs.get("fingerprint"))
                == (runtime["id"], runtime["version"], have.get("fingerprint")),
                f"{engine_zip.name} needs {needs.get('runtime_id')} {needs.get('runtime_version')}"
                f" ({needs.get('fingerprint')}), the runtime given is {runtime['id']} "
                f"{runtime['version']} ({have.get('fingerprint')})",
            )
            for rel in needs.get("preload", []):
                check(
                    (work / "modules" / runtime["id"] / "bin" / rel).is_file()
                    or (engine_dir / "bin" / rel).is_file(),
                    f"the library {rel} the engine loads first is in neither part",
                )
            figures["preload"] = len(needs.get("preload", []))
        else:
            check(
                not needs_path.is_file(),
                f"{engine_zip.name} is the engine part of a split bundle: give its runtime zip too",
            )
        exe = engine_dir / engine["entrypoint"]
        runtime_dir = work / "modules" / runtimes[0][1]["id"] if runtimes else None
        if runtime_dir is not None and figures.get("preload"):
            runtime_dir = runtime_dir.resolve()
        else:
            runtime_dir = None  # (a Windows engine adds DLL folders and logs nothing to match)
        figures.update(check_engine(exe, work, engine["version"], tiny, runtime_dir))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["manifest"] = engine
    engine_part = next(p for p in figures["parts"] if p["kind"] == "sidecar")
    figures["size"], figures["sha256"] = engine_part["size"], engine_part["sha256"]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check Trispr Flow module zips + their index entries; the engine transcribes."
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, help="the module zip(s) and the modules-index.json"
    )
    parser.add_argument(
        "--any-version", action="store_true", help="do not require this checkout's version"
    )
    parser.add_argument(
        "--tiny-model", type=Path, help="the tiny checkpoint (default: built by this Python)"
    )
    args = parser.parse_args(argv)
    zips = [p for p in args.paths if p.suffix.lower() != ".json"]
    indexes = [p for p in args.paths if p.suffix.lower() == ".json"]
    if len(indexes) != 1 or not zips:
        parser.error("give the module zip(s) and exactly one modules-index.json")
    try:
        f = check_module(
            zips, indexes[0], None if args.any_version else project_version(), args.tiny_model
        )
    except (CheckFailure, OSError, ValueError, zipfile.BadZipFile) as exc:
        print(f"FAIL: {exc}")
        return 1
    for p in f["parts"]:
        print(f"[ok] module {p['id']} ({p['kind']}) {p['zip']}: manifest valid, index matches")
        print(f"  size {p['size']:,} bytes ({p['size'] / 2**20:.0f} MiB), sha256 {p['sha256']}")
        size, name = p["largest"]
        print(
            f"  {p['members']:,} members, {p['declared_bytes'] / 2**20:.0f} MiB unpacked, largest "
            f"{name} ({size / 2**20:.0f} MiB), safe to unpack (no escape, duplicate or bomb)"
        )
    where = " with its runtime in a sibling folder" if "preload" in f else ""
    print(
        f"[ok] unzipped in {f['unzip_s']:.1f} s; {f['manifest']['entrypoint']}{where} -> ready in "
        f"{f['ready_s']:.2f} s, transcribed the bundled clip in {f['transcribe_s']:.1f} s"
        + (f", int8 reload + transcribe in {f['int8_s']:.1f} s" if "int8_s" in f else "")
        + ", shutdown -> exit 0"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
