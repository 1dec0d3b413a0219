"""The VRAM planner on the real-size architecture (built on the meta device: no weights, no memory)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from vibevoice_rpc import limits
from vibevoice_rpc.errors import ModelDoesNotFit
from vibevoice_rpc.messages import MemoryPlan
from vibevoice_rpc.model import planner
from vibevoice_rpc.model.planner import (
    bitsandbytes_skip_modules,
    count_parameters,
    kv_cache_bytes,
    plan,
    real_size_config,
    weights_bytes,
    window_tokens,
)

pytestmark = pytest.mark.timeout(60)

GIB = 2**30


@pytest.fixture(scope="module")
def cfg() -> Any:
    config = real_size_config()
    count_parameters(config)  # the first call pays the transformers import
    return config


def gpu_plan(cfg: Any, precision: str, free_gib: float, **kw: Any) -> MemoryPlan:
    free = int(free_gib * GIB)
    kw.setdefault("audio_seconds", None)
    return plan(cfg, precision, free_vram_bytes=free, total_vram_bytes=free, device="cuda", **kw)


# --- counting --------------------------------------------------------------------------------


def test_real_size_model_has_8_33_billion_parameters_in_the_measured_groups(cfg: Any) -> None:
    c = count_parameters(cfg)
    assert c.total == pytest.approx(8.33e9, rel=0.001)
    assert c.lm_linear == pytest.approx(6.53e9, rel=0.002)
    assert c.embeddings == c.lm_head == 152064 * 3584
    assert c.encoders == pytest.approx(688e6, rel=0.002)
    assert c.projector == pytest.approx(26.4e6, rel=0.002)
    assert c.lm_other < 1e6  # norms and q/k/v biases only


def test_meta_build_of_the_real_size_model_takes_well_under_a_second(cfg: Any) -> None:
    # CPU time of this thread: the planner's own cost, not the time other processes on a shared
    # machine had the core (nothing here reads a file or waits)
    planner._cache.clear()
    started = time.thread_time()
    count_parameters(cfg)
    assert time.thread_time() - started < 1.5
    started = time.thread_time()
    assert count_parameters(cfg) is count_parameters(cfg)  # cached by config fingerprint
    assert time.thread_time() - started < 0.05


def test_groups_match_a_materialized_small_model() -> None:
    import torch
    from transformers import (
        Qwen2Config,
        VibeVoiceAcousticTokenizerEncoderConfig,
        VibeVoiceAsrConfig,
        VibeVoiceAsrForConditionalGeneration,
    )

    def encoder(hidden: int) -> Any:
        return VibeVoiceAcousticTokenizerEncoderConfig(
            hidden_size=hidden, num_filters=4, downsampling_ratios=[8, 20, 20], depths=[1, 1, 1, 1]
        )

    text = Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        tie_word_embeddings=False,
    )
    small = VibeVoiceAsrConfig(
        acoustic_tokenizer_encoder_config=encoder(8),
        semantic_tokenizer_encoder_config=encoder(16),
        text_config=text,
        audio_token_id=299,
        audio_bos_token_id=297,
        audio_eos_token_id=298,
    )
    model = VibeVoiceAsrForConditionalGeneration(small)

    def size(prefix: str) -> int:
        return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))

    c = count_parameters(small)
    assert c.total == sum(p.numel() for p in model.parameters())
    assert c.embeddings == size("model.language_model.embed_tokens.")
    assert c.lm_head == size("lm_head.")
    assert c.projector == size("model.multi_modal_projector.")
    assert c.encoders == size("model.acoustic_tokenizer_encoder.") + size(
        "model.semantic_tokenizer_encoder."
    )
    linear = [m for m in model.model.language_model.modules() if isinstance(m, torch.nn.Linear)]
    assert c.lm_linear == sum(m.weight.numel() for m in linear)
    assert c.lm_linear_rows == sum(m.out_features for m in linear)


# --- bytes -----------------------------------------------------------------------------------

MEASURED = [  # FIELD-NOTES §1: weight bytes measured on the real-size model
    ("bf16", "bf16", 16.66e9, 0.002),
    ("bf16", "fp32", 18.09e9, 0.002),
    ("int8", "fp32", 11.56e9, 0.005),
    # The measured figures count parameters only; bitsandbytes keeps NF4's absmax (1/64 byte per
    # weight, double-quantized) outside them, and the planner counts it: ~0.1 GB more.
    ("nf4", "fp32", 8.30e9, 0.02),
    ("nf4", "bf16", 6.87e9, 0.02),
]


@pytest.mark.parametrize(("precision", "encoders", "measured", "rel"), MEASURED)
def test_weight_bytes_reproduce_the_measured_figures(
    cfg: Any, precision: str, encoders: str, measured: float, rel: float
) -> None:
    w = weights_bytes(count_parameters(cfg), precision, "bf16", encoders)
    assert w["total"] == pytest.approx(measured, rel=rel)
    assert w["total"] >= measured * 0.999  # never below what was measured


def test_quantized_modes_keep_embeddings_lm_head_and_encoders_unquantized(cfg: Any) -> None:
    c = count_parameters(cfg)
    for precision in ("int8", "nf4"):
        w = weights_bytes(c, precision, "bf16", "fp32")
        assert w["embeddings"] == w["lm_head"] == 2 * c.embeddings
        assert w["encoders"] == 4 * c.encoders
    assert weights_bytes(c, "nf4", "bf16", "bf16")["lm_linear"] == pytest.approx(
        c.lm_linear * (0.5 + 1 / 64), rel=0.001
    )


def test_kv_cache_is_56_kib_per_token_in_bf16(cfg: Any) -> None:
    assert kv_cache_bytes(cfg, 1, 2) == 2 * 28 * 4 * 128 * 2 == 56 * 1024
    assert kv_cache_bytes(cfg, 1000, 4) == 2 * 56 * 1024 * 1000


def test_audio_tokens_are_7_5_per_second() -> None:
    assert window_tokens(60).audio == 450
    hour = window_tokens(3600)
    assert hour.audio == 27000
    # An hour would ask for 12/s x 3600 + 256 new tokens; the 64 K context caps it.
    assert hour.new == limits.MODEL_CONTEXT_TOKENS - hour.prompt < 43200 + limits.OUTPUT_TOKENS_BASE
    assert hour.total == 65536  # exactly fills the 64 K context the model was trained for
    half = window_tokens(1800)
    assert half.new == 1800 * 12 + limits.OUTPUT_TOKENS_BASE  # below the cap: the plain rate
    assert window_tokens(3600, max_new_tokens=1000).new == 1000
    assert window_tokens(60, output_tokens_per_second=20).new == 1200 + limits.OUTPUT_TOKENS_BASE


# --- auto on GPUs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("free_gib", "expected"),
    [
        (48, "bf16"),
        (24, "bf16"),
        (20, "bf16"),
        (16, "int8"),
        (15.2, "int8"),
        (12, "int8"),
        (8, "nf4"),
    ],
)
def test_auto_picks_the_best_precision_that_fits(cfg: Any, free_gib: float, expected: str) -> None:
    p = gpu_plan(cfg, "auto", free_gib)
    assert p.precision == expected
    assert p.requested == "auto"
    assert p.fits and not p.cpu_offload
    assert p.total_bytes <= free_gib * GIB
    assert p.max_window_seconds >= limits.MIN_FITTING_WINDOW_SECONDS
    assert expected in p.fitting_modes


def test_a_16_gb_card_never_gets_bf16_or_fp16(cfg: Any) -> None:
    # 16.66 GB (15.5 GiB) of bf16 weights leave no room for a window on a 16 GiB card.
    for free_gib in (16, 15.5, 15.2):
        p = gpu_plan(cfg, "auto", free_gib)
        assert p.precision not in ("bf16", "fp16")
        assert p.fitting_modes == ["int8", "nf4"]
        with pytest.raises(ModelDoesNotFit):
            gpu_plan(cfg, "bf16", free_gib)


def test_a_big_card_gets_bf16_with_fp32_encoders_and_an_hour_in_one_window(cfg: Any) -> None:
    p = gpu_plan(cfg, "auto", 48)
    assert (p.precision, p.lm_dtype, p.encoder_dtype) == ("bf16", "bf16", "fp32")
    assert not p.encoders_on_cpu_between_jobs
    assert p.max_window_seconds == 3600
    assert "fp32" in p.fitting_modes  # fits, but auto does not spend 33 GB on it


def test_small_cards_shrink_or_park_the_encoders_and_say_so(cfg: Any) -> None:
    p = gpu_plan(cfg, "auto", 8)
    assert p.precision == "nf4"
    assert p.encoder_dtype == "bf16" or p.encoders_on_cpu_between_jobs
    assert any("encoders" in n for n in p.notes)
    assert p.weights_bytes["resident"] <= p.weights_bytes["total"]
    if p.encoders_on_cpu_between_jobs:
        parked = p.weights_bytes["encoders"] + p.weights_bytes["projector"]
        assert p.weights_bytes["resident"] == p.weights_bytes["total"] - parked


def test_without_native_bf16_auto_picks_fp16_with_fp32_encoders(cfg: Any) -> None:
    p = gpu_plan(cfg, "auto", 48, bf16_supported=False)
    assert (p.precision, p.lm_dtype, p.encoder_dtype) == ("fp16", "fp16", "fp32")
    assert "bf16" not in p.fitting_modes
    assert any("fp16 is untested" in n for n in p.notes)
    q = gpu_plan(cfg, "int8", 16, bf16_supported=False)
    assert q.lm_dtype == "fp16"


def test_nothing_fitting_says_so_and_suggests_the_cpu(cfg: Any) -> None:
    with pytest.raises(ModelDoesNotFit) as info:
        gpu_plan(cfg, "auto", 4)
    err = info.value
    assert "no precision fits" in err.message
    assert err.data["fitting_modes"] == []
    assert "cpu" in err.data["hint"].lower()
    assert err.data["needed_mb"] > err.data["free_mb"] == 4096


# --- explicit precisions ---------------------------------------------------------------------


def test_explicit_fp16_on_a_16_gb_card_fails_in_milliseconds_naming_what_fits(cfg: Any) -> None:
    started = time.thread_time()  # CPU time, as above
    with pytest.raises(ModelDoesNotFit) as info:
        gpu_plan(cfg, "fp16", 15.2)
    assert time.thread_time() - started < 0.25
    err = info.value
    assert err.code == -32006
    assert err.message.startswith("fp16 needs ")
    assert "only 15.2 GiB of VRAM is free; modes that fit: int8, nf4" in err.message
    assert err.data["kind"] == "does_not_fit"
    assert err.data["fitting_modes"] == ["int8", "nf4"]
    assert err.data["free_mb"] == int(15.2 * 1024)
    assert err.data["needed_mb"] > err.data["free_mb"]
    assert "int8" in err.data["hint"]
    json.dumps(err.data)


def test_allow_cpu_offload_avoids_the_refusal(cfg: Any) -> None:
    p = gpu_plan(cfg, "fp16", 15.2, allow_cpu_offload=True)
    assert p.precision == "fp16"
    assert not p.fits and p.cpu_offload
    assert any("offloaded" in n for n in p.notes)
    assert 0 < p.max_window_seconds <= 3600
    assert p.fitting_modes == ["int8", "nf4"]


def test_an_explicit_precision_that_fits_is_kept(cfg: Any) -> None:
    for precision in ("bf16", "fp16", "int8", "nf4"):
        p = gpu_plan(cfg, precision, 24)
        assert p.precision == p.requested == precision
        assert p.fits
    assert gpu_plan(cfg, "int8", 24).lm_dtype == "bf16"


def test_max_window_grows_with_free_vram_up_to_an_hour(cfg: Any) -> None:
    windows = [gpu_plan(cfg, "int8", g).max_window_seconds for g in (12, 13, 14, 16, 20, 40)]
    assert windows == sorted(windows)
    assert windows[0] < windows[3] < 3600
    assert windows[-1] == 3600


def test_a_short_file_is_planned_for_its_own_length(cfg: Any) -> None:
    p = gpu_plan(cfg, "auto", 24, audio_seconds=300)
    assert p.window_seconds == 300
    assert p.tokens["audio"] == 2250
    assert p.kv_cache_bytes == kv_cache_bytes(cfg, p.tokens["total"], 2)
    assert p.total_bytes == max(p.phase_bytes.values())
    assert p.total_bytes <= 24 * GIB
    longer = gpu_plan(cfg, "auto", 24, audio_seconds=1200)
    assert longer.kv_cache_bytes > p.kv_cache_bytes


def test_a_long_file_gets_the_longest_window_that_fits(cfg: Any) -> None:
    p = gpu_plan(cfg, "int8", 16, audio_seconds=3600)
    assert p.window_seconds == p.max_window_seconds < 3600
    assert p.total_bytes <= 16 * GIB


def test_max_new_tokens_shrinks_the_kv_cache(cfg: Any) -> None:
    a = gpu_plan(cfg, "bf16", 24, audio_seconds=600)
    b = gpu_plan(cfg, "bf16", 24, audio_seconds=600, max_new_tokens=500)
    assert b.tokens["new"] == 500
    assert b.kv_cache_bytes < a.kv_cache_bytes


def test_unknown_free_vram_is_not_refused(cfg: Any) -> None:
    p = plan(
        cfg, "fp16", audio_seconds=None, free_vram_bytes=None, total_vram_bytes=None, device="cuda"
    )
    assert p.precision == "fp16" and p.fits
    assert any("unknown" in n for n in p.notes)


def test_engine_without_parking_gets_no_parked_plan(cfg: Any) -> None:
    for g in (8, 12, 16, 24):
        assert not gpu_plan(cfg, "auto", g, park_encoders=False).encoders_on_cpu_between_jobs


# --- CPU -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "precision", "lm", "note"),
    [
        ("auto", "fp32", "fp32", None),
        ("fp32", "fp32", "fp32", None),
        ("fp16", "fp32", "fp32", "fp16 was requested"),
        ("bf16", "bf16", "bf16", "encoders stay fp32"),
        ("int8", "int8", "fp32", "8-bit"),
        ("nf4", "nf4", "fp32", "4-bit"),
    ],
)
def test_cpu_plans_never_refuse(
    cfg: Any, requested: str, precision: str, lm: str, note: str | None
) -> None:
    p = plan(
        cfg, requested, audio_seconds=600, free_vram_bytes=0, total_vram_bytes=None, device="cpu"
    )
    assert (p.precision, p.lm_dtype, p.encoder_dtype) == (precision, lm, "fp32")
    assert p.fits and not p.encoders_on_cpu_between_jobs
    assert p.max_window_seconds == 3600 and p.window_seconds == 600
    if note:
        assert any(note in n for n in p.notes)


def test_cpu_plan_notes_a_ram_shortfall(cfg: Any) -> None:
    p = plan(
        cfg,
        "auto",
        audio_seconds=60,
        free_vram_bytes=None,
        total_vram_bytes=None,
        device="cpu",
        free_ram_bytes=16 * GIB,
    )
    assert p.fits
    assert any("of RAM" in n for n in p.notes)


# --- reporting -------------------------------------------------------------------------------


def test_plan_to_dict_is_json_for_health(cfg: Any) -> None:
    d = gpu_plan(cfg, "auto", 16).to_dict()
    again = json.loads(json.dumps(d))
    for key in (
        "precision",
        "requested",
        "device",
        "lm_dtype",
        "encoder_dtype",
        "encoders_on_cpu_between_jobs",
        "weights_bytes",
        "kv_cache_bytes",
        "activation_margin_bytes",
        "total_bytes",
        "free_vram_bytes",
        "fits",
        "fitting_modes",
        "max_window_seconds",
        "notes",
        "summary",
    ):
        assert key in again
    assert again["precision"] != "auto"
    w = again["weights_bytes"]
    groups = ("lm_linear", "lm_other", "embeddings", "lm_head", "encoders", "projector")
    assert w["total"] == sum(w[g] for g in groups)


def test_unknown_precision_is_a_value_error(cfg: Any) -> None:
    with pytest.raises(ValueError):
        gpu_plan(cfg, "int4", 24)


def test_bitsandbytes_skips_the_audio_side_and_lm_head() -> None:
    assert bitsandbytes_skip_modules() == [
        "model.acoustic_tokenizer_encoder",
        "model.semantic_tokenizer_encoder",
        "model.multi_modal_projector",
        "lm_head",
    ]


def test_importing_the_planner_does_not_import_torch() -> None:
    code = "import sys, vibevoice_rpc.model.planner; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["False", "False"]
