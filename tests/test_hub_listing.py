"""The hub listing's checks, unit by unit: which file names may become paths (hostile names from a
mirror, Windows forms included), and which listings are malformed (types, sizes, counts, hashes)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from vibevoice_rpc.checkpoint.listing import (
    MAX_FILE_BYTES,
    MAX_LISTED_FILES,
    Listing,
    parse_model_info,
    safe_path,
    unsafe_name_reason,
)
from vibevoice_rpc.errors import DownloadFailed

MODEL = "microsoft/VibeVoice-ASR-HF"
SHA256 = "a" * 64
BLOB = "b" * 40

HOSTILE = [
    # (name, what the reason says)
    ("../../x.json", "'..' component"),
    ("..", "'..' component"),
    ("sub/../../../x.json", "'..' component"),
    ("sub/..", "'..' component"),
    ("./config.json", "'.' component"),
    ("/abs/path/x.json", "absolute path"),
    ("/etc/passwd", "absolute path"),
    ("//server/share/x.json", "absolute path"),
    ("", "empty"),
    ("sub//x.json", "empty path component"),
    ("sub/", "empty path component"),
    ("x.json\x00.txt", "control"),
    ("x\n.json", "control"),
    ("x\x1b[2J.json", "control"),
    ("x\x7f.json", "control"),
    ("x\u202egnp.json", "control or format"),  # a bidi override that disguises the name
    ("x\ud800.json", "control or format"),  # a lone surrogate: no path can hold it
    ("x\u2028.json", "control or format"),
    ("..\\..\\x.json", "backslash"),
    ("sub\\x.json", "backslash"),
    ("\\\\server\\share\\x.json", "backslash"),
    ("C:\\Windows\\x.json", "backslash"),
    ("C:/Windows/x.json", "drive letter"),
    ("C:x.json", "drive letter"),
    ("c:", "drive letter"),
    ("sub/C:x.json", "':'"),
    ("config.json:evil", "':'"),  # an NTFS alternate data stream of config.json
    ("x<y.json", "Windows forbids"),
    ('x"y.json', "Windows forbids"),
    ("x|y.json", "Windows forbids"),
    ("x?.json", "Windows forbids"),
    ("*.json", "Windows forbids"),
    ("config.json.", "dot or space"),  # Windows drops the dot: it would overwrite config.json
    ("config.json ", "dot or space"),
    ("sub./x.json", "dot or space"),
    ("...", "dot or space"),
    ("CON.json", "Windows device"),
    ("nul.json", "Windows device"),
    ("sub/aux.txt", "Windows device"),
    ("COM1.safetensors", "Windows device"),
    ("lpt9", "Windows device"),
    ("COM¹.json", "Windows device"),
    ("CONIN$.json", "Windows device"),
    ("x" * 1025, "longer than 1024"),
    ("sub/" + "x" * 201, "component longer than 200"),
    (None, "not a string"),
    (123, "not a string"),
    (["config.json"], "not a string"),
    ({"a": 1}, "not a string"),
]

SAFE = [
    "config.json",
    "model-00001-of-00004.safetensors",
    "model.safetensors.index.json",
    "sub/tokenizer.json",
    "a/b/c/d.txt",
    "chat_template.jinja",
    "..config.json",  # dots inside a name are only a name
    "x..y.json",
    "console.json",  # starts with CON, is not CON
    "com10.json",
    "tokenizer-中文.json",
    "café.json",
    ".gitattributes",
]


@pytest.mark.parametrize(("name", "why"), HOSTILE, ids=[repr(n)[:40] for n, _ in HOSTILE])
def test_a_hostile_name_is_refused_with_its_reason(name: Any, why: str) -> None:
    reason = unsafe_name_reason(name)
    assert reason is not None and why in reason


@pytest.mark.parametrize("name", SAFE)
def test_a_plain_name_passes(name: str) -> None:
    assert unsafe_name_reason(name) is None


def _info(*siblings: Any, sha: Any = "c" * 40) -> dict[str, Any]:
    return {"id": MODEL, "sha": sha, "siblings": list(siblings)}


def _file(name: Any, size: Any = 10, **extra: Any) -> dict[str, Any]:
    return {"rfilename": name, "size": size, "blobId": BLOB, **extra}


def _refused(data: Any, target: Path) -> DownloadFailed:
    with pytest.raises(DownloadFailed) as info:
        parse_model_info(data, MODEL, "main", target)
    err = info.value
    assert err.code == -32011
    return err


def test_every_hostile_name_fails_the_whole_listing_naming_the_file(tmp_path: Path) -> None:
    for name, _ in HOSTILE:
        err = _refused(_info(_file("config.json"), _file(name)), tmp_path)
        if isinstance(name, str):
            assert err.kind == "unsafe_listing", name
            assert repr(name)[:100] in err.message and err.data["file"].startswith(repr(name)[:50])
            assert "before anything was written" in err.message
        else:
            assert err.kind == "unsafe_listing" and "not a string" in err.message


def test_a_name_is_shown_escaped_and_cut(tmp_path: Path) -> None:
    name = "\x1b[31m" + "y" * 600 + ".json"
    err = _refused(_info(_file(name)), tmp_path)
    assert "\x1b" not in err.message and "\\x1b[31m" in err.message
    assert len(err.message) < 600 and "(610 characters)" in err.message


def test_a_name_through_a_symlinked_folder_is_refused(tmp_path: Path) -> None:
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    os.symlink(outside, target / "sub")
    assert safe_path(target, "sub/x.json") is None
    err = _refused(_info(_file("config.json"), _file("sub/x.json")), target)
    assert err.kind == "unsafe_listing" and "outside" in err.message
    # a link that stays inside the folder is fine; so is a target folder that is itself a link
    (target / "inner").mkdir()
    os.symlink(target / "inner", target / "alias")
    assert safe_path(target, "alias/x.json") == (target / "inner" / "x.json").resolve()
    os.symlink(target, tmp_path / "link")
    assert safe_path(tmp_path / "link", "x.json") == (target / "x.json").resolve()


def test_names_one_file_system_holds_as_one_file_are_refused(tmp_path: Path) -> None:
    err = _refused(_info(_file("config.json"), _file("Config.json")), tmp_path)
    assert err.kind == "unsafe_listing" and "same file" in err.message
    nfc, nfd = "caf\u00e9.json", "cafe\u0301.json"
    assert _refused(_info(_file(nfc), _file(nfd)), tmp_path).kind == "unsafe_listing"


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ([1, 2], "not a JSON object"),
        ("siblings", "not a JSON object"),
        ({"siblings": {"a": 1}}, "not a list"),
        (_info("config.json"), "has no file name"),
        (_info({"size": 1}), "has no file name"),
        (_info(_file("config.json", size=-1)), "-1"),
        (_info(_file("config.json", size=MAX_FILE_BYTES + 1)), "1099511627777"),
        (_info(_file("config.json", size=10**30)), "1000000000000000000000000000000"),
        (_info(_file("config.json", size=1.5)), "1.5"),
        (_info(_file("config.json", size="10")), "'10'"),
        (_info(_file("config.json", size=True)), "True"),
        (_info({"rfilename": "config.json", "blobId": BLOB}), "without a size"),
        (_info(_file("config.json", blobId="../../x")), "blob id"),
        (_info(_file("config.json", blobId="f" * 39)), "blob id"),
        (_info(_file("m.safetensors", lfs={"sha256": "../" * 20})), "sha256"),
        (_info(_file("m.safetensors", lfs={"size": 1})), "sha256"),
        (_info(_file("m.safetensors", lfs="zz")), "sha256"),
        (_info(_file("config.json"), sha="../../etc"), "commit"),
        (_info(_file("config.json"), sha=12), "commit"),
        (
            _info(*[_file(f"m{i}.safetensors", size=MAX_FILE_BYTES // 2) for i in range(3)]),
            "no checkpoint is that large",
        ),
    ],
)
def test_a_malformed_listing_is_a_bad_listing(data: Any, says: str, tmp_path: Path) -> None:
    err = _refused(data, tmp_path)
    assert err.kind == "bad_listing" and says in err.message, err.message
    assert "nothing was downloaded" in err.message and "HF_ENDPOINT" in err.data["hint"]


def test_a_listing_longer_than_any_checkpoint_is_refused(tmp_path: Path) -> None:
    files = [_file(f"f{i}.json") for i in range(10_000)]
    err = _refused(_info(*files), tmp_path)
    assert err.kind == "bad_listing" and "10,000 files" in err.message
    assert err.data["max_files"] == MAX_LISTED_FILES
    ok = [_file(f"f{i}.json") for i in range(MAX_LISTED_FILES)]
    assert len(parse_model_info(_info(*ok), MODEL, "main", tmp_path).files) == MAX_LISTED_FILES


def test_a_good_listing_keeps_only_what_a_checkpoint_needs(tmp_path: Path) -> None:
    listing = parse_model_info(
        _info(
            _file("config.json"),
            _file("model.safetensors", size=99, lfs={"sha256": SHA256.upper(), "size": 99}),
            _file("pytorch_model.bin"),
            _file(".vibevoice-download/manifest.json"),  # our own state folder: never written
            _file(".github/renovate.json"),
            _file("README.md"),
        ),
        MODEL,
        "main",
        tmp_path,
    )
    assert [f.name for f in listing.files] == ["model.safetensors", "config.json"]
    assert listing.files[0].sha256 == SHA256 and listing.files[0].key == SHA256[:16]
    assert listing.commit == "c" * 40 and listing.total == 109


def test_a_saved_manifest_with_a_hostile_name_is_not_used(tmp_path: Path) -> None:
    good = {
        "model_id": MODEL,
        "revision": "main",
        "commit": "c" * 40,
        "files": [{"name": "config.json", "size": 3, "sha256": None, "blob_id": BLOB}],
    }
    assert Listing.from_json(good, tmp_path).files[0].name == "config.json"
    for bad_name in ("../../x.json", "x\x00.json", "/abs.json"):
        bad = {**good, "files": [{**good["files"][0], "name": bad_name}]}
        with pytest.raises(DownloadFailed):
            Listing.from_json(bad, tmp_path)
    for broken in ([], {"files": None}, {**good, "files": [None]}, {**good, "revision": 3}):
        with pytest.raises(DownloadFailed):
            Listing.from_json(broken, tmp_path)
