"""The engine half of a split bundle (vibevoice_rpc/model/split_bundle.py): finding the runtime part in
the app's layout, refusing a missing or mismatched one, and loading its libraries before torch.
The frozen engine itself runs split in tests/test_module_package.py and CI (.ci/run)."""

from __future__ import annotations

import ctypes.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from vibevoice_rpc.model import split_bundle as sb

FINGERPRINT = "ab" * 32


def engine_part(modules: Path, preload: list[str], fingerprint: str = FINGERPRINT) -> Path:
    """``<modules>/analysis/bin`` with its needs file; returns the bin folder."""
    bin_dir = modules / "analysis" / "bin"
    bin_dir.mkdir(parents=True)
    needs = {
        "schema_version": 1,
        "runtime_id": "analysis_runtime",
        "runtime_version": "2.13.0",
        "fingerprint": fingerprint,
        "preload": preload,
        "library_dirs": ["_internal/lib"],
    }
    (bin_dir / sb.NEEDS_RUNTIME).write_text(json.dumps(needs))
    return bin_dir


def runtime_part(
    modules: Path, fingerprint: str = FINGERPRINT, rid: str = "analysis_runtime"
) -> Path:
    bin_dir = modules / "analysis_runtime" / "bin"
    (bin_dir / "_internal" / "lib").mkdir(parents=True)
    descriptor = {"schema_version": 1, "id": rid, "version": "2.13.0", "fingerprint": fingerprint}
    (bin_dir / sb.RUNTIME_DESCRIPTOR).write_text(json.dumps(descriptor))
    return bin_dir


def test_a_whole_bundle_needs_nothing(tmp_path: Path) -> None:
    assert sb.find_runtime(tmp_path) is None
    assert sb.install(tmp_path) is None


def test_the_runtime_is_found_in_the_sibling_module_folder(tmp_path: Path) -> None:
    exe_dir = engine_part(tmp_path / "modules", ["_internal/lib/libz.so.1"])
    runtime_bin = runtime_part(tmp_path / "modules")
    plan = sb.find_runtime(exe_dir)
    assert plan is not None and plan.problem is None
    assert plan.runtime_bin == runtime_bin and not plan.same_tree
    assert plan.preload == ["_internal/lib/libz.so.1"]


def test_both_parts_unpacked_into_one_folder_need_no_loading(tmp_path: Path) -> None:
    exe_dir = engine_part(tmp_path / "modules", [])
    shutil.copy(runtime_part(tmp_path / "elsewhere") / sb.RUNTIME_DESCRIPTOR, exe_dir)
    plan = sb.find_runtime(exe_dir)
    assert plan is not None and plan.problem is None and plan.same_tree
    assert sb.load_runtime(plan, exe_dir) == []


def test_a_missing_runtime_names_the_module_and_where_it_looked(tmp_path: Path) -> None:
    exe_dir = engine_part(tmp_path / "modules", [])
    plan = sb.find_runtime(exe_dir)
    assert plan is not None and plan.runtime_bin is None
    assert plan.problem is not None
    assert "the runtime module analysis_runtime 2.13.0 is not installed" in plan.problem
    assert (
        str(tmp_path / "modules" / "analysis_runtime" / "bin" / sb.RUNTIME_DESCRIPTOR)
        in plan.problem
    )
    with pytest.raises(ImportError, match="PyTorch cannot load: the runtime module"):
        sb.load_runtime(plan, exe_dir)


def test_a_runtime_of_other_libraries_is_refused(tmp_path: Path) -> None:
    exe_dir = engine_part(tmp_path / "modules", [])
    runtime_part(tmp_path / "modules", fingerprint="cd" * 32)
    plan = sb.find_runtime(exe_dir)
    assert plan is not None and plan.problem is not None
    assert "not the one this engine was built with" in plan.problem
    assert "fingerprint cdcdcdcdcdcd" in plan.problem and "fingerprint abababababab" in plan.problem


@pytest.mark.parametrize("bad", ["../escape/libx.so", "/abs/libx.so", "C:/x.dll", ".."])
def test_a_needs_file_with_a_path_outside_the_parts_is_refused(tmp_path: Path, bad: str) -> None:
    exe_dir = engine_part(tmp_path / "modules", [bad])
    with pytest.raises(ValueError, match="unsafe path"):
        sb.find_runtime(exe_dir)
    plan = sb.install(exe_dir)  # start-up never dies of it: the import of torch fails instead
    try:
        assert plan is not None and plan.problem is not None and "unreadable" in plan.problem
    finally:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, sb._BeforeTorch)]


@pytest.mark.skipif(sys.platform != "linux", reason="ELF libraries and /proc/self/maps")
def test_the_preload_list_is_loaded_from_the_runtime_folder(tmp_path: Path) -> None:
    # A real shared library (zlib) copied into the runtime part under a fresh soname-equal name:
    # load_runtime must map it from there, by its full path.
    found = ctypes.util.find_library("z")
    assert found, "zlib is on every Linux"
    system = next(
        Path(d) / found
        for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64")
        if (Path(d) / found).is_file()
    )
    exe_dir = engine_part(tmp_path / "modules", ["_internal/lib/libz-copy.so.1"])
    runtime_bin = runtime_part(tmp_path / "modules")
    shutil.copy(system, runtime_bin / "_internal" / "lib" / "libz-copy.so.1")
    plan = sb.find_runtime(exe_dir)
    assert plan is not None
    keep = sb.load_runtime(plan, exe_dir, windows=False)
    assert len(keep) == 1
    maps = Path("/proc/self/maps").read_text()
    assert str(runtime_bin / "_internal" / "lib" / "libz-copy.so.1") in maps


def test_a_library_that_fails_to_load_names_itself_and_the_module(tmp_path: Path) -> None:
    exe_dir = engine_part(tmp_path / "modules", ["_internal/lib/libbroken.so.1"])
    runtime_bin = runtime_part(tmp_path / "modules")
    (runtime_bin / "_internal" / "lib" / "libbroken.so.1").write_bytes(b"not an ELF file")
    plan = sb.find_runtime(exe_dir)
    assert plan is not None
    with pytest.raises(
        ImportError, match="_internal/lib/libbroken.so.1.*reinstall the analysis_runtime"
    ):
        sb.load_runtime(plan, exe_dir, windows=False)


def test_on_windows_the_runtime_folders_join_the_dll_search_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    added: list[str] = []
    monkeypatch.setattr(sb.os, "add_dll_directory", lambda p: added.append(p) or p, raising=False)
    monkeypatch.setenv("PATH", "C:\\Windows\\System32")
    exe_dir = engine_part(tmp_path / "modules", [])
    runtime_bin = runtime_part(tmp_path / "modules")
    plan = sb.find_runtime(exe_dir)
    assert plan is not None
    keep = sb.load_runtime(plan, exe_dir, windows=True)
    folder = str(runtime_bin / "_internal" / "lib")
    assert added == [folder] and keep == [folder]  # the handles stay referenced
    assert sb.os.environ["PATH"].split(sb.os.pathsep)[0] == folder


def test_the_hook_loads_once_before_torch_and_repeats_a_failure(tmp_path: Path) -> None:
    exe_dir = engine_part(tmp_path / "modules", [])
    plan = sb.find_runtime(exe_dir)
    assert plan is not None
    calls: list[Any] = []
    hook = sb._BeforeTorch(plan, exe_dir)
    assert hook.find_spec("transformers") is None and not hook.done  # only torch triggers it
    for _ in range(2):
        with pytest.raises(ImportError, match="is not installed"):
            calls.append(hook.find_spec("torch"))
    assert hook.done and calls == []


def test_install_puts_the_hook_first_for_a_split_engine(tmp_path: Path) -> None:
    exe_dir = engine_part(tmp_path / "modules", [])
    runtime_part(tmp_path / "modules")
    before = list(sys.meta_path)
    try:
        plan = sb.install(exe_dir)
        assert plan is not None and plan.problem is None
        assert isinstance(sys.meta_path[0], sb._BeforeTorch)
    finally:
        sys.meta_path[:] = before
