"""The tiny random-weight model: built offline, loaded and run exactly like the real checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from vibevoice_rpc.model import tiny
from vibevoice_rpc.transcription.parser import parse_transcript

pytestmark = [pytest.mark.model, pytest.mark.timeout(240)]

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODES = ["trained"] + (["qwen"] if tiny.qwen_tokenizer_dir() is not None else [])
SAMPLE_RATE = 24000


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    # The model is tiny: extra intra-op threads only add spin-wait, which costs seconds per
    # generate() when another process keeps the second core busy.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=MODES)
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    mode = request.param
    return mode, tiny.build_tiny_model(tmp_path_factory.mktemp(f"tiny-{mode}"), tokenizer=mode)


@pytest.fixture(scope="module")
def loaded(built: tuple[str, Path]) -> tuple[str, Any, Any]:
    import torch
    from transformers import AutoProcessor, VibeVoiceAsrForConditionalGeneration

    mode, folder = built
    processor = AutoProcessor.from_pretrained(folder)
    # bf16 on disk like the real checkpoint; fp32 here, as the engine runs it on the CPU
    model = VibeVoiceAsrForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    model = model.eval()
    return mode, processor, model


def _audio(seconds: float, seed: int = 0) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t))
    return (tone + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def _transcribe(
    processor: Any, model: Any, audio: Any, max_new_tokens: int = 24
) -> tuple[list[int], Any]:
    import torch

    inputs = processor.apply_transcription_request(audio=audio, prompt="Hotwords: Trispr")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    return new.tolist(), processor.decode(new, return_format="parsed")


def test_build_writes_a_checkpoint_laid_out_like_the_real_one(built: tuple[str, Path]) -> None:
    mode, folder = built
    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    } <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "vibevoice_asr"
    assert config["text_config"]["model_type"] == "qwen2"
    assert config["text_config"]["num_hidden_layers"] == 2
    assert config["tie_word_embeddings"] is False
    for enc in ("acoustic_tokenizer_encoder_config", "semantic_tokenizer_encoder_config"):
        ratios = config[enc]["downsampling_ratios"]
        assert len(config[enc]["depths"]) == len(ratios) + 1
        product = 1
        for r in ratios:
            product *= r
        assert product == 3200
    assert (folder / "chat_template.jinja").read_text() == tiny.CHAT_TEMPLATE
    size = sum(p.stat().st_size for p in folder.iterdir())
    text = config["text_config"]
    # bf16 weights: the embedding and lm_head (the real vocabulary's 152,064 rows in qwen mode, at
    # the hidden size bitsandbytes' CPU kernels need) dominate; everything else is < 4 MB besides
    # the tokenizer files.
    big = 2 * text["vocab_size"] * text["hidden_size"] * 2
    tokenizer = sum(
        (folder / n).stat().st_size for n in names if n.startswith(("tokenizer", "vocab", "merges"))
    )
    assert big <= size < big + tokenizer + 4e6
    assert size < (60e6 if mode == "qwen" else 4e6)


def test_token_ids_match_the_tokenizer_and_the_real_layout(loaded: tuple[str, Any, Any]) -> None:
    mode, processor, model = loaded
    tok = processor.tokenizer
    cfg, gen = model.config, model.generation_config
    assert (
        cfg.audio_token_id == tok.convert_tokens_to_ids("<|box_start|>") == processor.audio_token_id
    )
    assert cfg.audio_bos_token_id == tok.convert_tokens_to_ids("<|object_ref_start|>")
    assert cfg.audio_eos_token_id == tok.convert_tokens_to_ids("<|object_ref_end|>")
    assert gen.eos_token_id == tok.convert_tokens_to_ids("<|endoftext|>") == tok.eos_token_id
    assert gen.pad_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert gen.do_sample is False
    ids = [tok.convert_tokens_to_ids(t) for t in tiny.SPECIAL_TOKENS]
    assert len(set(ids)) == len(ids) and tok.unk_token_id not in ids[1:]
    assert cfg.text_config.vocab_size >= len(tok)
    if mode == "qwen":  # the real checkpoint's ids
        assert (cfg.audio_token_id, cfg.audio_bos_token_id, cfg.audio_eos_token_id) == (
            151648,
            151646,
            151647,
        )
        assert (gen.eos_token_id, gen.pad_token_id) == (151643, 151655)
        assert cfg.text_config.vocab_size == 152064


def test_prompt_is_the_real_chat_format(loaded: tuple[str, Any, Any]) -> None:
    _, processor, _ = loaded
    audio = _audio(1.0)
    inputs = processor.apply_transcription_request(audio=audio, prompt="Hotwords: Trispr")
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant that transcribes audio")
    assert "<|object_ref_start|>" + "<|box_start|>" * 8 + "<|object_ref_end|>" in text
    assert "This is a 1.00 seconds audio, with extra info: Hotwords: Trispr" in text
    assert text.endswith("Speaker ID, Content<|im_end|>\n")


@pytest.mark.parametrize("samples", [1, 3200, 3201, 72000])
def test_one_audio_token_per_3200_samples(loaded: tuple[str, Any, Any], samples: int) -> None:
    import numpy as np

    _, processor, model = loaded
    inputs = processor.apply_transcription_request(audio=np.full(samples, 0.01, dtype=np.float32))
    count = int((inputs["input_ids"] == model.config.audio_token_id).sum())
    assert count == -(-samples // 3200)
    assert inputs["input_values"].shape[-1] == count * 3200


def test_end_to_end_is_deterministic(loaded: tuple[str, Any, Any]) -> None:
    _, processor, model = loaded
    audio = _audio(3.0)
    first_ids, first = _transcribe(processor, model, audio)
    second_ids, second = _transcribe(processor, model, audio)
    assert len(first_ids) == 24
    assert first_ids == second_ids
    assert first == second
    assert isinstance(first, (str, list))  # random weights: usually not JSON, but it must decode
    raw = processor.decode(first_ids, skip_special_tokens=True)
    parse_transcript(raw, 3.0)  # never raises on noise


def test_same_seed_same_weights_different_seed_different(tmp_path: Path) -> None:
    def digest(folder: Path) -> str:
        return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    a = tiny.build_tiny_model(tmp_path / "a", tokenizer="trained", seed=1)
    b = tiny.build_tiny_model(tmp_path / "b", tokenizer="trained", seed=1)
    c = tiny.build_tiny_model(tmp_path / "c", tokenizer="trained", seed=2)
    assert digest(a) == digest(b) != digest(c)


def test_build_writes_nothing_to_stdout(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    tiny.build_tiny_model(tmp_path / "quiet", tokenizer="trained")
    out, _ = capfd.readouterr()
    assert out == ""


def test_tiny_model_dir_builds_once_and_reuses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first = tiny.tiny_model_dir("trained")
    stamp = (first / "tiny_model.json").stat().st_mtime_ns
    again = tiny.tiny_model_dir("trained")
    assert again == first and first.parent == tmp_path
    assert (first / "tiny_model.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging folder left behind


def test_unknown_tokenizer_mode_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        tiny.build_tiny_model(tmp_path, tokenizer="bogus")


def test_importing_tiny_and_transcript_does_not_import_torch() -> None:
    code = (
        "import sys, vibevoice_rpc.model.tiny, vibevoice_rpc.transcription.parser; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
