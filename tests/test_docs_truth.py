"""The docs a newcomer copies from say what the code does: PROTOCOL.md's field lists and segment
examples match the wire types, and README.md's hand session runs as written and answers what the
README shows."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from vibevoice_rpc.messages import Metadata, Segment

from .rpc_client import REPO, RpcProcess, server_env

PROTOCOL = REPO / "docs" / "PROTOCOL.md"
README = REPO / "README.md"


def _fields(struct: type[msgspec.Struct]) -> list[str]:
    return list(struct.__struct_fields__)


def _segment_lines(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in text.splitlines()
        if line.startswith("{") and '"method":"segment"' in line
    ]


def test_protocol_lists_every_metadata_and_segment_field() -> None:
    doc = PROTOCOL.read_text(encoding="utf-8")
    row = next(line for line in doc.splitlines() if line.startswith("| `transcribe` |"))
    metadata = re.search(r"metadata:\{([^}]*)\}", row)
    segment = re.search(r"segments:\[\{([^}]*)\}\]", row)
    assert metadata and segment, row
    listed = [f.strip() for f in metadata.group(1).split(",")]
    assert sorted(listed) == sorted(_fields(Metadata)), row
    assert [f.strip() for f in segment.group(1).split(",")] == _fields(Segment)
    # The metadata fields a client cannot guess are explained.
    for name in ("`metadata.server`", "`metadata.backend`"):
        assert name in doc, name


@pytest.mark.parametrize("doc", [PROTOCOL, README], ids=["PROTOCOL.md", "README.md"])
def test_every_segment_example_carries_the_wire_fields(doc: Path) -> None:
    examples = _segment_lines(doc.read_text(encoding="utf-8"))
    assert examples, f"no segment notification example in {doc.name}"
    for example in examples:
        assert list(example["params"]["segment"]) == _fields(Segment), example


def _tiny_session() -> list[str]:
    """The lines of README's ``VIBEVOICE_MODEL_PATH=tiny`` session block."""
    text = README.read_text(encoding="utf-8")
    start = text.index("$ VIBEVOICE_MODEL_PATH=tiny vibevoice-rpc")
    block = text[start : text.index("```", start)]
    # The README leaves the result's plan out as {…}.
    return [line.replace('"plan":{…}', '"plan":null') for line in block.splitlines()[1:] if line]


def test_the_readme_hand_section_names_files_that_exist() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Talk to it by hand") : text.index("## Protocol")]
    paths = re.findall(r'"audio_path":"([^"]+)"', section)
    paths += re.findall(r"vibevoice-rpc transcribe (\S+)", section)
    assert paths and all((REPO / p).is_file() for p in paths), paths


@pytest.mark.model
@pytest.mark.timeout(300)
def test_the_readme_tiny_session_runs_as_written_and_answers_what_it_shows() -> None:
    from vibevoice_rpc.model.tiny import tiny_model_dir

    tiny_model_dir(answer=True)  # built here, not inside the server's first request
    lines = [json.loads(line) for line in _tiny_session()]
    requests = [m for m in lines if "method" in m and "id" in m]
    assert [r["method"] for r in requests] == ["health", "transcribe", "shutdown"]
    env = server_env(VIBEVOICE_MODEL_PATH="tiny")
    env.pop("VIBEVOICE_PRECISION", None)
    with RpcProcess(env=env) as p:  # started in the repository root, as the README says
        answers = {}
        for request in requests:
            p.send_raw(json.dumps(request, separators=(",", ":")).encode() + b"\n")
            answers[request["id"]] = p.response(request["id"], timeout=240)
        segments = p.notifications("segment")
        progress = p.notifications("progress")
    transcribe = next(r["id"] for r in requests if r["method"] == "transcribe")
    shown = {m["id"]: m for m in lines if "id" in m and ("result" in m or "error" in m)}
    assert answers[transcribe]["result"]["segments"] == shown[transcribe]["result"]["segments"]
    meta, shown_meta = (
        answers[transcribe]["result"]["metadata"],
        shown[transcribe]["result"]["metadata"],
    )
    for key in ("duration", "language", "model_precision", "num_speakers", "warnings", "windows"):
        assert meta[key] == shown_meta[key], key
    assert meta["generated_tokens"] == shown_meta["generated_tokens"]
    assert segments == [m["params"] for m in lines if m.get("method") == "segment"]
    shown_moving = [
        m["params"]["progress"]
        for m in lines
        if m.get("method") == "progress" and m["params"]["stage"] == "transcribing"
    ]
    moving = [n["progress"] for n in progress if n["stage"] == "transcribing"]
    assert shown_moving[-1] == moving[-1], (shown_moving, moving)  # the stage's last value
    assert answers[requests[-1]["id"]] == shown[requests[-1]["id"]]  # shutdown's answer
