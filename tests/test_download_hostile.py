"""A hostile mirror (``HF_ENDPOINT``) against the real server and the ``download`` command: file
names that would leave the target folder, malformed or absurd listings, an old manifest holding such
names. Nothing may appear outside the target (a snapshot of its parent before and after), and each
answer is a specific ``-32011``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .fake_hub import FakeHub
from .rpc_client import REPO, RpcProcess
from .test_download import REPO_ID, _env

pytestmark = pytest.mark.timeout(240)

EVIL = b'{"written": "by the mirror"}'


@pytest.fixture
def hub(tiny_model: Path):
    with FakeHub.from_dir(REPO_ID, tiny_model) as h:
        yield h


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under ``root`` (links not followed): kind, size, mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            out[str(path.relative_to(root))] = (kind, st.st_size, st.st_mtime_ns)
    return out


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    """``outside/a/b/model`` as the target (not created), its parents existing, as a user's are."""
    outside = tmp_path / "outside"
    target = outside / "a" / "b" / "model"
    target.parent.mkdir(parents=True)
    (outside / "a" / "keep.txt").write_text("the user's file")
    return outside, target


def _hostile_names(outside: Path) -> list[str]:
    return [
        "../../x.json",
        "sub/../../../x.json",
        str(outside / "abs.json"),  # absolute, inside the snapshot so a write would show
        "x\x00.json",
        "..\\..\\x.json",
        "C:x.json",
        "config.json:stream",
        "nul.json",
    ]


def _assert_unsafe(err: dict[str, Any], name: str) -> None:
    assert err["code"] == -32011, err
    assert err["data"]["kind"] == "unsafe_listing", err
    assert repr(name) in err["message"] and err["data"]["file"] == repr(name)
    assert "HF_ENDPOINT" in err["data"]["hint"]


def test_a_hostile_name_is_refused_before_anything_is_written(hub: FakeHub, tmp_path: Path) -> None:
    outside, target = _layout(tmp_path)
    with RpcProcess(env=_env(hub, tmp_path / "home")) as p:
        for name in _hostile_names(outside):
            hub.repos[REPO_ID][name] = EVIL
            before = snapshot(outside)
            err = p.call("download_model", {"target_dir": str(target)}, timeout=60)["error"]
            _assert_unsafe(err, name)
            assert snapshot(outside) == before, name  # no file, no .part, no folder
            assert hub.bytes_sent() == 0  # refused with the listing, before any file was fetched
            st = p.call("model_status", {"target_dir": str(target)})["result"]
            assert st["present"] is False and st["download_bytes"] is None
            del hub.repos[REPO_ID][name]
        assert p.call("health")["result"]["status"] == "ok"
        # the mirror mended: the same folder downloads, and only the target changed
        before = snapshot(outside)
        res = p.call("download_model", {"target_dir": str(target)}, timeout=120)["result"]
        assert res["status"] == "success"
        changed = {k for k in snapshot(outside).keys() ^ before.keys()}
        assert changed and all(k.startswith("a/b/model") for k in changed), changed
        assert p.call("model_status", {"target_dir": str(target)})["result"]["present"] is True


def test_a_name_through_a_link_in_the_target_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    outside, target = _layout(tmp_path)
    target.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, target / "sub")
    hub.repos[REPO_ID]["sub/evil.json"] = EVIL
    before = snapshot(tmp_path)
    with RpcProcess(env=_env(hub, tmp_path / "home")) as p:
        err = p.call("download_model", {"target_dir": str(target)}, timeout=60)["error"]
    assert err["code"] == -32011 and err["data"]["kind"] == "unsafe_listing"
    assert "'sub/evil.json'" in err["message"] and "outside" in err["message"]
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("home")} == {
        k: v for k, v in before.items() if not k.startswith("home")
    }


def test_a_state_folder_linked_out_of_the_target_is_not_used(hub: FakeHub, tmp_path: Path) -> None:
    """The download writes its manifest and deletes orphaned partial files in .vibevoice-download:
    a link from there to elsewhere is refused before either."""
    target, elsewhere = tmp_path / "model", tmp_path / "elsewhere"
    target.mkdir()
    elsewhere.mkdir()
    (elsewhere / "precious.part").write_text("not a download's")
    os.symlink(elsewhere, target / ".vibevoice-download")
    before = snapshot(elsewhere)
    with RpcProcess(env=_env(hub, tmp_path / "home")) as p:
        err = p.call("download_model", {"target_dir": str(target)}, timeout=60)["error"]
    assert err["code"] == -32011 and err["data"]["kind"] == "write_failed"
    assert "symbolic link" in err["message"]
    assert snapshot(elsewhere) == before and hub.bytes_sent() == 0


def test_the_download_command_refuses_a_hostile_name(hub: FakeHub, tmp_path: Path) -> None:
    outside, target = _layout(tmp_path)
    hub.repos[REPO_ID]["../../x.json"] = EVIL
    before = snapshot(outside)
    out = subprocess.run(
        [sys.executable, "-m", "vibevoice_rpc", "download", "--dir", str(target)],
        capture_output=True,
        text=True,
        env=_env(hub, tmp_path / "home"),
        cwd=str(REPO),
        timeout=120,
    )
    assert out.returncode == 1 and out.stdout == ""
    assert "error [-32011 unsafe_listing]" in out.stderr
    assert "'../../x.json'" in out.stderr and "HF_ENDPOINT" in out.stderr
    assert snapshot(outside) == before
    assert hub.bytes_sent() == 0


def _sibling(name: Any = "config.json", size: Any = 10, **extra: Any) -> dict[str, Any]:
    return {"rfilename": name, "size": size, "blobId": "b" * 40, **extra}


BAD_LISTINGS: list[tuple[str, list[Any], str]] = [
    # (what, the siblings the mirror lists, what the message says)
    ("10,001 files", [_sibling(f"f{i}.json") for i in range(10_001)], "10,001 files"),
    ("a negative size", [_sibling(size=-5)], "-5"),
    ("an absurd size", [_sibling(size=10**30)], "1000000000000000000000000000000"),
    ("a size as text", [_sibling(size="12")], "'12'"),
    ("a missing size", [{"rfilename": "config.json", "blobId": "b" * 40}], "without a size"),
    ("a name that is a number", [_sibling(name=123)], "not a string"),
    ("no name", [{"size": 3}], "has no file name"),
    ("an entry that is not an object", ["config.json"], "has no file name"),
    ("a hash that is a path", [_sibling(lfs={"sha256": "../" * 21 + "x"})], "sha256"),
    ("a body over 8 MiB", [_sibling(name="x" * (9 * 2**20))], "larger than 8 MiB"),
]


def test_a_malformed_listing_is_a_specific_error_and_model_status_keeps_working(
    hub: FakeHub, tmp_path: Path
) -> None:
    outside, target = _layout(tmp_path)
    before = snapshot(outside)
    with RpcProcess(env=_env(hub, tmp_path / "home")) as p:
        for what, siblings, says in BAD_LISTINGS:
            hub.siblings = siblings
            err = p.call("download_model", {"target_dir": str(target)}, timeout=60)["error"]
            assert err["code"] == -32011, (what, err)
            assert err["data"]["kind"] in ("bad_listing", "unsafe_listing"), (what, err)
            assert says in err["message"], (what, err["message"])
            assert len(err["message"]) < 1000, what  # a hostile value is cut, not echoed whole
            st = p.call("model_status", {"target_dir": str(target)})
            assert st["result"]["present"] is False, (what, st)
        assert snapshot(outside) == before
        assert hub.bytes_sent() == 0
        hub.siblings = None
        res = p.call("download_model", {"target_dir": str(target)}, timeout=120)["result"]
        assert res["status"] == "success"


def test_an_old_manifest_with_hostile_names_does_not_break_model_status(
    hub: FakeHub, tmp_path: Path, tiny_model: Path
) -> None:
    """A manifest saved by a version that did not check names (or edited by hand) is ignored:
    model_status answers, and the next download writes a good one."""
    target = tmp_path / "model"
    state = target / ".vibevoice-download"
    state.mkdir(parents=True)
    files = [
        {"name": "x\x00.json", "size": 3, "sha256": None, "blob_id": "b" * 40},
        {"name": "../../x.json", "size": 3, "sha256": None, "blob_id": "b" * 40},
        {"name": "config.json", "size": "big", "sha256": "../..", "blob_id": None},
    ]
    manifest = {"model_id": REPO_ID, "revision": "main", "commit": "c" * 40, "files": files}
    (state / "manifest.json").write_text(json.dumps(manifest))
    with RpcProcess(env=_env(hub, tmp_path / "home")) as p:
        st = p.call("model_status", {"target_dir": str(target)})
        assert st["result"]["present"] is False and st["result"]["download_bytes"] is None, st
        res = p.call("download_model", {"target_dir": str(target)}, timeout=120)["result"]
        assert res["status"] == "success"
        st = p.call("model_status", {"target_dir": str(target)})["result"]
        assert st["present"] is True and st["missing"] == []
    saved = json.loads((state / "manifest.json").read_text())
    assert sorted(f["name"] for f in saved["files"]) == sorted(x.name for x in tiny_model.iterdir())


def test_an_endless_error_body_is_read_only_in_part() -> None:
    """A mirror's error answer is read up to 64 KiB (huggingface_hub's own check reads it whole)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    from vibevoice_rpc.checkpoint.hub import ERROR_BODY_BYTES, raise_for_status

    class Endless(httpx2.SyncByteStream):
        sent = 0

        def __iter__(self):
            while True:
                self.sent += 2**16
                yield b"x" * 2**16

    body = Endless()
    response = httpx2.Response(
        500, stream=body, request=httpx2.Request("GET", "http://127.0.0.1/x")
    )
    with pytest.raises(HfHubHTTPError) as info:
        raise_for_status(response)
    assert info.value.response.status_code == 500
    assert body.sent <= 2 * ERROR_BODY_BYTES
    assert len(info.value.response.content) <= ERROR_BODY_BYTES
