"""The VRAM planner: what each precision needs, decided in milliseconds before anything is loaded.

The checkpoint's architecture is built on the ``meta`` device (no weights, no memory, ~0.1-0.5 s) and
its parameters are summed per module group. From those counts and the config's dimensions the planner
computes, per mode: the weights (bytes per parameter per group), the KV cache for the audio's token
count, and a working margin (audio-encoder activations per chunk, prefill activations per token, a
fixed overhead). ``plan()`` picks the mode for ``auto``, refuses an explicit precision that cannot
fit (:class:`~vibevoice_rpc.errors.ModelDoesNotFit`, naming the modes that would) and reports the
longest audio window that fits. docs/MEMORY.md explains the model and lists the computed figures.

torch and transformers are imported inside functions only: importing this module is cheap.

Why one file of ~800 lines: counting parameters, sizing each phase of a window and choosing a mode
share the private sizing model (``_Sizer``, ``_Mode``, ``_Need``); split, each half would reach into
the other's internals.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ModelDoesNotFit, ModelUnavailable
from ..limits import (
    AUDIO_HOP,
    MAX_WINDOW_SECONDS,
    MIN_FITTING_WINDOW_SECONDS,
    MODEL_CONTEXT_TOKENS,
    OUTPUT_TOKENS_PER_SECOND,
    PROMPT_OVERHEAD_TOKENS,
    SAMPLE_RATE,
    output_budget,
)
from ..messages import MemoryPlan

__all__ = [
    "ENCODER_MODULES",
    "QUALITY_ORDER",
    "AUTO_ORDER",
    "ParamCounts",
    "TokenCounts",
    "check_architecture",
    "count_parameters",
    "real_size_config",
    "weights_bytes",
    "window_tokens",
    "kv_cache_bytes",
    "plan",
    "bitsandbytes_skip_modules",
]

# The audio side of the model (attributes of ``model.model``): never quantized, kept in fp32 where
# memory allows, parked on the CPU between jobs on small cards.
ENCODER_MODULES = (
    "acoustic_tokenizer_encoder",
    "semantic_tokenizer_encoder",
    "multi_modal_projector",
)
# The loadable precisions (messages.PRECISIONS without "auto"), best first; the order of
# fitting_modes.
QUALITY_ORDER = ("fp32", "bf16", "fp16", "int8", "nf4")
AUTO_ORDER = ("bf16", "fp16", "int8", "nf4")  # auto on a GPU (fp32 doubles memory for no gain)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# bitsandbytes storage (0.45-0.50). LLM.int8: one int8 per weight + one fp32 scale per output row
# (``SCB``). NF4 with double quantization: 4 bits per weight + one uint8 absmax per 64-weight block +
# one fp32 absmax per 256 blocks. Embeddings, norms and biases are never quantized.
INT8_BYTES_PER_PARAM = 1.0
INT8_BYTES_PER_ROW = 4
NF4_BLOCK = 64
NF4_BYTES_PER_PARAM = 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * 256)

ENCODER_CHUNK_SECONDS = (30, 20, 10)  # smaller encoder chunks tried when the config's does not fit

# Working memory (estimates, calibrated on CPU; see docs/MEMORY.md). Prefill of one decoder layer
# keeps ~4 intermediate-sized and ~4 hidden-sized tensors per token alive (measured on CPU: 182 KB
# per token in bf16, 355 KB in fp32, for the real widths). LLM.int8 adds an int32 accumulator per
# output. A ConvNeXt stage of the audio encoders keeps ~4 tensors of ffn_expansion x num_filters
# channels per input sample alive (measured on CPU: 47 MB per second of chunk in fp32).
PREFILL_INTERMEDIATE_COPIES = 4
PREFILL_HIDDEN_COPIES = 4
INT8_ACCUMULATOR_BYTES = 4
ENCODER_LIVE_COPIES = 4
FIXED_OVERHEAD_BYTES = 512 * 2**20  # cuBLAS workspace, allocator fragmentation, small tensors
# Not yet calibrated on a GPU: err towards shorter windows rather than an OOM in the middle of a job.
DYNAMIC_HEADROOM = 1.15  # applied to the KV cache + activations (everything that grows with audio)
# With CPU offload allowed, the share of free VRAM the loader should leave for KV + activations.
OFFLOAD_DYNAMIC_FRACTION = 0.25

GIB = 2**30  # messages use GiB: what nvidia-smi and the Windows task manager call "GB"
MB = 2**20  # needed_mb / free_mb are MiB, like health's vram_*_mb


@dataclass(frozen=True)
class ParamCounts:
    """Parameters per module group of the whole model (tied weights counted once)."""

    lm_linear: int  # weights of the language model's Linear layers: what bitsandbytes quantizes
    lm_linear_rows: int  # their output features (one int8 scale each)
    lm_linear_max: int  # the largest one (NF4 dequantizes one weight at a time while computing)
    lm_other: int  # norms and the Linear biases
    embeddings: int
    lm_head: int
    encoders: int  # acoustic + semantic tokenizer encoders
    projector: int

    @property
    def total(self) -> int:
        return (
            self.lm_linear
            + self.lm_other
            + self.embeddings
            + self.lm_head
            + self.encoders
            + self.projector
        )


@dataclass(frozen=True)
class TokenCounts:
    audio: int
    prompt: int  # audio + template/context overhead: what prefill processes in one pass
    new: int  # the max_new_tokens budget
    total: int


def _summary(
    precision: str,
    device: str,
    lm_dtype: str,
    encoder_dtype: str,
    parked: bool,
    total_bytes: int,
    free_vram_bytes: int | None,
    max_window_seconds: float,
) -> str:
    enc = encoder_dtype + (", parked on CPU between jobs" if parked else "")
    where = f"{_gb(total_bytes)} GiB"
    if free_vram_bytes is not None and device.startswith("cuda"):
        where += f" of {_gb(free_vram_bytes)} GiB free"
    return (
        f"{precision} on {device} (LM {lm_dtype}, encoders {enc}): {where}, "
        f"windows up to {max_window_seconds / 60:.1f} min"
    )


# --- counting ---------------------------------------------------------------------------------

_cache: dict[str, ParamCounts] = {}
_cache_lock = threading.Lock()


def _fingerprint(config: Any) -> str:
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    data = {k: v for k, v in data.items() if not k.startswith("_") and k != "transformers_version"}
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


# Bounds on the dimensions a config may give before the architecture is built from it (the real
# checkpoint's value in brackets). Building on ``meta`` costs no memory but time per module, and a
# dimension past these makes numel overflow or the build loop for minutes: 10^9 layers, 10^12-wide
# layers, a negative size. The largest language models in use stay well inside them (hidden 16 K,
# intermediate 53 K, 126 layers, 128 heads, 256 K vocabulary).
_TEXT_BOUNDS = {
    "hidden_size": 65536,  # [3584]
    "intermediate_size": 262144,  # [18944]
    "num_hidden_layers": 512,  # [28]
    "num_attention_heads": 1024,  # [28]
    "num_key_value_heads": 1024,  # [4]
    "vocab_size": 4 * 2**20,  # [152064]
}
_ENCODER_BOUNDS = {
    "hidden_size": 65536,  # [64 acoustic, 128 semantic]
    "num_filters": 4096,  # [32]
    "ffn_expansion": 64,  # [4]
    "kernel_size": 1024,  # [7]
    "channels": 64,  # [1]
}
_MAX_STAGES = 16  # [7 depths, 6 downsampling ratios]
_MAX_DEPTH = 256  # blocks per stage [3-8]
_MAX_HOP = 2**20  # product of the downsampling ratios, samples per audio token [3200]
_MAX_CHUNK_SAMPLES = 24 * SAMPLE_RATE * 3600  # [1,440,000 = 60 s]


def check_architecture(config: Any) -> None:
    """Refuse a config whose dimensions no VibeVoice-ASR checkpoint has, before anything is built
    from it: :class:`ModelUnavailable` ``invalid_config`` naming the field, its value and the range.
    """

    def bad(field: str, value: Any, expected: str) -> ModelUnavailable:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:60] + "…"
        return ModelUnavailable(
            f"the config's {field} is {shown}; {expected} was expected (no VibeVoice-ASR "
            "checkpoint has that)",
            kind="invalid_config",
            hint="use a complete VibeVoice-ASR-HF checkpoint (download_model fetches one)",
            field=field,
        )

    def whole(field: str, value: Any, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise bad(field, value, f"a whole number from {low} to {high:,}")
        return value

    text = getattr(config, "text_config", None)
    subs = {
        name: getattr(config, name, None)
        for name in ("acoustic_tokenizer_encoder_config", "semantic_tokenizer_encoder_config")
    }
    for name, sub in {"text_config": text, **subs}.items():
        if sub is None:
            raise bad(name, None, "a sub-config")
    dims = {
        k: whole(f"text_config.{k}", getattr(text, k, None), 1, v) for k, v in _TEXT_BOUNDS.items()
    }
    heads, kv_heads = dims["num_attention_heads"], dims["num_key_value_heads"]
    if heads % kv_heads:
        raise bad("text_config.num_key_value_heads", kv_heads, f"a divisor of {heads}")
    head_dim = getattr(text, "head_dim", None)
    if head_dim is not None:
        whole("text_config.head_dim", head_dim, 1, 4096)
    elif dims["hidden_size"] % heads:
        raise bad("text_config.num_attention_heads", heads, f"a divisor of {dims['hidden_size']}")
    hops = []
    for name, sub in subs.items():
        for k, high in _ENCODER_BOUNDS.items():
            whole(f"{name}.{k}", getattr(sub, k, None), 1, high)
        depths = getattr(sub, "depths", None)
        ratios = getattr(sub, "downsampling_ratios", None)
        for attr, values, low, high in (
            ("depths", depths, 0, _MAX_DEPTH),
            ("downsampling_ratios", ratios, 1, _MAX_HOP),
        ):
            if not isinstance(values, (list, tuple)) or not 1 <= len(values) <= _MAX_STAGES:
                raise bad(f"{name}.{attr}", values, f"a list of 1 to {_MAX_STAGES} numbers")
            for v in values:
                whole(f"{name}.{attr}", v, low, high)
        if len(depths) != len(ratios) + 1:
            raise bad(f"{name}.depths", depths, f"{len(ratios) + 1} stages (one per ratio, + 1)")
        hop = math.prod(ratios)
        if hop > _MAX_HOP:
            raise bad(f"{name}.downsampling_ratios", ratios, f"a product up to {_MAX_HOP:,}")
        hops.append(hop)
    chunk = whole(
        "acoustic_tokenizer_chunk_size",
        getattr(config, "acoustic_tokenizer_chunk_size", None),
        1,
        _MAX_CHUNK_SAMPLES,
    )
    if chunk % hops[0]:
        raise bad("acoustic_tokenizer_chunk_size", chunk, f"a multiple of the hop ({hops[0]})")


def count_parameters(config: Any) -> ParamCounts:
    """Parameters per group of ``VibeVoiceAsrForConditionalGeneration(config)``, built on ``meta``.

    Takes ~0.1-0.5 s for the real 8.33 B model (plus the one-time transformers import) and no memory;
    results are cached by a fingerprint of the config. The config's dimensions are checked first
    (:func:`check_architecture`).
    """
    check_architecture(config)
    key = _fingerprint(config)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    import torch
    from transformers import VibeVoiceAsrForConditionalGeneration

    with torch.device("meta"):
        model = VibeVoiceAsrForConditionalGeneration(config)
    counts = _count(model, torch.nn.Linear)
    with _cache_lock:
        _cache[key] = counts
    return counts


def _count(model: Any, linear_cls: type) -> ParamCounts:
    seen: set[int] = set()

    def take(p: Any) -> int:
        if id(p) in seen:
            return 0
        seen.add(id(p))
        return p.numel()

    def total(module: Any) -> int:
        return sum(take(p) for p in module.parameters())

    inner = model.model
    lm = inner.language_model
    embeddings = total(lm.get_input_embeddings())
    lm_linear = rows = biggest = 0
    for module in lm.modules():
        if isinstance(module, linear_cls):
            n = take(module.weight)
            lm_linear += n
            rows += module.out_features if n else 0
            biggest = max(biggest, n)
    encoders = total(inner.acoustic_tokenizer_encoder) + total(inner.semantic_tokenizer_encoder)
    projector = total(inner.multi_modal_projector)
    lm_head = total(model.lm_head)
    lm_other = total(lm)  # norms and biases: what is left of the language model
    lm_other += sum(take(p) for p in model.parameters())  # anything outside the known groups
    return ParamCounts(
        lm_linear=lm_linear,
        lm_linear_rows=rows,
        lm_linear_max=biggest,
        lm_other=lm_other,
        embeddings=embeddings,
        lm_head=lm_head,
        encoders=encoders,
        projector=projector,
    )


def real_size_config() -> Any:
    """The config of ``microsoft/VibeVoice-ASR-HF`` (8.33 B parameters), built offline.

    Qwen2.5-7B text config (passed explicitly: the bare ``VibeVoiceAsrConfig()`` gives a 12.8 B
    model); encoders are ``VibeVoiceAcousticTokenizerEncoderConfig`` defaults with hidden_size 64
    (acoustic) and 128 (semantic).
    """
    from transformers import (
        Qwen2Config,
        VibeVoiceAcousticTokenizerEncoderConfig,
        VibeVoiceAsrConfig,
    )

    text = Qwen2Config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    return VibeVoiceAsrConfig(
        acoustic_tokenizer_encoder_config=VibeVoiceAcousticTokenizerEncoderConfig(hidden_size=64),
        semantic_tokenizer_encoder_config=VibeVoiceAcousticTokenizerEncoderConfig(hidden_size=128),
        text_config=text,
        audio_token_id=151648,
        audio_bos_token_id=151646,
        audio_eos_token_id=151647,
    )


def bitsandbytes_skip_modules() -> list[str]:
    """``llm_int8_skip_modules`` for int8/nf4: the audio side and ``lm_head`` stay unquantized.

    Patterns match from the start of the module path; passing a list replaces transformers' default
    skips, so ``lm_head`` must be named too.
    """
    return [f"model.{name}" for name in ENCODER_MODULES] + ["lm_head"]


# --- bytes --------------------------------------------------------------------------------------


def weights_bytes(
    counts: ParamCounts, precision: str, lm_dtype: str, encoder_dtype: str
) -> dict[str, int]:
    """Bytes of the weights per group for a precision, plus ``total``."""
    unq = DTYPE_BYTES[lm_dtype]
    if precision == "int8":
        linear = (
            counts.lm_linear * INT8_BYTES_PER_PARAM + counts.lm_linear_rows * INT8_BYTES_PER_ROW
        )
    elif precision == "nf4":
        linear = counts.lm_linear * NF4_BYTES_PER_PARAM
    else:
        linear = counts.lm_linear * unq
    enc = DTYPE_BYTES[encoder_dtype]
    out = {
        "lm_linear": int(math.ceil(linear)),
        "lm_other": counts.lm_other * unq,
        "embeddings": counts.embeddings * unq,
        "lm_head": counts.lm_head * unq,
        "encoders": counts.encoders * enc,
        "projector": counts.projector * enc,
    }
    out["total"] = sum(out.values())
    return out


def window_tokens(
    seconds: float,
    *,
    hop_length: int = AUDIO_HOP,
    max_new_tokens: int | None = None,
    output_tokens_per_second: float = OUTPUT_TOKENS_PER_SECOND,
) -> TokenCounts:
    """Tokens for ``seconds`` of audio: one audio token per hop (7.5/s) + prompt + output budget,
    the output capped so that the total stays within :data:`MODEL_CONTEXT_TOKENS`."""
    audio = int(math.ceil(seconds * SAMPLE_RATE / hop_length)) if seconds > 0 else 0
    prompt = audio + PROMPT_OVERHEAD_TOKENS
    new = output_budget(seconds, max_new_tokens, output_tokens_per_second)
    new = max(1, min(new, MODEL_CONTEXT_TOKENS - prompt))
    return TokenCounts(audio=audio, prompt=prompt, new=new, total=prompt + new)


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def kv_cache_bytes(config: Any, tokens: int, dtype_bytes: int) -> int:
    """KV cache: 2 (K, V) x layers x kv_heads x head_dim x bytes per token (56 KiB/token in bf16)."""
    tc = _text_config(config)
    heads = tc.num_attention_heads
    kv_heads = getattr(tc, "num_key_value_heads", None) or heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
    return 2 * tc.num_hidden_layers * kv_heads * head_dim * dtype_bytes * tokens


@dataclass(frozen=True)
class _Mode:
    precision: str
    lm_dtype: str
    encoder_dtype: str
    parked: bool  # audio encoders + projector on the CPU between jobs
    chunk: int  # encoder chunk, samples


@dataclass(frozen=True)
class _Need:
    weights: dict[str, int]
    resident: int
    tokens: TokenCounts
    kv: int
    encode: int  # peak while the audio encoders run
    decode: int  # peak while prefilling and decoding

    @property
    def total(self) -> int:
        return max(self.encode, self.decode)


class _Sizer:
    """Byte figures for one config, parameter count and output-token budget."""

    def __init__(
        self,
        config: Any,
        counts: ParamCounts,
        max_new_tokens: int | None,
        rate: float,
        park: bool = True,
    ) -> None:
        self.config = config
        self.park = park
        self.counts = counts
        self.max_new_tokens = max_new_tokens
        self.rate = rate
        tc = _text_config(config)
        self.hidden, self.intermediate = tc.hidden_size, tc.intermediate_size
        enc = getattr(config, "acoustic_tokenizer_encoder_config", None)
        self.hop = int(math.prod(enc.downsampling_ratios)) if enc is not None else 3200
        self.chunk = int(getattr(config, "acoustic_tokenizer_chunk_size", 60 * SAMPLE_RATE))
        subs = [
            getattr(config, name, None)
            for name in ("acoustic_tokenizer_encoder_config", "semantic_tokenizer_encoder_config")
        ]
        self.encoder_width = max((s.ffn_expansion * s.num_filters for s in subs if s), default=128)

    def chunks(self) -> list[int]:
        """The config's encoder chunk, then smaller ones (whole hops) to try when it does not fit."""
        smaller = [s * SAMPLE_RATE for s in ENCODER_CHUNK_SECONDS]
        return [self.chunk] + [c for c in smaller if c < self.chunk and c % self.hop == 0]

    def modes(self, precision: str, bf16_supported: bool) -> list[_Mode]:
        """Settings for a precision on a GPU, in order of preference."""
        half = "bf16" if bf16_supported or precision == "bf16" else "fp16"
        lm = precision if precision in DTYPE_BYTES else half
        if precision == "fp32":
            encoders = [("fp32", False), ("fp32", True)]
        else:
            encoders = [("fp32", False), (half, False), ("fp32", True), (half, True)]
        if not self.park:
            encoders = [(enc, parked) for enc, parked in encoders if not parked]
        return [
            _Mode(precision, lm, enc, parked, chunk)
            for enc, parked in encoders
            for chunk in self.chunks()
        ]

    def need(self, mode: _Mode, seconds: float) -> _Need:
        """Peak bytes for a window of ``seconds`` of audio in ``mode``."""
        w = weights_bytes(self.counts, mode.precision, mode.lm_dtype, mode.encoder_dtype)
        resident = w["total"] - (w["encoders"] + w["projector"] if mode.parked else 0)
        tokens = window_tokens(
            seconds,
            hop_length=self.hop,
            max_new_tokens=self.max_new_tokens,
            output_tokens_per_second=self.rate,
        )
        compute = DTYPE_BYTES[mode.lm_dtype]
        kv = kv_cache_bytes(self.config, tokens.total, compute)
        # Encoding: every weight on the device (parked encoders are moved in for it), the window's
        # samples (+ a bool padding mask) and one chunk's activations; no KV cache exists yet.
        enc = DTYPE_BYTES[mode.encoder_dtype]
        samples = int(seconds * SAMPLE_RATE)
        per_sample = ENCODER_LIVE_COPIES * self.encoder_width * enc
        encode_work = samples * (enc + 1) + min(samples, mode.chunk) * per_sample
        encode = w["total"] + FIXED_OVERHEAD_BYTES + int(DYNAMIC_HEADROOM * encode_work)
        # Prefill + decoding, conservatively: the whole KV cache next to the prefill activations.
        per_token = compute * (
            PREFILL_INTERMEDIATE_COPIES * self.intermediate + PREFILL_HIDDEN_COPIES * self.hidden
        )
        if mode.precision == "int8":
            per_token += INT8_ACCUMULATOR_BYTES * self.intermediate
        decode_work = kv + tokens.prompt * per_token
        decode = resident + FIXED_OVERHEAD_BYTES + int(DYNAMIC_HEADROOM * decode_work)
        if mode.precision == "nf4":
            decode += self.counts.lm_linear_max * compute  # one weight dequantized at a time
        return _Need(w, resident, tokens, kv, encode, decode)

    def max_window(self, mode: _Mode, budget: int | None) -> float:
        """Longest window (whole seconds, <= 3600) whose peak fits ``budget``; 0 when none does."""
        if budget is None:
            return MAX_WINDOW_SECONDS

        def ok(s: int) -> bool:
            return self.need(mode, float(s)).total <= budget

        lo, hi = 1, int(MAX_WINDOW_SECONDS)
        if ok(hi):
            return MAX_WINDOW_SECONDS
        if not ok(lo):
            return 0.0
        while hi - lo > 1:  # ok(lo) and not ok(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return float(lo)

    def best_fit(
        self,
        precision: str,
        bf16_supported: bool,
        free: int | None,
        required: float,
        target: float,
    ) -> tuple[_Mode, float] | None:
        """The setting of ``precision`` to use, with its longest window; None when none fits.

        Only settings that run ``required``-second windows count. The first (in preference order:
        fp32 encoders, resident encoders, the config's encoder chunk) whose window reaches
        ``target`` wins; when none does, the one with the longest window (earliest on a tie).
        """
        best: tuple[_Mode, float] | None = None
        for mode in self.modes(precision, bf16_supported):
            if free is not None and self.need(mode, required).total > free:
                continue
            window = self.max_window(mode, free)
            if window >= target:
                return mode, window
            if best is None or window > best[1]:
                best = (mode, window)
        return best

    def least(self, precision: str, bf16_supported: bool, seconds: float) -> int:
        """The smallest peak of any setting of ``precision`` for a ``seconds`` window."""
        return min(self.need(m, seconds).total for m in self.modes(precision, bf16_supported))

    def offload_window(self, mode: _Mode, budget: int) -> float:
        """With CPU offload, windows whose KV cache and activations fit ``budget``."""
        base = self.need(mode, 0.0).decode
        for s in range(int(MAX_WINDOW_SECONDS), 0, -10):
            if self.need(mode, float(s)).decode - base <= budget:
                return float(s)
        return 10.0


# --- the plan ---------------------------------------------------------------------------------


def plan(
    config: Any,
    precision: str,
    *,
    audio_seconds: float | None,
    free_vram_bytes: int | None,
    total_vram_bytes: int | None,
    device: str,
    bf16_supported: bool = True,
    allow_cpu_offload: bool = False,
    max_new_tokens: int | None = None,
    output_tokens_per_second: float = OUTPUT_TOKENS_PER_SECOND,
    free_ram_bytes: int | None = None,
    park_encoders: bool = True,
) -> MemoryPlan:
    """Decide how to run ``precision`` ("auto" or one of :data:`QUALITY_ORDER`) on ``device``.

    On CUDA with ``free_vram_bytes`` known, a setting fits when a window of
    ``min(audio_seconds, 60 s)`` (60 s when ``audio_seconds`` is None) fits. ``auto`` takes the
    first of bf16 (if supported), fp16, int8, nf4 that fits. Within a precision the settings are
    tried in order: fp32 encoders, bf16 encoders, encoders parked on the CPU between jobs (fp32,
    then bf16), each with the config's encoder chunk before smaller ones; the first whose window
    covers the audio (an hour when ``audio_seconds`` is None) wins, else the one with the longest
    window. An explicit precision that cannot fit raises :class:`ModelDoesNotFit` unless
    ``allow_cpu_offload``. On the CPU nothing is refused: fp32 unless bf16/int8/nf4 is asked for.

    ``max_new_tokens`` caps the output budget (otherwise ``output_tokens_per_second`` x duration +
    256); ``free_ram_bytes`` only adds a note on the CPU; ``park_encoders=False`` leaves out the
    settings that move the audio encoders to the CPU between jobs (for an engine that cannot).
    """
    if precision != "auto" and precision not in QUALITY_ORDER:
        raise ValueError(
            f"unknown precision {precision!r}; expected auto or one of {QUALITY_ORDER}"
        )
    counts = count_parameters(config)
    sizer = _Sizer(config, counts, max_new_tokens, output_tokens_per_second, park_encoders)
    notes: list[str] = []
    record = {
        "requested": precision,
        "device": device,
        "free": free_vram_bytes,
        "total": total_vram_bytes,
    }

    if not device.startswith("cuda"):
        mode = _cpu_mode(precision, sizer.chunk)
        notes.extend(_cpu_notes(precision))
        window = MAX_WINDOW_SECONDS if audio_seconds is None else audio_seconds
        window = min(window, MAX_WINDOW_SECONDS)
        need = sizer.need(mode, window)
        if free_ram_bytes is not None and need.total > free_ram_bytes:
            notes.append(
                f"needs about {_gb(need.total)} GiB of RAM but {_gb(free_ram_bytes)} GiB is "
                "available; expect swapping"
            )
        notes.append("RAM is not checked on the CPU beyond this estimate")
        return _record(mode, need, window, MAX_WINDOW_SECONDS, True, False, [], notes, **record)

    required = MIN_FITTING_WINDOW_SECONDS if audio_seconds is None else audio_seconds
    required = max(1.0, min(required, MIN_FITTING_WINDOW_SECONDS))
    target = max(required, min(audio_seconds or MAX_WINDOW_SECONDS, MAX_WINDOW_SECONDS))
    if free_vram_bytes is None:
        notes.append("free VRAM unknown: the plan was not checked against the card")
    candidates = [p for p in QUALITY_ORDER if p != "bf16" or bf16_supported or precision == "bf16"]
    found = {
        p: sizer.best_fit(p, bf16_supported, free_vram_bytes, required, target) for p in candidates
    }
    fitting = [p for p in QUALITY_ORDER if found.get(p) and (p != "bf16" or bf16_supported)]

    resolved = precision
    if precision == "auto":
        resolved = next((p for p in AUTO_ORDER if p in fitting), "nf4")
    elif precision == "bf16" and not bf16_supported:
        notes.append("this GPU has no native bf16 (emulated, slow); fp16 would be faster")
    if found.get(resolved) is None and not allow_cpu_offload:
        raise _does_not_fit(
            sizer, precision, resolved, free_vram_bytes, fitting, required, bf16_supported
        )

    offload = found.get(resolved) is None
    offload_bytes = None
    if not offload:
        mode, max_window = found[resolved]
    else:  # offload allowed: the smallest setting; the KV cache gets a share of the free VRAM
        mode = sizer.modes(resolved, bf16_supported)[-1]
        free = free_vram_bytes or 0
        max_window = sizer.offload_window(mode, int(free * OFFLOAD_DYNAMIC_FRACTION))
        offload_bytes = max(0, int(free * (1 - OFFLOAD_DYNAMIC_FRACTION)) - FIXED_OVERHEAD_BYTES)
        notes.append(
            f"{resolved} needs {_gb(sizer.need(mode, required).total)} GiB but only {_gb(free)} "
            "GiB of VRAM is free: layers are offloaded to CPU RAM (much slower); keep "
            f"{OFFLOAD_DYNAMIC_FRACTION:.0%} of the free VRAM for the KV cache (max_memory)"
        )
    notes.extend(_gpu_notes(mode, sizer.chunk))
    window = max_window if audio_seconds is None else min(audio_seconds, max_window)
    need = sizer.need(mode, max(window, 1.0))
    return _record(
        mode, need, window, max_window, not offload, offload, fitting, notes,
        offload_bytes=offload_bytes, **record,
    )  # fmt: skip


def _record(
    mode: _Mode,
    need: _Need,
    window: float,
    max_window: float,
    fits: bool,
    offload: bool,
    fitting: list[str],
    notes: list[str],
    *,
    requested: str,
    device: str,
    free: int | None,
    total: int | None,
    offload_bytes: int | None = None,
) -> MemoryPlan:
    return MemoryPlan(
        precision=mode.precision,
        requested=requested,
        device=device,
        lm_dtype=mode.lm_dtype,
        encoder_dtype=mode.encoder_dtype,
        encoders_on_cpu_between_jobs=mode.parked,
        encoder_chunk_samples=mode.chunk,
        weights_bytes={**need.weights, "resident": need.resident},
        window_seconds=float(window),
        tokens=asdict(need.tokens),
        kv_cache_bytes=need.kv,
        activation_margin_bytes=max(0, need.total - need.resident - need.kv),
        phase_bytes={"encode": need.encode, "decode": need.decode},
        total_bytes=need.total,
        free_vram_bytes=free,
        total_vram_bytes=total,
        fits=fits,
        cpu_offload=offload,
        fitting_modes=list(fitting),
        max_window_seconds=float(max_window),
        notes=notes,
        offload_max_memory_bytes=offload_bytes,
        summary=_summary(
            mode.precision,
            device,
            mode.lm_dtype,
            mode.encoder_dtype,
            mode.parked,
            need.total,
            free,
            float(max_window),
        ),
    )


def _does_not_fit(
    sizer: _Sizer,
    precision: str,
    resolved: str,
    free: int | None,
    fitting: list[str],
    required: float,
    bf16_supported: bool,
) -> ModelDoesNotFit:
    free = free or 0
    needed = sizer.least(resolved, bf16_supported, required)
    if precision == "auto":
        head = f"no precision fits in {_gb(free)} GiB of free VRAM (nf4 needs {_gb(needed)} GiB)"
    else:
        head = f"{precision} needs {_gb(needed)} GiB but only {_gb(free)} GiB of VRAM is free"
    if fitting:
        best = next((p for p in AUTO_ORDER if p in fitting), fitting[0])
        message = f"{head}; modes that fit: {', '.join(fitting)}"
        hint = f"use precision {best} (or auto), or allow CPU offload (slow)"
    else:
        window = f"{required:.0f} s" if required < 60 else f"{required / 60:.0f} min"
        message = f"{head}; no precision fits a {window} audio window on this GPU"
        hint = (
            "close programs that use the GPU, transcribe shorter audio, run on the CPU "
            "(device=cpu), or allow CPU offload (slow)"
        )
    return ModelDoesNotFit(
        message,
        hint=hint,
        precision=precision,
        needed_mb=int(math.ceil(needed / MB)),
        free_mb=int(free // MB),
        fitting_modes=list(fitting),
    )


def cpu_precision(precision: str) -> str:
    """What runs on the CPU when ``precision`` is asked for: fp16 and auto run fp32."""
    return precision if precision in ("bf16", "int8", "nf4") else "fp32"


def _cpu_mode(precision: str, chunk: int) -> _Mode:
    # fp32 unless bf16 is asked for; int8/nf4 compute in fp32 too (bf16 matmuls measured ~5x slower
    # than fp32 on this CPU). Encoders always fp32: bf16 convolutions measured ~15x slower on CPU.
    resolved = cpu_precision(precision)
    return _Mode(resolved, "bf16" if precision == "bf16" else "fp32", "fp32", False, chunk)


def _cpu_notes(precision: str) -> list[str]:
    if precision == "fp16":
        return ["CPU: fp16 was requested; running fp32"]
    if precision == "bf16":
        return ["CPU bf16: the audio encoders stay fp32 (bf16 convolutions are ~15x slower on CPU)"]
    if precision == "int8":
        return ["CPU int8: bitsandbytes 8-bit runs on the CPU; it saves RAM, not time"]
    if precision == "nf4":
        return [
            "CPU nf4: bitsandbytes 4-bit runs on the CPU with the encoders, projector and lm_head "
            "left unquantized; it saves RAM, not time"
        ]
    return []


def _gpu_notes(mode: _Mode, config_chunk: int) -> list[str]:
    notes = []
    if mode.precision == "fp16":
        notes.append("fp16 is untested upstream; the audio encoders stay fp32 where memory allows")
    if mode.encoder_dtype != "fp32":
        notes.append(f"the audio encoders run in {mode.encoder_dtype} to fit (fp32 does not)")
        if mode.encoder_dtype == "fp16":
            notes.append("fp16 audio encoders are untested; watch for garbled transcripts")
    if mode.parked:
        notes.append("the audio encoders are parked on the CPU between jobs (moved in to encode)")
    if mode.chunk != config_chunk:
        notes.append(
            f"encoder chunk reduced to {mode.chunk / SAMPLE_RATE:.0f} s to fit: set "
            "config.acoustic_tokenizer_chunk_size (chunked encodings are identical)"
        )
    return notes


def _gb(n: float) -> str:
    return f"{n / GIB:.1f}"
