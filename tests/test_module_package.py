"""The Trispr Flow module package (scripts/package_module.py, scripts/check_module.py): built from a
small fake onedir tree (no PyInstaller), and from the real dist/vibevoice-rpc when it exists."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
REAL_DIST = REPO / "dist" / "vibevoice-rpc"


def _load(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # check_module imports package_module by name
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pm = _load("package_module")
cm = _load("check_module")
VERSION = pm.project_version()
posix_only = pytest.mark.skipif(os.name == "nt", reason="a POSIX script as the fake entrypoint")

# A stand-in for the engine: writes ready, answers shutdown, exits 0 (what check_module needs).
FAKE_ENGINE = f"""#!{sys.executable}
import json, os, sys
print(json.dumps({{"jsonrpc": "2.0", "method": "ready",
                  "params": {{"version": "{VERSION}", "protocol": "1.0", "pid": os.getpid()}}}}),
      flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("method") == "shutdown":
        print(json.dumps({{"jsonrpc": "2.0", "id": msg["id"], "result": {{"status": "ok"}}}}),
              flush=True)
        sys.exit(0)
"""


def fake_onedir(root: Path) -> Path:
    """A tree shaped like the Linux onedir bundle, with a runnable entrypoint."""
    dist = root / "vibevoice-rpc"
    internal = dist / "_internal"
    for rel, data in {
        "libpython3.11.so.1.0": b"\x7fELF python",
        "base_library.zip": b"PK\x05\x06" + bytes(18),
        "torch/lib/libtorch_cpu.so": b"\x7fELF torch" * 1000,
        "torch/lib/libc10.so": b"\x7fELF c10" * 500,
        "vibevoice_rpc/data/two_speakers.opus": b"OggS clip",
        "numpy/core/_multiarray_umath.so": os.urandom(4096),  # incompressible, for the limit
    }.items():
        (internal / rel).parent.mkdir(parents=True, exist_ok=True)
        (internal / rel).write_bytes(data)
    (internal / "torch/lib/libtorch_cpu.so").chmod(0o755)
    os.symlink("torch/lib/libc10.so", internal / "libc10.so")  # as PyInstaller 6 makes on Linux
    exe = dist / "vibevoice-rpc"
    exe.write_text(FAKE_ENGINE, encoding="utf-8")
    exe.chmod(0o755)
    return dist


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    return fake_onedir(tmp_path / "dist")


def build(dist: Path, out: Path, **kw):
    return pm.package(dist, out, **kw)


def test_the_manifest_has_trispr_flows_fields_and_the_projects_version(
    dist: Path, tmp_path: Path
) -> None:
    pkg = build(dist, tmp_path / "out")
    with zipfile.ZipFile(pkg.zip_path) as zf:
        manifest = json.loads(zf.read("trispr-module.json"))
    assert list(manifest) == [
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
    ]
    assert manifest["schema_version"] == 1
    assert manifest["id"] == "analysis"
    assert manifest["version"] == VERSION
    assert manifest["kind"] == "sidecar"
    assert manifest["entrypoint"] == "bin/vibevoice-rpc"
    assert manifest["executable_hooks"] == [] and manifest["sub_capabilities"] == []
    assert {a["id"]: a["path"] for a in manifest["required_assets"]} == {
        "python_runtime": "bin/_internal/libpython3.11.so.1.0",
        "python_stdlib": "bin/_internal/base_library.zip",
        "torch_core": "bin/_internal/torch/lib/libtorch_cpu.so",
        "speech_clip": "bin/_internal/vibevoice_rpc/data/two_speakers.opus",
    }
    assert all(a["kind"] == "file" for a in manifest["required_assets"])
    assert pkg.zip_path.name == f"analysis-{VERSION}.zip"


def test_the_entrypoint_and_every_required_asset_are_in_the_zip(dist: Path, tmp_path: Path) -> None:
    pkg = build(dist, tmp_path / "out")
    with zipfile.ZipFile(pkg.zip_path) as zf:
        names = set(zf.namelist())
        assert pkg.manifest["entrypoint"] in names
        assert {a["path"] for a in pkg.manifest["required_assets"]} <= names
        assert zf.namelist()[0] == "trispr-module.json"
        assert zf.namelist()[1:] == sorted(zf.namelist()[1:])
        assert all(n.startswith("bin/") for n in zf.namelist()[1:])


def test_the_index_entry_and_sha256_file_match_the_zip(dist: Path, tmp_path: Path) -> None:
    pkg = build(
        dist, tmp_path / "out", asset_url_base="https://example.test/rel/", min_app_version="0.9.1"
    )
    index = json.loads(pkg.index_path.read_text())
    assert index["schema_version"] == 1 and index["modules"] == [pkg.entry]
    entry = pkg.entry
    assert list(entry) == [
        "id",
        "kind",
        "name",
        "version",
        "asset_url",
        "sha256",
        "size",
        "min_app_version",
    ]
    assert entry["asset_url"] == f"https://example.test/rel/analysis-{VERSION}.zip"
    assert entry["size"] == pkg.zip_path.stat().st_size
    assert entry["sha256"] == pm.sha256_of(pkg.zip_path)
    assert entry["min_app_version"] == "0.9.1"
    assert pkg.sha256_path.read_text() == f"{entry['sha256']}  {pkg.zip_path.name}\n"
    cm.check_index(pkg.index_path, pkg.manifest, pkg.zip_path)


def test_the_entry_is_merged_into_an_existing_index(dist: Path, tmp_path: Path) -> None:
    opus = {"id": "opus", "kind": "sidecar", "name": "Opus Export", "version": "0.1.0"}
    stale = {"id": "analysis", "version": "0.0.1"}
    old = tmp_path / "modules-index.json"
    old.write_text(json.dumps({"schema_version": 1, "modules": [opus, stale]}))
    pkg = build(dist, tmp_path / "out", index_in=old)
    modules = json.loads(pkg.index_path.read_text())["modules"]
    assert modules == [opus, pkg.entry]


def test_a_package_over_the_asset_limit_is_refused_and_nothing_is_left(
    dist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = pm.main(["--dist", str(dist), "--out", str(out), "--max-asset-bytes", "2000"])
    assert code == 3
    err = capsys.readouterr().err
    assert "REFUSED" in err and "over the 2,000 byte limit of one release asset" in err
    assert "CUDA" in err and "docs/TAURI.md" in err
    assert not list(out.glob("*")), "a refused package leaves no zip, partial file or index"


def test_a_stored_package_over_the_limit_is_refused_before_writing(
    dist: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(pm.TooLarge, match="would hold"):
        build(dist, out, compression=zipfile.ZIP_STORED, level=None, max_asset_bytes=4000)
    assert not out.exists()


def test_a_package_at_the_limit_is_accepted(dist: Path, tmp_path: Path) -> None:
    size = build(dist, tmp_path / "a").entry["size"]
    assert build(dist, tmp_path / "b", max_asset_bytes=size).entry["size"] == size


def test_the_zip_is_reproducible(dist: Path, tmp_path: Path) -> None:
    first = build(dist, tmp_path / "a").entry["sha256"]
    for path in dist.rglob("*"):  # new timestamps, as a rebuild would give
        if not path.is_symlink():
            os.utime(path, (1_900_000_000, 1_900_000_000))
    (dist / "_internal" / "base_library.zip").chmod(0o600)  # a stricter umask
    assert build(dist, tmp_path / "b").entry["sha256"] == first


def test_a_windows_bundle_gives_the_exe_entrypoint_and_the_windows_assets(tmp_path: Path) -> None:
    dist = tmp_path / "vibevoice-rpc"
    for rel in (
        "vibevoice-rpc.exe",
        "_internal/python3.dll",  # the stable-ABI shim: not the runtime
        "_internal/python311.dll",
        "_internal/base_library.zip",
        "_internal/torch/lib/torch_cpu.dll",
        "_internal/vibevoice_rpc/data/two_speakers.opus",
    ):
        (dist / rel).parent.mkdir(parents=True, exist_ok=True)
        (dist / rel).write_bytes(b"MZ")
    pkg = build(dist, tmp_path / "out")
    assert pkg.manifest["entrypoint"] == "bin/vibevoice-rpc.exe"
    assert {a["id"]: a["path"] for a in pkg.manifest["required_assets"]} == {
        "python_runtime": "bin/_internal/python311.dll",
        "python_stdlib": "bin/_internal/base_library.zip",
        "torch_core": "bin/_internal/torch/lib/torch_cpu.dll",
        "speech_clip": "bin/_internal/vibevoice_rpc/data/two_speakers.opus",
    }
    with zipfile.ZipFile(pkg.zip_path) as zf:  # the entrypoint is 0755 wherever it was zipped
        assert zf.getinfo("bin/vibevoice-rpc.exe").external_attr >> 16 == stat.S_IFREG | 0o755


def test_an_incomplete_bundle_is_refused(dist: Path, tmp_path: Path) -> None:
    (dist / "_internal" / "torch" / "lib" / "libtorch_cpu.so").unlink()
    with pytest.raises(pm.PackageError, match="not a complete bundle.*torch_core"):
        build(dist, tmp_path / "out")
    (dist / "vibevoice-rpc").unlink()
    with pytest.raises(pm.PackageError, match="holds no vibevoice-rpc"):
        build(dist, tmp_path / "out")


def test_an_output_folder_inside_the_bundle_is_refused(dist: Path) -> None:
    with pytest.raises(pm.PackageError, match="inside the bundle"):
        build(dist, dist / "_internal" / "module")


def test_a_symlink_out_of_the_bundle_is_refused(dist: Path, tmp_path: Path) -> None:
    os.symlink("/etc/hostname", dist / "_internal" / "escape")
    with pytest.raises(pm.PackageError, match="links outside the bundle"):
        build(dist, tmp_path / "out")


@posix_only
def test_modes_and_symlinks_survive_unzipping(dist: Path, tmp_path: Path) -> None:
    pkg = build(dist, tmp_path / "out")
    dest = tmp_path / "unzipped"
    cm.unzip(pkg.zip_path, dest)
    exe = dest / "bin" / "vibevoice-rpc"
    assert stat.S_IMODE(exe.stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "bin/_internal/torch/lib/libtorch_cpu.so").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "bin/_internal/base_library.zip").stat().st_mode) == 0o644
    link = dest / "bin/_internal/libc10.so"
    assert link.is_symlink() and os.readlink(link) == "torch/lib/libc10.so"
    assert link.read_bytes() == (dist / "_internal/torch/lib/libc10.so").read_bytes()


@posix_only
def test_check_module_unzips_the_fake_module_and_its_entrypoint_answers_ready(
    dist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pkg = build(dist, tmp_path / "out")
    assert cm.main([str(pkg.zip_path), str(pkg.index_path)]) == 0
    out = capsys.readouterr().out
    assert f"sha256 {pkg.entry['sha256']}" in out and "-> ready in" in out


def test_check_module_rejects_a_zip_that_does_not_match_its_index_entry(
    dist: Path, tmp_path: Path
) -> None:
    pkg = build(dist, tmp_path / "out")
    index = json.loads(pkg.index_path.read_text())
    index["modules"][0]["sha256"] = "0" * 64
    pkg.index_path.write_text(json.dumps(index))
    with pytest.raises(cm.CheckFailure, match="index sha256"):
        cm.check_index(pkg.index_path, pkg.manifest, pkg.zip_path)
    index["modules"][0]["sha256"] = pkg.entry["sha256"]
    index["modules"][0]["size"] += 1
    pkg.index_path.write_text(json.dumps(index))
    with pytest.raises(cm.CheckFailure, match="index size"):
        cm.check_index(pkg.index_path, pkg.manifest, pkg.zip_path)


def test_check_module_rejects_a_manifest_without_its_entrypoint(tmp_path: Path) -> None:
    manifest = pm.make_manifest(VERSION, "bin/vibevoice-rpc.exe", [])
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("trispr-module.json", json.dumps(manifest))
        zf.writestr("bin/other.exe", b"MZ")
    with zipfile.ZipFile(bad) as zf, pytest.raises(cm.CheckFailure, match="entrypoint.*not in"):
        cm.check_manifest(zf, VERSION)
    manifest["entrypoint"] = "../vibevoice-rpc.exe"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("trispr-module.json", json.dumps(manifest))
    with zipfile.ZipFile(bad) as zf, pytest.raises(cm.CheckFailure, match="not safe"):
        cm.check_manifest(zf, VERSION)


@pytest.mark.skipif(
    not (REAL_DIST / "vibevoice-rpc").is_file() and not (REAL_DIST / "vibevoice-rpc.exe").is_file(),
    reason="no frozen bundle in dist/vibevoice-rpc (pyinstaller build_exe.spec)",
)
@pytest.mark.timeout(900)
def test_the_real_bundle_packaged_and_unzipped_answers_ready(tmp_path: Path) -> None:
    # ZIP_STORED: the deflate path is the same code and CI's check covers it; this stays fast.
    pkg = build(REAL_DIST, tmp_path / "out", compression=zipfile.ZIP_STORED, level=None)
    figures = cm.check_module(pkg.zip_path, pkg.index_path, VERSION)
    assert figures["sha256"] == pkg.entry["sha256"] and figures["size"] == pkg.entry["size"]
    assert figures["manifest"]["entrypoint"] in ("bin/vibevoice-rpc", "bin/vibevoice-rpc.exe")
