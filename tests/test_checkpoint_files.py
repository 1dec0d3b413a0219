"""A checkpoint folder with a defect, through the real server's ``reload_model``: a FIFO or a device
where a file should be, a sparse 1 GiB config.json, code named in ``auto_map``, absurd or foreign
configs, a weights index pointing outside. Each is a specific ``-32004`` naming the file, answered
without hanging, reading the file whole or building the model it describes; the server keeps
serving (``health``, then a good ``reload_model``)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .rpc_client import RpcProcess, server_env

pytestmark = [
    pytest.mark.model,
    pytest.mark.timeout(300),
    pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX"),
]


def _copy(tiny_model: Path, dest: Path) -> Path:
    """The tiny checkpoint, hard-linked file by file (no disk used); a file is replaced by
    unlinking it first, so the shared original is never written."""
    dest.mkdir()
    for f in tiny_model.iterdir():
        try:
            os.link(f, dest / f.name)
        except OSError:  # another file system
            (dest / f.name).write_bytes(f.read_bytes())
    return dest


def _config(folder: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    change(cfg)
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(cfg))


def _fifo(name: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        (folder / name).unlink()
        os.mkfifo(folder / name)

    return make


def _sparse(name: str, size: int) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        (folder / name).unlink()
        with open(folder / name, "wb") as f:
            f.truncate(size)  # a hole: no disk used, but read() would return every byte

    return make


def _to_dev_zero(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    os.symlink("/dev/zero", folder / "model.safetensors")


def _text(name: str, text: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).write_text(text)

    return make


def _set(path: str, value: Any) -> Callable[[Path], None]:
    keys = path.split(".")

    def change(cfg: dict[str, Any]) -> None:
        node = cfg
        for k in keys[:-1]:
            node = node[k]
        if value is KeyError:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value

    return lambda folder: _config(folder, change)


def _processor_auto_map(folder: Path) -> None:
    cfg = json.loads((folder / "processor_config.json").read_text())
    cfg["auto_map"] = {"AutoProcessor": "processing_evil.EvilProcessor"}
    (folder / "processor_config.json").unlink()
    (folder / "processor_config.json").write_text(json.dumps(cfg))


def _index(folder: Path) -> None:
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "../../../etc/passwd"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _wide(folder: Path) -> None:
    def change(cfg: dict[str, Any]) -> None:
        cfg["text_config"].update(hidden_size=4096, intermediate_size=16384)

    _config(folder, change)


DEFECTS: list[tuple[str, Callable[[Path], None], str, list[str]]] = [
    # (id, defect, data.kind, what the message says besides the file's name)
    ("fifo weights", _fifo("model.safetensors"), "not_a_regular_file", ["FIFO"]),
    ("fifo config", _fifo("config.json"), "not_a_regular_file", ["FIFO"]),
    ("fifo tokenizer", _fifo("tokenizer.json"), "not_a_regular_file", ["FIFO"]),
    ("weights are /dev/zero", _to_dev_zero, "not_a_regular_file", ["character device"]),
    ("1 GiB config", _sparse("config.json", 2**30), "file_too_large", ["16 MiB", "1,073,741,824"]),
    ("100 MiB tokenizer", _sparse("tokenizer.json", 100 * 2**20), "file_too_large", ["64 MiB"]),
    ("auto_map", _set("auto_map", {"AutoModel": "evil.Evil"}), "remote_code_refused", ["auto_map"]),
    ("processor auto_map", _processor_auto_map, "remote_code_refused", ["evil"]),
    ("auto_map + unknown type", _set("model_type", "evil"), "invalid_config", ["'evil'"]),
    ("llama config", _set("model_type", "llama"), "invalid_config", ["'llama'"]),
    ("no text_config", _set("text_config", KeyError), "invalid_config", ["text_config"]),
    ("negative hidden", _set("text_config.hidden_size", -64), "invalid_config", ["-64"]),
    ("10^12 hidden", _set("text_config.hidden_size", 10**12), "invalid_config", ["10000000000"]),
    ("10^9 layers", _set("text_config.num_hidden_layers", 10**9), "invalid_config", ["layer"]),
    ("zero heads", _set("text_config.num_attention_heads", 0), "invalid_config", ["heads"]),
    (
        "10^6 encoder blocks",
        _set("acoustic_tokenizer_encoder_config.depths", [1, 1, 1, 10**6]),
        "invalid_config",
        ["depths"],
    ),
    (
        "zero ratio",
        _set("semantic_tokenizer_encoder_config.downsampling_ratios", [0, 20, 20]),
        "invalid_config",
        ["downsampling_ratios"],
    ),
    ("hidden size as text", _set("text_config.hidden_size", "64"), "invalid_config", ["hidden"]),
    ("not JSON", _text("config.json", "{not json"), "invalid_config", ["not valid JSON"]),
    ("a JSON list", _text("config.json", "[1, 2]"), "invalid_config", ["list"]),
    ("deep JSON", _text("config.json", "[" * 10**5 + "]" * 10**5), "invalid_config", ["JSON"]),
    ("index outside", _index, "invalid_config", ["'../../../etc/passwd'"]),
    ("config of other weights", _wide, "model_load_failed", ["belongs to another model"]),
]


def test_a_defective_checkpoint_is_a_specific_error_and_the_server_keeps_serving(
    tiny_model: Path, tmp_path: Path
) -> None:
    env = server_env(VIBEVOICE_MODEL_PATH=str(tiny_model), VIBEVOICE_PRECISION="fp32")
    with RpcProcess(env=env) as p:
        for i, (what, defect, kind, says) in enumerate(DEFECTS):
            folder = _copy(tiny_model, tmp_path / f"c{i}")
            defect(folder)
            reply = p.call(
                "reload_model", {"precision": "fp32", "model_path": str(folder)}, timeout=120
            )
            err = reply.get("error")
            assert err is not None, (what, reply)
            assert err["code"] == -32004 and err["data"]["kind"] == kind, (what, err)
            assert str(folder) in err["message"] and err["data"]["path"].startswith(str(folder))
            for text in says:
                assert text in err["message"], (what, text, err["message"])
            assert p.call("health", timeout=30)["result"]["status"] == "ok", what
        res = p.call("reload_model", {"precision": "fp32", "model_path": str(tiny_model)})
        assert res["result"]["status"] == "success", res
        health = p.call("health")["result"]
        assert health["model_loaded"] is True and health["model"] == str(tiny_model)
    assert "Traceback" not in p.stderr  # each was an answer, not an internal error


def test_a_refused_checkpoint_keeps_the_loaded_model(tiny_model: Path, tmp_path: Path) -> None:
    env = server_env(VIBEVOICE_MODEL_PATH=str(tiny_model), VIBEVOICE_PRECISION="fp32")
    folder = _copy(tiny_model, tmp_path / "fifo")
    _fifo("model.safetensors")(folder)
    with RpcProcess(env=env) as p:
        assert p.call("reload_model", {"precision": "fp32"}, timeout=120)["result"]
        err = p.call("reload_model", {"precision": "fp32", "model_path": str(folder)})["error"]
        assert err["data"]["kind"] == "not_a_regular_file" and err["data"]["kept_model"] is True
        assert p.call("health")["result"]["model"] == str(tiny_model)
