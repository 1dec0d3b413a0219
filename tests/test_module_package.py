"""The Trispr Flow module package (scripts/package_module.py, scripts/check_module.py): built from a
small fake onedir tree (no PyInstaller), and from the real dist/vibevoice-rpc when it exists."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import struct
import sys
import tempfile
import warnings
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
parts = _load("module_parts")
VERSION = pm.project_version()
posix_only = pytest.mark.skipif(os.name == "nt", reason="a POSIX script as the fake entrypoint")

# A stand-in for the engine: writes ready, transcribes (a result of the app's schema for the
# bundled clip), answers shutdown and exits 0 — what check_module needs. BROKEN: as a bundle that
# cannot load a model, it answers every transcribe with the -32004 the real engine gives. NO_VAD:
# as a bundle without the voice activity detector's weights, it hears the whole file and says so.
FAKE_ENGINE = """#!@PYTHON@
import json, os, sys
BROKEN = @BROKEN@
NO_VAD = @NO_VAD@
def send(obj):
    print(json.dumps(obj), flush=True)
send({"jsonrpc": "2.0", "method": "ready",
      "params": {"version": "@VERSION@", "protocol": "1.0", "pid": os.getpid()}})
for line in sys.stdin:
    msg = json.loads(line)
    method, rid = msg.get("method"), msg.get("id")
    if method == "transcribe" and BROKEN:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32004,
              "message": "model load failed: Cannot load dependency data",
              "data": {"kind": "model_load_failed"}}})
    elif method == "transcribe":
        send({"jsonrpc": "2.0", "id": rid, "result": {"status": "success", "segments": [],
              "metadata": {"duration": 11.5, "language": "en", "processing_time": 0.1,
                           "model_precision": "fp32", "num_speakers": 0, "vad": not NO_VAD,
                           "speech_seconds": None if NO_VAD else 10.2,
                           "warnings": ["voice activity detection unavailable"] if NO_VAD
                           else []}}})
    elif method == "shutdown":
        send({"jsonrpc": "2.0", "id": rid, "result": {"status": "ok"}})
        sys.exit(0)
"""


def fake_engine(broken: bool = False, no_vad: bool = False) -> str:
    return (
        FAKE_ENGINE.replace("@PYTHON@", sys.executable)
        .replace("@VERSION@", VERSION)
        .replace("@BROKEN@", str(broken))
        .replace("@NO_VAD@", str(no_vad))
    )


def fake_onedir(root: Path, broken: bool = False, no_vad: bool = False) -> Path:
    """A tree shaped like the Linux onedir bundle, with a runnable entrypoint (``broken``: one
    that cannot transcribe; ``no_vad``: one whose voice activity detector did not run)."""
    dist = root / "vibevoice-rpc"
    internal = dist / "_internal"
    for rel, data in {
        "libpython3.11.so.1.0": b"\x7fELF python",
        "base_library.zip": b"PK\x05\x06" + bytes(18),
        "torch/lib/libtorch_cpu.so": b"\x7fELF torch" * 1000,
        "torch/lib/libc10.so": b"\x7fELF c10" * 500,
        "vibevoice_rpc/data/two_speakers.opus": b"OggS clip",
        "numpy/core/_multiarray_umath.so": os.urandom(4096),  # incompressible, for the limit
        "torch-2.13.0+cpu.dist-info/METADATA": b"Name: torch\nVersion: 2.13.0+cpu\n",
    }.items():
        (internal / rel).parent.mkdir(parents=True, exist_ok=True)
        (internal / rel).write_bytes(data)
    (internal / "torch/lib/libtorch_cpu.so").chmod(0o755)
    os.symlink("torch/lib/libc10.so", internal / "libc10.so")  # as PyInstaller 6 makes on Linux
    exe = dist / "vibevoice-rpc"
    exe.write_text(fake_engine(broken, no_vad), encoding="utf-8")
    exe.chmod(0o755)
    return dist


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    return fake_onedir(tmp_path / "dist")


@pytest.fixture
def fake_tiny(tmp_path: Path) -> Path:
    """A checkpoint folder for the fake engine (it never reads it)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


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
def test_check_module_unzips_the_fake_module_and_its_entrypoint_answers_ready_and_transcribes(
    dist: Path, tmp_path: Path, fake_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pkg = build(dist, tmp_path / "out")
    args = [str(pkg.zip_path), str(pkg.index_path), "--tiny-model", str(fake_tiny)]
    assert cm.main(args) == 0
    out = capsys.readouterr().out
    assert f"sha256 {pkg.entry['sha256']}" in out and "-> ready in" in out
    assert "transcribed the bundled clip" in out


# As the transformers 5.25 bundle without kernels' data: ready and health fine, every transcribe
# -32004 (ready alone passed it; the check must transcribe). And a bundle without the voice activity
# detector's weights (package data): it still transcribes, the whole file with a warning, so the
# check reads the metadata.
FAILING_BUNDLES = {
    "cannot_load_a_model": (
        {"broken": True},
        ["FAIL: transcribe of the bundled clip: error", "-32004", "Cannot load dependency data"],
    ),
    "without_voice_activity_detection": (
        {"no_vad": True},
        ["FAIL: voice activity detection did not run in the engine: vad=False"],
    ),
}


@posix_only
@pytest.mark.parametrize("case", list(FAILING_BUNDLES))
def test_check_module_fails_a_bundle_that_does_not_transcribe_as_it_should(
    case: str, tmp_path: Path, fake_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    how, says = FAILING_BUNDLES[case]
    bundle = fake_onedir(tmp_path / "dist", **how)
    pkg = build(bundle, tmp_path / "out")
    args = [str(pkg.zip_path), str(pkg.index_path), "--tiny-model", str(fake_tiny)]
    assert cm.main(args) == 1
    out = capsys.readouterr().out
    assert out.startswith(says[0]), out
    assert all(words in out for words in says[1:]), out


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


real_bundle = pytest.mark.skipif(
    not (REAL_DIST / "vibevoice-rpc").is_file() and not (REAL_DIST / "vibevoice-rpc.exe").is_file(),
    reason="no frozen bundle in dist/vibevoice-rpc (pyinstaller build_exe.spec)",
)


@real_bundle
@pytest.mark.timeout(900)
def test_the_real_bundle_packaged_and_unzipped_transcribes(
    tmp_path: Path, tiny_model: Path
) -> None:
    # ZIP_STORED: the deflate path is the same code and CI's check covers it; this stays fast.
    pkg = build(REAL_DIST, tmp_path / "out", compression=zipfile.ZIP_STORED, level=None)
    figures = cm.check_module(pkg.zip_path, pkg.index_path, VERSION, tiny_model)
    assert figures["sha256"] == pkg.entry["sha256"] and figures["size"] == pkg.entry["size"]
    assert figures["manifest"]["entrypoint"] in ("bin/vibevoice-rpc", "bin/vibevoice-rpc.exe")
    assert figures["transcribe_s"] > 0
    if (REAL_DIST / "_internal" / "bitsandbytes").is_dir():
        assert figures["int8_s"] > 0  # the quantized reload transcribed too


# --- hostile zips (issue 19, item 5): refused before anything is extracted ---------------------


def hostile_zip(path: Path, members: list[tuple[str, str, bytes | str]], level: int = 6) -> Path:
    """A zip of (kind, name, data) members, kind file/dir/link, as a hostile mirror could serve."""
    modes = {
        "file": stat.S_IFREG | 0o644,
        "dir": stat.S_IFDIR | 0o755,
        "link": stat.S_IFLNK | 0o777,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about a duplicate name: that is the point
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
            for kind, name, data in members:
                info = zipfile.ZipInfo(name, date_time=pm.ZIP_TIME)
                info.create_system = 3
                info.external_attr = modes[kind] << 16 | (0x10 if kind == "dir" else 0)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
    return path


def forge_size(path: Path, name: str, file_size: int) -> None:
    """Rewrite a member's uncompressed size in its central directory record and local header,
    as a forged zip would declare it (the bytes that follow stay small)."""
    data = bytearray(path.read_bytes())
    eocd = data.rindex(b"PK\x05\x06")
    count, _, cd_offset = struct.unpack_from("<HII", data, eocd + 10)
    pos = cd_offset
    for _ in range(count):
        n, m, k = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46 : pos + 46 + n].decode() == name:
            struct.pack_into("<I", data, pos + 24, file_size)
            local = struct.unpack_from("<I", data, pos + 42)[0]
            struct.pack_into("<I", data, local + 22, file_size)
        pos += 46 + n + m + k
    path.write_bytes(bytes(data))


def add_overlapping_entry(path: Path, name: str, alias: str) -> None:
    """A second central-directory entry, named ``alias``, for ``name``'s data (the overlapping
    files of a non-recursive zip bomb): ``alias`` must be as long as ``name``."""
    data = bytearray(path.read_bytes())
    eocd = data.rindex(b"PK\x05\x06")
    count, cd_size, cd_offset = struct.unpack_from("<HII", data, eocd + 10)
    pos = cd_offset
    for _ in range(count):
        n, m, k = struct.unpack_from("<HHH", data, pos + 28)
        record = data[pos : pos + 46 + n + m + k]
        if record[46 : 46 + n].decode() == name:
            break
        pos += 46 + n + m + k
    copy = record[:46] + alias.encode() + record[46 + n :]
    data[eocd:eocd] = copy
    eocd += len(copy)
    struct.pack_into("<HHI", data, eocd + 8, count + 1, count + 1, cd_size + len(copy))
    path.write_bytes(bytes(data))


HOSTILE = {
    # a/l2 -> b/l1/../.. looks inside (a), but b/l1 is a link to a's parent: two levels up from it
    # is outside. Each link alone resolves inside on a fresh disk, so a per-link check passed it.
    "a link to a link that escapes": (
        [("link", "a/l2", "b/l1/../.."), ("link", "a/b/l1", "..")],
        "zip member 'a/l2' is a symlink that leads outside the folder",
    ),
    # ... and a file written through that link lands outside.
    "a file written through a link that escapes": (
        [("link", "a/l2", "b/l1/../.."), ("link", "a/b/l1", ".."), ("file", "a/l2/evil.so", b"x")],
        "zip member 'a/l2/evil.so' would be written through 'a/l2', a symlink",
    ),
    "a link inside a folder that is a link": (
        [("dir", "a/b/", b""), ("link", "a/d", "b"), ("link", "a/d/e", "x")],
        "zip member 'a/d/e' would be written through 'a/d', a symlink",
    ),
    "an absolute link": (
        [("link", "bin/etc", "/etc")],
        "zip member 'bin/etc' is a symlink to '/etc'",
    ),
    "a name twice": (
        [("file", "bin/x.dll", b"first"), ("file", "bin/x.dll", b"second")],
        "zip member 'bin/x.dll' appears twice",
    ),
    "two names Windows merges": (
        [("file", "bin/Torch.dll", b"a"), ("file", "bin/torch.dll", b"b")],
        "zip members 'bin/Torch.dll' and 'bin/torch.dll' are the same file on Windows and macOS",
    ),
    "a file inside a file": (
        [("file", "bin/a", b"a"), ("file", "bin/a/b", b"b")],
        "zip member 'bin/a/b' would be written through 'bin/a', a file",
    ),
    "an NTFS stream name": (
        [("file", "bin/x.exe:payload", b"x")],
        "zip member 'bin/x.exe:payload' is not a safe relative path",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_check_module_refuses_a_hostile_zip_before_extracting_anything(
    case: str,
    tmp_path: Path,
    fake_tiny: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    members, message = HOSTILE[case]
    bad = hostile_zip(tmp_path / "hostile.zip", [("file", "trispr-module.json", b"{}"), *members])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    index = tmp_path / "modules-index.json"
    assert cm.main([str(bad), str(index), "--tiny-model", str(fake_tiny)]) == 1
    assert capsys.readouterr().out == f"FAIL: hostile.zip: {message}\n"
    assert not list(scratch.iterdir()), "nothing was unpacked"
    with pytest.raises(cm.CheckFailure, match=re.escape(message)):
        cm.unzip(bad, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_check_module_refuses_a_member_of_2_gib(tmp_path: Path) -> None:
    bad = hostile_zip(tmp_path / "big.zip", [("file", "bin/big.bin", b"\0" * 4096)])
    forge_size(bad, "bin/big.bin", 2**31)
    with zipfile.ZipFile(bad) as zf:
        assert zf.getinfo("bin/big.bin").file_size == 2**31  # what the header now claims
        with pytest.raises(cm.CheckFailure, match=r"'bin/big.bin' declares 2,147,483,648 bytes"):
            cm.check_members(zf)
    with pytest.raises(cm.CheckFailure, match="2 GiB or more"):
        cm.unzip(bad, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_check_module_refuses_a_member_claiming_more_than_deflate_can_inflate(
    tmp_path: Path,
) -> None:
    bad = hostile_zip(tmp_path / "forged.zip", [("file", "bin/lib.so", b"\0" * 100)])
    forge_size(bad, "bin/lib.so", 50_000_000)
    with zipfile.ZipFile(bad) as zf, pytest.raises(cm.CheckFailure, match="'bin/lib.so' claims"):
        cm.check_members(zf)


def test_check_module_refuses_a_zip_bomb_by_ratio(tmp_path: Path) -> None:
    # 20 MB of zeros deflate to ~20 KB: an honest deflate stream, 1000-fold; our packages unpack
    # to at most 3.3 times their size.
    bomb = hostile_zip(tmp_path / "bomb.zip", [("file", "bin/zeros", b"\0" * 20_000_000)], level=9)
    assert bomb.stat().st_size < 100_000
    with zipfile.ZipFile(bomb) as zf, pytest.raises(cm.CheckFailure, match="a zip bomb") as exc:
        cm.check_members(zf)
    assert "'bin/zeros'" in str(exc.value)


def test_check_module_refuses_members_that_share_their_data(tmp_path: Path) -> None:
    bomb = hostile_zip(tmp_path / "overlap.zip", [("file", "bin/aaaa", os.urandom(4096))])
    add_overlapping_entry(bomb, "bin/aaaa", "bin/bbbb")
    with zipfile.ZipFile(bomb) as zf:
        assert sorted(zf.namelist()) == ["bin/aaaa", "bin/bbbb"]
        with pytest.raises(cm.CheckFailure, match="overlaps the data of the member before it"):
            cm.check_members(zf)


def test_our_packages_pass_the_member_checks_at_every_level(dist: Path, tmp_path: Path) -> None:
    for level in (1, 9):
        pkg = build(dist, tmp_path / str(level), level=level)
        with zipfile.ZipFile(pkg.zip_path) as zf:
            figures = cm.check_members(zf)
        assert figures["members"] == len(zf.namelist())


# --- split: the engine and its libraries as two modules (issue 18, item 4) ----------------------


def test_a_split_gives_an_engine_module_and_a_runtime_module_with_their_own_entries(
    dist: Path, tmp_path: Path
) -> None:
    engine, runtime = pm.build_module(dist, tmp_path / "out", split="always")
    assert engine.zip_path.name == f"analysis-{VERSION}.zip"
    assert runtime.zip_path.name == "analysis_runtime-2.13.0.zip"  # the bundled torch's version
    assert (engine.manifest["id"], engine.manifest["kind"]) == ("analysis", "sidecar")
    assert (runtime.manifest["id"], runtime.manifest["kind"]) == ("analysis_runtime", "runtime")
    assert runtime.manifest["version"] == "2.13.0"
    assert runtime.manifest["entrypoint"] == "bin/vibevoice-runtime.json"
    index = json.loads(engine.index_path.read_text())["modules"]
    assert index == [engine.entry, runtime.entry]
    for pkg in (engine, runtime):
        assert pkg.entry["sha256"] == pm.sha256_of(pkg.zip_path)
        assert pkg.entry["size"] == pkg.zip_path.stat().st_size
        assert pkg.sha256_path.read_text() == f"{pkg.entry['sha256']}  {pkg.zip_path.name}\n"
    lib = "bin/_internal/torch/lib/libtorch_cpu.so"
    with zipfile.ZipFile(engine.zip_path) as ez, zipfile.ZipFile(runtime.zip_path) as rz:
        engine_names, runtime_names = set(ez.namelist()), set(rz.namelist())
        needs = json.loads(ez.read("bin/vibevoice-needs-runtime.json"))
        descriptor = json.loads(rz.read("bin/vibevoice-runtime.json"))
    # every file of the bundle is in exactly one part, at the same path
    assert engine_names & runtime_names == {"trispr-module.json"}
    whole = {n for n, _ in pm.bundle_members(dist)}
    added = {"trispr-module.json", "bin/vibevoice-needs-runtime.json", "bin/vibevoice-runtime.json"}
    assert (engine_names | runtime_names) - added == whole
    assert lib in runtime_names and lib not in engine_names
    assert (needs["runtime_id"], needs["runtime_version"]) == ("analysis_runtime", "2.13.0")
    assert (
        needs["fingerprint"]
        == descriptor["fingerprint"]
        == parts.fingerprint(dist, ["_internal/torch/lib/libtorch_cpu.so"])
    )
    assert needs["library_dirs"] == ["_internal/torch/lib"]
    # each part's required assets are its own: the app's install check of each module holds
    assert {a["path"] for a in engine.manifest["required_assets"]} <= engine_names
    assert {a["path"] for a in runtime.manifest["required_assets"]} == {lib}


@posix_only
def test_check_module_checks_both_parts_and_the_engine_transcribes(
    dist: Path, tmp_path: Path, fake_tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine, runtime = pm.build_module(dist, tmp_path / "out", split="always")
    args = [str(engine.zip_path), str(runtime.zip_path), str(engine.index_path)]
    assert cm.main([*args, "--tiny-model", str(fake_tiny)]) == 0
    out = capsys.readouterr().out
    assert (
        "[ok] module analysis (sidecar)" in out and "[ok] module analysis_runtime (runtime)" in out
    )
    assert "transcribed the bundled clip" in out
    # the engine part alone is refused: it cannot run without its libraries
    assert cm.main([args[0], args[2], "--tiny-model", str(fake_tiny)]) == 1
    assert "give its runtime zip too" in capsys.readouterr().out


def test_check_module_refuses_a_runtime_part_of_other_libraries(
    dist: Path, tmp_path: Path, fake_tiny: Path
) -> None:
    engine, _ = pm.build_module(dist, tmp_path / "a", split="always")
    (dist / "_internal/torch/lib/libtorch_cpu.so").write_bytes(b"\x7fELF torch 2")  # a rebuild
    _, other = pm.build_module(dist, tmp_path / "b", split="always")
    index = json.loads(engine.index_path.read_text())
    index["modules"][1] = other.entry
    engine.index_path.write_text(json.dumps(index))
    with pytest.raises(cm.CheckFailure, match="analysis-0.1.0.zip needs analysis_runtime 2.13.0"):
        cm.check_module([engine.zip_path, other.zip_path], engine.index_path, VERSION, fake_tiny)


def test_auto_splits_a_bundle_over_the_limit_and_each_part_fits(dist: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    whole = sum(p.stat().st_size for _, p in pm.bundle_members(dist) if not p.is_symlink())
    limit = whole - 1000
    assert pm.main(["--dist", str(dist), "--out", str(out), "--max-asset-bytes", str(limit)]) == 0
    zips = sorted(out.glob("*.zip"))
    assert [z.name for z in zips] == [f"analysis-{VERSION}.zip", "analysis_runtime-2.13.0.zip"]
    assert all(z.stat().st_size <= limit for z in zips)
    # under the limit: one zip, as before
    assert pm.main(["--dist", str(dist), "--out", str(tmp_path / "one")]) == 0
    assert [z.name for z in (tmp_path / "one").glob("*.zip")] == [f"analysis-{VERSION}.zip"]


def test_a_changed_runtime_under_a_published_version_is_refused(dist: Path, tmp_path: Path) -> None:
    first = pm.build_module(dist, tmp_path / "a", split="always")
    (dist / "_internal/torch/lib/libtorch_cpu.so").write_bytes(b"\x7fELF other build")
    out = tmp_path / "b"
    with pytest.raises(pm.PackageError, match="give it a new --runtime-version"):
        pm.build_module(dist, out, split="always", index_in=first[0].index_path)
    assert not list(out.glob("*.zip")), "a refused runtime leaves no zips"
    bumped = pm.build_module(
        dist, out, split="always", index_in=first[0].index_path, runtime_version="2.13.1"
    )
    assert bumped[1].zip_path.name == "analysis_runtime-2.13.1.zip"
    # the same libraries again: the published runtime entry is reused as it is
    same = pm.build_module(dist, tmp_path / "c", split="always", index_in=bumped[0].index_path)
    index = json.loads(same[0].index_path.read_text())["modules"]
    assert [m["id"] for m in index] == ["analysis", "analysis_runtime"]


def test_the_parts_descriptor_names_match_the_engines() -> None:
    split_bundle = importlib.import_module("vibevoice_rpc.model.split_bundle")
    assert split_bundle.RUNTIME_DESCRIPTOR == parts.RUNTIME_DESCRIPTOR
    assert split_bundle.NEEDS_RUNTIME == parts.NEEDS_RUNTIME


@real_bundle
@posix_only
@pytest.mark.timeout(900)
def test_the_real_bundle_split_under_300_mb_transcribes_from_two_folders(
    tmp_path: Path, tiny_model: Path
) -> None:
    # CI's split check (.ci/run) at pytest scale: the CPU bundle in parts under 300 MB, unpacked
    # into <modules>/analysis and <modules>/analysis_runtime; the engine loads torch's library
    # from the other folder (its log says so) and transcribes.
    limit = 300_000_000
    pkgs = pm.build_module(REAL_DIST, tmp_path / "out", max_asset_bytes=limit, level=1)
    assert [p.entry["id"] for p in pkgs] == ["analysis", "analysis_runtime"]
    assert all(p.entry["size"] < limit for p in pkgs)
    figures = cm.check_module([p.zip_path for p in pkgs], pkgs[0].index_path, VERSION, tiny_model)
    assert figures["preload"] >= 1 and figures["transcribe_s"] > 0
    for p in figures["parts"]:
        print(f"{p['zip']}: {p['size']:,} bytes, {p['members']} members")  # the figures (-s)


@real_bundle
@posix_only
@pytest.mark.timeout(900)
def test_the_real_engine_part_without_its_runtime_names_the_module_to_install(
    tmp_path: Path, tiny_model: Path
) -> None:
    engine, _ = pm.build_module(
        REAL_DIST, tmp_path / "out", split="always", compression=zipfile.ZIP_STORED, level=None
    )
    folder = tmp_path / "modules" / "analysis"
    cm.unzip(engine.zip_path, folder)
    with pytest.raises(cm.CheckFailure) as exc:
        cm.check_engine(folder / "bin" / "vibevoice-rpc", tmp_path, VERSION, tiny_model)
    text = str(exc.value)
    assert text.startswith("transcribe of the bundled clip: error") and "-32004" in text
    assert "the runtime module analysis_runtime 2.13.0 is not installed" in text
