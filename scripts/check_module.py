"""Check a Trispr Flow module package the way the app will use it.

    python scripts/check_module.py dist/module/analysis-0.1.0.zip dist/module/modules-index.json

* the zip holds ``trispr-module.json`` at its root, valid for Trispr Flow (schema_version 1, id,
  name, version, kind ``sidecar``, ``entrypoint`` and every ``required_assets`` path safe,
  relative and present in the zip, no ``executable_hooks``) and of this project's version;
* the index holds one entry for the manifest's id with exactly the index fields, the manifest's
  kind/name/version, an ``asset_url`` ending in the zip's name, and the zip's sha256 and size;
* unzipped into a fresh temporary directory (outside the repository, modes and symlinks restored),
  the entrypoint is an executable file that writes ``ready`` (of the manifest's version) as its
  first stdout line, then answers ``shutdown`` and exits 0.

Prints the zip's size and sha256; exits 1 with a ``FAIL:`` line on the first failure. Every wait
has a timeout. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parent))
from package_module import MANIFEST_FILE, project_version, sha256_of  # noqa: E402

READY_TIMEOUT = 120.0  # a cold start of freshly unpacked files on a busy machine
EXIT_TIMEOUT = 30.0
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


def check_manifest(zf: zipfile.ZipFile, version: str | None) -> dict:
    names = set(zf.namelist())
    check(MANIFEST_FILE in names, f"{MANIFEST_FILE} is not at the zip's root")
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
    check(manifest["kind"] == "sidecar", f"kind {manifest['kind']!r} != 'sidecar'")
    check(isinstance(manifest["host_capability"], str), "host_capability is not a string")
    if version is not None:
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
    for name in names:  # what an unzip would write outside its folder
        check(safe_relative(name), f"zip member {name!r} is not a safe relative path")
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
    """Extract with the modes and symlinks the zip records (zipfile.extractall drops both)."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            check(safe_relative(info.filename), f"unsafe member {info.filename!r}")
            target = dest / info.filename
            mode = info.external_attr >> 16
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISLNK(mode):
                link = zf.read(info).decode("utf-8")
                resolved = (target.parent / link).resolve()
                check(dest.resolve() in resolved.parents, f"{info.filename} links outside: {link}")
                os.symlink(link, target)
                continue
            with zf.open(info) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
            if mode & 0o777:
                target.chmod(mode & 0o777)


def minimal_env(work: Path) -> dict[str, str]:
    """A desktop app's child at worst: no venv, no PYTHON*, no locale."""
    home = work / "home"
    tmp = work / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env = {"HOME": str(home), "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp)}
    if os.name == "nt":
        for key in ("SYSTEMROOT", "WINDIR", "USERNAME"):
            if key in os.environ:
                env[key] = os.environ[key]
        env["PATH"] = os.path.join(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32")
        env["USERPROFILE"] = str(home)
        env["LOCALAPPDATA"] = str(home / "AppData" / "Local")
        env["APPDATA"] = str(home / "AppData" / "Roaming")
    else:
        env["PATH"] = "/usr/bin:/bin"
    env["VIBEVOICE_OFFLINE"] = "1"
    return env


def check_ready(exe: Path, work: Path, version: str) -> tuple[float, float]:
    """Spawn the entrypoint; its first stdout line must be ``ready``; ``shutdown`` -> exit 0."""
    check(exe.is_file(), f"the unzipped entrypoint {exe} is not a file")
    if os.name != "nt":
        check(os.access(exe, os.X_OK), f"the unzipped entrypoint {exe} is not executable")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(exe)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=work,
        env=minimal_env(work),
    )
    lines: queue.Queue[bytes] = queue.Queue()
    err: list[bytes] = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    try:
        try:
            first = lines.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            raise CheckFailure(f"no stdout line within {READY_TIMEOUT:.0f} s") from None
        ready_s = time.monotonic() - t0
        msg = json.loads(first)
        check(msg.get("method") == "ready", f"the first stdout line is not ready: {first!r}")
        got = (msg.get("params") or {}).get("version")
        check(got == version, f"ready.version {got} != the manifest's {version}")
        proc.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"shutdown"}\n')
        proc.stdin.flush()
        t1 = time.monotonic()
        try:
            code = proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise CheckFailure(f"no exit within {EXIT_TIMEOUT:.0f} s of shutdown") from None
        check(code == 0, f"exit code {code} after shutdown")
        return ready_s, time.monotonic() - t1
    except CheckFailure as exc:
        tail = b"".join(err)[-3000:].decode("utf-8", "replace")
        raise CheckFailure(f"{exc}\nstderr tail:\n{tail}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(EXIT_TIMEOUT)


def check_module(zip_path: Path, index_path: Path, version: str | None = None) -> dict:
    """Run every check; returns figures. Raises CheckFailure."""
    figures: dict = {"size": zip_path.stat().st_size}
    with zipfile.ZipFile(zip_path) as zf:
        bad = zf.testzip()
        check(bad is None, f"CRC error in {bad}")
        manifest = check_manifest(zf, version)
    entry = check_index(index_path, manifest, zip_path)
    figures["sha256"] = entry["sha256"]
    work = Path(tempfile.mkdtemp(prefix="trispr-module-check-"))
    try:
        t0 = time.monotonic()
        unzip(zip_path, work / "module")
        figures["unzip_s"] = time.monotonic() - t0
        exe = work / "module" / manifest["entrypoint"]
        figures["ready_s"], figures["exit_s"] = check_ready(exe, work, manifest["version"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["manifest"] = manifest
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a Trispr Flow module zip + index entry.")
    parser.add_argument("zip", type=Path)
    parser.add_argument("index", type=Path, help="the modules-index.json listing it")
    parser.add_argument(
        "--any-version", action="store_true", help="do not require this checkout's version"
    )
    args = parser.parse_args(argv)
    try:
        f = check_module(args.zip, args.index, None if args.any_version else project_version())
    except (CheckFailure, OSError, ValueError, zipfile.BadZipFile) as exc:
        print(f"FAIL: {exc}")
        return 1
    print(f"[ok] module {args.zip.name}: manifest valid, index entry matches")
    print(f"  size {f['size']:,} bytes ({f['size'] / 2**20:.0f} MiB), sha256 {f['sha256']}")
    print(
        f"[ok] unzipped into a fresh directory in {f['unzip_s']:.1f} s; "
        f"{f['manifest']['entrypoint']} -> ready in {f['ready_s']:.2f} s, "
        f"shutdown -> exit 0 in {f['exit_s']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
