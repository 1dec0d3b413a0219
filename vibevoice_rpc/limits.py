"""The model's own numbers, each in one place: what every wing (audio, the prompt, the pipeline, the
runners, the memory planner, the configuration) agrees on. Plain constants and one function, no
imports: the shared floor.

VibeVoice-ASR hears 24 kHz mono audio as one token per 3,200 samples (7.5 tokens a second), was
trained with a 64 K-token context and is built for up to an hour in one pass (Microsoft's model
card and vLLM plugin: ``--max-model-len 65536``; an hour is 27,000 audio tokens).
"""

from __future__ import annotations

import math

__all__ = [
    "SAMPLE_RATE",
    "AUDIO_HOP",
    "MODEL_CONTEXT_TOKENS",
    "PROMPT_OVERHEAD_TOKENS",
    "PROMPT_CONTEXT_TOKENS",
    "MAX_CONTEXT_CHARS",
    "MAX_HOTWORDS",
    "MAX_HOTWORD_CHARS",
    "OUTPUT_TOKENS_PER_SECOND",
    "OUTPUT_TOKENS_BASE",
    "MAX_WINDOW_SECONDS",
    "MIN_WINDOW_SECONDS",
    "MIN_FITTING_WINDOW_SECONDS",
    "WINDOW_OVERLAP_SECONDS",
    "output_budget",
]

# --- audio in -----------------------------------------------------------------------------------
SAMPLE_RATE = 24000  # the feature extractor refuses any other rate; every decoder resamples to it
AUDIO_HOP = 3200  # samples per audio token (7.5 audio tokens per second)

# --- the context ----------------------------------------------------------------------------------
# Prompt + new tokens never exceed the context Microsoft's server runs the model with
# (``--max-model-len 65536``): the model was trained for 64 K tokens.
MODEL_CONTEXT_TOKENS = 65536
# The prompt around the audio tokens: the chat template and instruction (~64 tokens with the real
# Qwen2 tokenizer) plus at most PROMPT_CONTEXT_TOKENS of context/hotwords.
PROMPT_OVERHEAD_TOKENS = 512
# The request's hotwords and context, built into the prompt, may take this many tokens (~1,800
# characters of English); more is -32602. The params' own limits, checked when they are decoded:
PROMPT_CONTEXT_TOKENS = 448
MAX_CONTEXT_CHARS = 2000
MAX_HOTWORDS = 100
MAX_HOTWORD_CHARS = 64

# --- the answer -----------------------------------------------------------------------------------
# The one output-budget rate, used by both runners' max_new_tokens and by the planner's KV cache:
# dense speech needs ~9-10.6 tokens/s (a 30-min meeting used 16-19 K tokens), plus headroom.
OUTPUT_TOKENS_PER_SECOND = 12.0
OUTPUT_TOKENS_BASE = 256

# --- windows --------------------------------------------------------------------------------------
MAX_WINDOW_SECONDS = 3600.0  # one pass: the model is built for <= 60 min (64 K context)
MIN_WINDOW_SECONDS = 10.0  # the shortest window a user may configure (VIBEVOICE_MAX_WINDOW_SECONDS)
MIN_FITTING_WINDOW_SECONDS = (
    60.0  # the planner: a mode "fits" when it runs windows at least this long
)
WINDOW_OVERLAP_SECONDS = 10.0  # consecutive windows share up to this much audio (speaker linking)


def output_budget(
    seconds: float,
    requested: int | None = None,
    output_tokens_per_second: float = OUTPUT_TOKENS_PER_SECOND,
) -> int:
    """``max_new_tokens`` for ``seconds`` of audio: the rate × duration + a base, capped by the
    request (the context cap is applied where the prompt's length is known)."""
    new = int(math.ceil(max(0.0, seconds) * output_tokens_per_second)) + OUTPUT_TOKENS_BASE
    if requested is not None:
        new = min(new, requested)
    return max(1, new)
