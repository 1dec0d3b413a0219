"""model_status and download_model against a loopback hub, through the real server and the real
huggingface_hub client: a fresh user's way from nothing to a transcript, cancel + resume, kill +
resume, 404, 401/403, a truncated body, a corrupt file, a full disk, offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .fake_hub import COMMIT, FakeHub
from .ports import refused_url
from .rpc_client import REPO, RpcProcess, server_env

pytestmark = pytest.mark.timeout(180)

REPO_ID = "microsoft/VibeVoice-ASR-HF"
WEIGHTS = "model.safetensors"
DOWNLOAD_SERVER = [sys.executable, "-m", "tests.download_server"]


@pytest.fixture
def hub(tiny_model: Path):
    with FakeHub.from_dir(REPO_ID, tiny_model) as h:
        yield h


def _env(hub: FakeHub, home: Path, **extra: str) -> dict[str, str]:
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "0",
        "VIBEVOICE_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "VIBEVOICE_PRECISION": "fp32",
    }
    env.update(extra)
    return server_env(**env)


def _progress(p: RpcProcess, rid: Any) -> list[dict[str, Any]]:
    return [n for n in p.notifications("progress", rid) if n["stage"] == "downloading"]


def _has_bytes(rid: Any, n: int):
    def pred(m: Any) -> bool:
        return (
            m.get("method") == "progress"
            and m["params"].get("id") == rid
            and m["params"].get("download", {}).get("bytes_done", -1) >= n
        )

    return pred


def _total(tiny_model: Path) -> int:
    return sum(p.stat().st_size for p in tiny_model.iterdir() if p.is_file())


def _default_dir(home: Path) -> Path:
    return home / "vibevoice-rpc" / REPO_ID.replace("/", "--")


@pytest.mark.model
def test_a_fresh_user_goes_from_nothing_to_a_transcript(
    hub: FakeHub, tmp_path: Path, tiny_model: Path, speech_clip: Path
) -> None:
    total = _total(tiny_model)
    hub.pause_at[WEIGHTS] = 4 * 2**20  # the download waits here until released
    with RpcProcess(env=_env(hub, tmp_path)) as p:
        status = p.call("model_status")["result"]
        assert status["present"] is False and status["path"] is None
        assert status["target_dir"] == str(_default_dir(tmp_path))
        assert status["free_bytes"] > 0
        # no model: transcribe says so at once (no silent download inside a request)
        err = p.call("transcribe", {"audio_path": str(speech_clip)}, timeout=120)["error"]
        assert err["code"] == -32004 and "download_model" in err["data"]["hint"]

        rid = p.request("download_model")
        p.wait_for(_has_bytes(rid, 4 * 2**20))
        # while it downloads: health and model_status answer, a transcribe waits behind it
        assert p.call("health", timeout=10)["result"]["status"] == "ok"
        during = p.call("model_status", timeout=10)["result"]
        assert during["present"] is False and during["download_bytes"] == total
        assert during["downloading"]["file"] == WEIGHTS
        assert during["missing"] and "config.json" in during["missing"]
        tid = p.request("transcribe", {"audio_path": str(speech_clip), "max_new_tokens": 8})
        queued = p.wait_for(lambda m: m.get("method") == "progress" and m["params"]["id"] == tid)
        assert "download" in queued["params"]["message"]
        hub.release.set()

        res = p.response(rid, timeout=120)["result"]
        assert res["status"] == "success" and res["path"] == str(_default_dir(tmp_path))
        assert res["bytes_total"] == total and res["bytes_downloaded"] == total
        assert res["commit"] == COMMIT
        prog = _progress(p, rid)
        assert prog[-1]["progress"] == 1.0
        last = [n["download"] for n in prog if "download" in n][-1]
        assert last["bytes_done"] == last["bytes_total"] == total
        assert set(last) == {
            "bytes_done", "bytes_total", "file", "file_index", "files", "speed_bps", "eta_s"
        }  # fmt: skip
        assert any(n["download"]["speed_bps"] > 0 for n in prog if "download" in n)
        # only what a checkpoint needs, config.json last, nothing left over
        names = sorted(x.name for x in _default_dir(tmp_path).iterdir() if x.is_file())
        assert names == sorted(x.name for x in tiny_model.iterdir())
        assert [g.path for g in hub.served if g.method == "GET"][-1] == "config.json"

        # the queued transcribe ran after the download, on the downloaded model
        t = p.response(tid, timeout=150)
        assert t["result"]["status"] == "success", t
        assert t["result"]["metadata"]["model"] == str(_default_dir(tmp_path))
        after = p.call("model_status")["result"]
        assert after["present"] is True and after["missing"] == []
        assert after["bytes_on_disk"] == total and after["remaining_bytes"] == 0
        # again: nothing is fetched twice
        sent = hub.bytes_sent()
        again = p.call("download_model", timeout=60)["result"]
        assert again["bytes_downloaded"] == 0 and hub.bytes_sent() == sent


def test_cancel_keeps_the_bytes_and_the_next_call_resumes(
    hub: FakeHub, tmp_path: Path, tiny_model: Path
) -> None:
    target = tmp_path / "model"
    cut = 3 * 2**20
    hub.pause_at[WEIGHTS] = cut
    with RpcProcess(env=_env(hub, tmp_path)) as p:
        rid = p.request("download_model", {"target_dir": str(target)})
        before = sum(
            (tiny_model / n).stat().st_size
            for n in ("chat_template.jinja", "generation_config.json")
        )
        p.wait_for(_has_bytes(rid, before + cut))  # the stream is stalled mid-file here
        assert p.call("cancel", {"id": rid})["result"] == {"cancelled": True}
        err = p.response(rid, timeout=10)["error"]
        assert err["code"] == -32800 and err["data"]["kind"] == "cancelled"
        assert err["data"]["bytes_done"] >= cut
        parts = list((target / ".vibevoice-download").glob(f"{WEIGHTS}.*.part"))
        assert len(parts) == 1 and parts[0].stat().st_size == cut
        assert not (target / "config.json").exists()
        st = p.call("model_status", {"target_dir": str(target)})["result"]
        assert st["present"] is False and st["partial_bytes"] == cut
        assert WEIGHTS in st["missing"]

        hub.pause_at.clear()
        res = p.call("download_model", {"target_dir": str(target)}, timeout=120)["result"]
        assert res["path"] == str(target)
    size = (tiny_model / WEIGHTS).stat().st_size
    gets = hub.gets(WEIGHTS)
    assert gets[-1].start == cut  # resumed with Range
    assert hub.bytes_sent(WEIGHTS) == size  # not one byte fetched twice
    assert (target / WEIGHTS).read_bytes() == (tiny_model / WEIGHTS).read_bytes()
    assert not list((target / ".vibevoice-download").glob("*.part"))


def test_a_killed_download_resumes_in_the_next_process(
    hub: FakeHub, tmp_path: Path, tiny_model: Path
) -> None:
    target = tmp_path / "model"
    cut = 5 * 2**20
    hub.pause_at[WEIGHTS] = cut
    with RpcProcess(env=_env(hub, tmp_path)) as p:
        rid = p.request("download_model", {"target_dir": str(target)})
        p.wait_for(lambda m: _has_bytes(rid, 0)(m) and m["params"]["download"]["file"] == WEIGHTS)
        p.wait_for(
            lambda m: (
                _has_bytes(rid, 0)(m)
                and m["params"]["download"]["file"] == WEIGHTS
                and m["params"]["download"]["bytes_done"]
                - sum(
                    (tiny_model / n).stat().st_size
                    for n in ("chat_template.jinja", "generation_config.json")
                )
                >= cut
            )
        )
        p.proc.kill()  # SIGKILL mid-file
        p.proc.wait(10)
    hub.pause_at.clear()
    hub.release.set()  # (the paused response may still push a chunk into the dead socket)
    first = len(hub.served)
    with RpcProcess(env=_env(hub, tmp_path)) as p:
        st = p.call("model_status", {"target_dir": str(target)})["result"]
        assert st["present"] is False and st["partial_bytes"] == cut
        res = p.call("download_model", {"target_dir": str(target)}, timeout=120)["result"]
        assert res["bytes_downloaded"] == _total(tiny_model) - st["bytes_on_disk"]
    # the finished files were not fetched again, the shard resumed at the cut
    for name in ("chat_template.jinja", "generation_config.json"):
        assert len(hub.gets(name)) == 1
    assert [g.start for g in hub.gets(WEIGHTS)] == [0, cut]
    resent = sum(s.sent for s in hub.served[first:])
    assert resent == _total(tiny_model) - st["bytes_on_disk"]  # nothing fetched twice
    assert (target / WEIGHTS).read_bytes() == (tiny_model / WEIGHTS).read_bytes()


def test_wrong_id_or_revision_is_not_found(hub: FakeHub, tmp_path: Path) -> None:
    with RpcProcess(env=_env(hub, tmp_path)) as p:
        err = p.call("download_model", {"model_id": "microsoft/NoSuchModel"})["error"]
        assert err["code"] == -32011 and err["data"]["kind"] == "not_found"
        assert err["data"]["status"] == 404 and "microsoft/NoSuchModel" in err["message"]
        err = p.call("download_model", {"revision": "v9"})["error"]
        assert err["code"] == -32011 and err["data"]["kind"] == "not_found"
        assert "'v9'" in err["message"]
    assert hub.bytes_sent() == 0


def test_a_token_is_needed_and_a_gated_repo_says_so(hub: FakeHub, tmp_path: Path) -> None:
    hub.token = "hf_good"
    with RpcProcess(env=_env(hub, tmp_path)) as p:
        err = p.call("download_model")["error"]
        assert err["code"] == -32011 and err["data"]["kind"] == "unauthorized"
        assert err["data"]["status"] == 401 and "HF_TOKEN" in err["data"]["hint"]
    with RpcProcess(env=_env(hub, tmp_path, HF_TOKEN="hf_wrong")) as p:
        assert p.call("download_model")["error"]["data"]["status"] == 401
    hub.gated.add(REPO_ID)
    with RpcProcess(env=_env(hub, tmp_path, HF_TOKEN="hf_good")) as p:
        err = p.call("download_model")["error"]
        assert err["data"]["kind"] == "unauthorized" and err["data"]["status"] == 403
    hub.gated.clear()
    with RpcProcess(env=_env(hub, tmp_path, HF_TOKEN="hf_good")) as p:
        assert p.call("download_model", timeout=120)["result"]["status"] == "success"


def test_a_truncated_body_is_resumed_and_a_corrupt_file_is_refused(
    hub: FakeHub, tmp_path: Path, tiny_model: Path
) -> None:
    hub.truncate_once[WEIGHTS] = 2**20  # the first response ends early
    hub.corrupt.add("tokenizer.json")  # right size, wrong bytes
    target = tmp_path / "model"
    with RpcProcess(env=_env(hub, tmp_path)) as p:
        err = p.call("download_model", {"target_dir": str(target)}, timeout=120)["error"]
        assert err["code"] == -32011 and err["data"]["kind"] == "corrupt"
        assert err["data"]["file"] == "tokenizer.json"
        assert not (target / "tokenizer.json").exists()
        assert not list((target / ".vibevoice-download").glob("tokenizer.json.*"))
        # the truncated shard was resumed within the call and checked
        assert [g.start for g in hub.gets(WEIGHTS)] == [0, 2**20]
        assert (target / WEIGHTS).read_bytes() == (tiny_model / WEIGHTS).read_bytes()
        hub.corrupt.clear()
        missing = [x for x in tiny_model.iterdir() if not (target / x.name).exists()]
        assert {x.name for x in missing} >= {"tokenizer.json", "config.json"}
        res = p.call("download_model", {"target_dir": str(target)}, timeout=120)["result"]
        # the files that were complete are not fetched again
        assert res["bytes_downloaded"] == sum(x.stat().st_size for x in missing)


def test_a_full_disk_is_refused_before_and_during_the_download(
    hub: FakeHub, tmp_path: Path, tiny_model: Path
) -> None:
    target = tmp_path / "model"
    env = _env(hub, tmp_path, VIBEVOICE_TEST_FREE_BYTES=str(10 * 2**20))
    with RpcProcess(cmd=DOWNLOAD_SERVER, env=env) as p:
        st = p.call("model_status", {"target_dir": str(target)})["result"]
        assert st["free_bytes"] == 10 * 2**20
        err = p.call("download_model", {"target_dir": str(target)})["error"]
        assert err["code"] == -32011 and err["data"]["kind"] == "disk_full"
        assert err["data"]["needed_bytes"] > _total(tiny_model)
        assert err["data"]["free_bytes"] == 10 * 2**20
        assert "needs" in err["message"]
    assert hub.bytes_sent() == 0  # checked before fetching anything
    # the disk fills up mid-file (ENOSPC from the write): what was written is kept
    cut = 6 * 2**20
    env = _env(hub, tmp_path, VIBEVOICE_TEST_ENOSPC_AFTER=str(cut))
    with RpcProcess(cmd=DOWNLOAD_SERVER, env=env) as p:
        err = p.call("download_model", {"target_dir": str(target)}, timeout=60)["error"]
        assert err["code"] == -32011 and err["data"]["kind"] == "disk_full"
        assert "free some space" in err["data"]["hint"]
    parts = list((target / ".vibevoice-download").glob(f"{WEIGHTS}.*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size > 0
    kept = parts[0].stat().st_size
    with RpcProcess(env=_env(hub, tmp_path)) as p:  # space freed: it resumes
        assert p.call("download_model", {"target_dir": str(target)}, timeout=120)["result"]
    assert hub.gets(WEIGHTS)[-1].start == kept
    assert (target / WEIGHTS).read_bytes() == (tiny_model / WEIGHTS).read_bytes()


def test_offline_and_no_network_are_specific(hub: FakeHub, tmp_path: Path) -> None:
    with RpcProcess(env=_env(hub, tmp_path, VIBEVOICE_OFFLINE="1")) as p:
        err = p.call("download_model")["error"]
        assert err["code"] == -32011 and err["data"]["kind"] == "offline"
        assert err["data"]["offline_mode"] is True
    with RpcProcess(env=_env(hub, tmp_path, HF_HUB_OFFLINE="1")) as p:
        assert p.call("download_model")["error"]["data"]["kind"] == "offline"
    with refused_url() as nowhere:  # nothing listens there
        with RpcProcess(env=_env(hub, tmp_path, HF_ENDPOINT=nowhere)) as p:
            err = p.call("download_model", timeout=60)["error"]
            assert err["code"] == -32011 and err["data"]["kind"] == "offline"
            assert err["data"]["offline_mode"] is False and "network" in err["message"]
            assert p.call("model_status")["result"]["present"] is False


def test_cli_download_shows_progress_on_stderr_and_prints_the_path(
    hub: FakeHub, tmp_path: Path, tiny_model: Path
) -> None:
    target = tmp_path / "cli model"
    out = subprocess.run(
        [sys.executable, "-m", "vibevoice_rpc", "download", "--dir", str(target)],
        capture_output=True,
        text=True,
        env=_env(hub, tmp_path),
        cwd=str(REPO),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{target}\n"
    assert "downloading" in out.stderr and "MB" in out.stderr
    assert (target / "config.json").read_bytes() == (tiny_model / "config.json").read_bytes()
    out = subprocess.run(
        [sys.executable, "-m", "vibevoice_rpc", "download", "--model-id", "nobody/nothing"],
        capture_output=True,
        text=True,
        env=_env(hub, tmp_path),
        cwd=str(REPO),
        timeout=60,
    )
    assert out.returncode == 1 and "not_found" in out.stderr and out.stdout == ""


def test_model_status_sees_a_checkpoint_copied_by_hand(tiny_model: Path, tmp_path: Path) -> None:
    from vibevoice_rpc.checkpoint.status import model_status
    from vibevoice_rpc.messages import ModelStatusParams

    st = model_status(ModelStatusParams(target_dir=str(tiny_model)), None, offline=True)
    assert st.present is True and st.source == "directory" and st.path == str(tiny_model)
    assert st.bytes_on_disk == _total(tiny_model) and st.missing == []
    st = model_status(ModelStatusParams(target_dir=str(tmp_path / "none")), None, offline=True)
    assert st.present is False and st.path is None and st.free_bytes > 0
    assert st.target_dir == str(tmp_path / "none")


def test_cancel_while_the_hub_is_slow_to_list_answers_at_once(hub: FakeHub, tmp_path: Path) -> None:
    import threading

    hub.info_gate = threading.Event()  # the model-info request hangs
    with RpcProcess(env=_env(hub, tmp_path)) as p:
        rid = p.request("download_model")
        p.wait_for(lambda m: m.get("method") == "progress" and m["params"]["id"] == rid)
        assert p.call("cancel", {"id": rid})["result"] == {"cancelled": True}
        assert p.response(rid, timeout=10)["error"]["code"] == -32800
        hub.info_gate.set()
        assert p.call("health")["result"]["status"] == "ok"


def test_a_file_changed_upstream_is_fetched_again(
    hub: FakeHub, tmp_path: Path, tiny_model: Path
) -> None:
    target = tmp_path / "model"
    with RpcProcess(env=_env(hub, tmp_path)) as p:
        assert p.call("download_model", {"target_dir": str(target)}, timeout=120)["result"]
        files = hub.repos[REPO_ID]
        old = files["tiny_model.json"]
        files["tiny_model.json"] = bytes(reversed(old))  # same size, new content
        res = p.call("download_model", {"target_dir": str(target)}, timeout=120)["result"]
        assert res["bytes_downloaded"] == len(old)
        assert (target / "tiny_model.json").read_bytes() == bytes(reversed(old))


def test_with_the_tiny_model_configured_the_real_model_goes_to_the_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VIBEVOICE_MODEL_PATH=tiny (the built-in tiny model, for trying the protocol) is not a folder:
    model_status, download_model and the download command use the default download folder, not
    ./tiny (one rule, in download's choice of the target folder)."""
    from vibevoice_rpc.checkpoint.source import default_download_dir
    from vibevoice_rpc.config import Config
    from vibevoice_rpc.engine import Engine
    from vibevoice_rpc.messages import ModelStatusParams

    monkeypatch.chdir(tmp_path)
    st = Engine(Config(model_path="tiny", offline=True)).model_status(ModelStatusParams())
    assert st.target_dir == str(default_download_dir()) != str(tmp_path / "tiny")
