"""Teach the tiny model one answer, so that a hand session shows segments on the real code path.

A random-weight model under greedy decoding loops on a token: its output is never a segment list.
:func:`teach_answer` runs ≈ 17 s (one core) of plain torch optimisation (teacher forcing, cross
entropy, Adam written out here) so that ``generate(..., sample=False)`` on the real prompt — the
checkpoint's chat template rendered by the processor, any duration, with or without context —
writes :data:`ANSWER_TURN`: the real model's turn header, a two-speaker JSON segment list in the
real output format (transformers' own fixtures of the real model, tests/data/transformers_vibevoice_asr/), ``<|im_end|>`` and the eos token. The answer is the same
for every audio: its times fit the bundled 11.5 s clip and the engine clamps them to shorter audio.

What it is trained on, and why:

* prompts from the processor's own template text (placeholder, audio tokens and tokenizer exactly
  as ``apply_transcription_request`` expands them), for audio of 1–200 audio tokens (up to 27 s)
  with random durations and, half the time, context: 1–200 words as a sentence or hotword lines,
  sometimes one word over and over (the engine refuses more than 448 tokens of context);
* the audio positions get real encoder + projector outputs of a few signals (the tiny encoders'
  outputs are nearly zero for any audio: what the answer must not depend on is mostly their count);
* a long window is hours of audio tokens (27,000 for 60 min), too long to train on in seconds. The
  attention mass those tokens take is simulated instead: a float attention mask adds ln(k) to the
  scores of the audio positions (as if each were there k times, k up to 200) and, on some steps,
  of the rest of the prompt (k up to 20), so the answer learns to look past them.

200 steps (≈ 17 s of one core here) is what it takes: 160 steps, or 200 steps of two thirds the
examples, already gave a wrong answer for some context or length. :mod:`vibevoice_rpc.model.tiny` checks
the answer on real prompts before it saves the model; tests/test_tiny_answer.py checks the bundled
clip with and without context, 0.1 s to 3 min (and 60 min, marked slow), every CPU precision.

Deterministic: fixed seeds, one intra-op thread while training (reductions in another order would
change the last bits), no sampling. torch is imported inside the functions (imported by
:mod:`vibevoice_rpc.model.tiny` at build time only).
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from ..limits import AUDIO_HOP as _HOP
from ..limits import SAMPLE_RATE as _SAMPLE_RATE

__all__ = [
    "ANSWER",
    "ANSWER_SEGMENTS",
    "ANSWER_TURN",
    "answer_failures",
    "prompt_ids",
    "teach_answer",
]

log = logging.getLogger(__name__)

# Times fit the bundled 11.5 s clip; keys, key order and number style as the real model writes them.
ANSWER_SEGMENTS: tuple[dict[str, Any], ...] = (
    {
        "Start": 0,
        "End": 5.2,
        "Speaker": 0,
        "Content": "The tiny test model says this for any audio.",
    },
    {
        "Start": 5.2,
        "End": 11.04,
        "Speaker": 1,
        "Content": "Its words and times are not a transcript.",
    },
)
ANSWER = json.dumps(list(ANSWER_SEGMENTS), separators=(",", ":"), ensure_ascii=False)
# The generated turn: the real model writes its own header (the template has no generation
# prompt) and ends with <|im_end|>, a newline and <|endoftext|> (the generation config's eos).
ANSWER_TURN = "<|im_start|>assistant\n" + ANSWER + "<|im_end|>\n<|endoftext|>"

STEPS = 200
_LEARNING_RATE = 1e-2
_WARMUP = 16
_BATCH_TOKENS = 2400  # examples per step: as many of this step's length as fit
_MAX_BATCH = 8
_MAX_AUDIO_TOKENS = 200
_MAX_CONTEXT_WORDS = 200
_MAX_MASS = 200.0  # the largest simulated repeat of the audio positions (see the module doc)
_MAX_PROMPT_MASS = 20.0  # and of the other prompt tokens
_WORDS = (
    "the quick brown fox jumps over lazy dog meeting budget quarter release schedule Trispr "
    "VibeVoice Hotwords: Guten Morgen, wie geht es Ihnen? Très bien merci ¿Y usted? 0123 Alice "
    "Bob names terms Speaker time Content 12.5 seconds audio transcribe"
).split()


def _prompt_text(processor: Any, context: str | None) -> str:
    """The template's user turn with one audio placeholder token and the duration placeholder,
    as ``apply_transcription_request(tokenize=False)`` renders it."""
    import numpy as np

    texts = processor.apply_transcription_request(
        audio=np.zeros(_HOP, dtype=np.float32), prompt=context, tokenize=False
    )
    return str(texts[0])


def prompt_ids(processor: Any, template: str, samples: int) -> list[int]:
    """The prompt ids ``apply_transcription_request`` makes for ``samples`` samples of audio:
    the duration written with two decimals, the audio token repeated once per hop (rounded up)."""
    text = template.replace(processor.audio_duration_token, f"{samples / _SAMPLE_RATE:.2f}")
    audio_tokens = -(-samples // _HOP)
    text = text.replace(processor.audio_token, processor.audio_token * audio_tokens, 1)
    return list(processor.tokenizer(text, add_special_tokens=False)["input_ids"])


def _feature_bank(model: Any, processor: Any, rng: Any) -> Any:
    """Real audio-position inputs: encoder + projector outputs of noise, silence and a tone."""
    import numpy as np
    import torch

    t = np.arange(_SAMPLE_RATE * 2, dtype=np.float32)
    signals = [
        rng.standard_normal(_SAMPLE_RATE * 3).astype(np.float32) * 0.1,
        np.zeros(_SAMPLE_RATE, dtype=np.float32),
        (0.3 * np.sin(t * 2 * math.pi * 220 / _SAMPLE_RATE)).astype(np.float32),
    ]
    rows = []
    with torch.no_grad():
        for audio in signals:
            inputs = processor.apply_transcription_request(audio=audio)
            rows.append(
                model.model.get_audio_features(
                    input_values=inputs["input_values"].float(),
                    padding_mask=inputs["padding_mask"].bool(),
                    sample=False,
                ).pooler_output
            )
    return torch.cat(rows)


def _context(rng: Any) -> str | None:
    """None half the time, else words: a sentence or hotword lines, 1-200 words (sometimes one
    word over and over). The engine refuses more than 448 tokens of context."""
    if rng.random() < 0.5:
        return None
    count = int(math.exp(rng.uniform(0.0, math.log(_MAX_CONTEXT_WORDS))))
    if rng.random() < 0.2:
        words = [str(rng.choice(_WORDS))] * count
    else:
        words = [str(w) for w in rng.choice(_WORDS, count)]
    per_line = int(rng.integers(1, 12))
    return "\n".join(" ".join(words[i : i + per_line]) for i in range(0, len(words), per_line))


def _batch(
    rng: Any, processor: Any, bank: Any, target: list[int], audio_id: int, pad_id: int
) -> tuple[Any, Any, Any, Any, Any]:
    """One step's examples, all with the same number of audio tokens: ids (right-padded), where
    the answer's predictions are, their labels, the audio-position inputs, the attention mask."""
    import torch

    n = int(math.exp(rng.uniform(0.0, math.log(_MAX_AUDIO_TOKENS))))
    count = max(1, min(_MAX_BATCH, _BATCH_TOKENS // (n + 200)))  # ~200: template + answer
    rows: list[list[int]] = []
    for _ in range(count):
        samples = max(1, n * _HOP - int(rng.integers(0, _HOP)))
        rows.append(prompt_ids(processor, _prompt_text(processor, _context(rng)), samples))
    length = max(len(r) for r in rows) + len(target)
    ids = torch.full((count, length), pad_id, dtype=torch.long)
    where = []
    prompt = torch.zeros(count, length, dtype=torch.bool)  # all but the prompt's last 2 tokens
    for i, row in enumerate(rows):
        seq = row + target
        ids[i, : len(seq)] = torch.tensor(seq)
        where.append(torch.arange(len(row) - 1, len(seq) - 1) + i * length)
        prompt[i, : len(row) - 2] = True
    audio = ids == audio_id
    picks = torch.from_numpy(rng.integers(0, len(bank), int(audio.sum())))
    features = bank[picks] * float(rng.uniform(0.5, 2.0))
    # Causal mask plus, on most steps, ln(k) on the audio columns (k copies' worth of attention)
    # and on some the same for the rest of the prompt (any context, any length).
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    mask = torch.zeros(count, 1, length, length).masked_fill(
        ~causal, torch.finfo(torch.float32).min
    )
    boost = torch.zeros(count, length)
    if rng.random() < 0.6:
        boost += audio.float() * rng.uniform(0.0, math.log(_MAX_MASS))
    if rng.random() < 0.3:
        boost += (prompt & ~audio).float() * rng.uniform(0.0, math.log(_MAX_PROMPT_MASS))
    mask = mask + boost[:, None, None, :] * causal
    labels = torch.tensor(target * count)
    return ids, torch.cat(where), labels, features, mask


def teach_answer(
    model: Any, processor: Any, *, seed: int = 0, steps: int = STEPS
) -> dict[str, float]:
    """Train ``model`` (fp32, in place) to answer :data:`ANSWER_TURN`; return the figures.

    Only the language model and its head learn; the audio encoders and the projector keep their
    random weights (their outputs are what the answer must not depend on)."""
    import numpy as np
    import torch

    t0 = time.monotonic()
    tokenizer = processor.tokenizer
    target = list(tokenizer.encode(ANSWER_TURN, add_special_tokens=False))
    audio_id = int(model.config.audio_token_id)
    pad_id = int(tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    threads = torch.get_num_threads()
    # The same reductions in the same order, whatever the machine's thread setting.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rng = np.random.default_rng(seed)
            bank = _feature_bank(model, processor, rng)
            inner = model.model
            for frozen in (
                inner.acoustic_tokenizer_encoder,
                inner.semantic_tokenizer_encoder,
                inner.multi_modal_projector,
            ):
                frozen.requires_grad_(False)
            params = [p for p in model.parameters() if p.requires_grad]
            moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
            embed = model.get_input_embeddings()
            language_model = inner.language_model
            loss_value = float("nan")
            for step in range(steps):
                ids, where, labels, features, mask = _batch(
                    rng, processor, bank, target, audio_id, pad_id
                )
                inputs = embed(ids).masked_scatter((ids == audio_id).unsqueeze(-1), features)
                hidden = language_model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
                logits = model.lm_head(hidden.reshape(-1, hidden.shape[-1])[where])
                loss = torch.nn.functional.cross_entropy(logits, labels)
                for p in params:
                    p.grad = None
                loss.backward()
                _adam_step(params, moments, step, _learning_rate(step, steps))
                loss_value = float(loss.detach())
            model.requires_grad_(True)
    finally:
        torch.set_num_threads(threads)
    figures = {"steps": float(steps), "loss": loss_value, "seconds": time.monotonic() - t0}
    log.debug("taught the tiny model its answer: %s", figures)
    return figures


def _learning_rate(step: int, steps: int) -> float:
    """Linear warm-up, then a cosine down to zero."""
    if step < _WARMUP:
        return _LEARNING_RATE * (step + 1) / _WARMUP
    done = (step - _WARMUP) / max(1, steps - _WARMUP)
    return _LEARNING_RATE * 0.5 * (1.0 + math.cos(math.pi * done))


def _adam_step(params: list[Any], moments: list[tuple[Any, Any]], step: int, lr: float) -> None:
    """Adam (β 0.9/0.999, ε 1e-8), written out: torch.optim imports torch._dynamo, which a frozen
    bundle need not carry, and its fused/foreach paths may differ between builds."""
    import torch

    beta1, beta2, eps = 0.9, 0.999, 1e-8
    fix1 = 1.0 - beta1 ** (step + 1)
    fix2 = 1.0 - beta2 ** (step + 1)
    with torch.no_grad():
        for p, (m, v) in zip(params, moments, strict=True):
            if p.grad is None:
                continue
            m.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
            p.addcdiv_(m / fix1, (v / fix2).sqrt_().add_(eps), value=-lr)


def answer_failures(model: Any, processor: Any, cases: list[tuple[Any, str | None]]) -> list[str]:
    """Greedy answers of ``model`` to real prompts (audio array, context) that are not
    :data:`ANSWER_TURN`, described; empty when every case gives it."""
    import torch

    tokenizer = processor.tokenizer
    target = list(tokenizer.encode(ANSWER_TURN, add_special_tokens=False))
    failures = []
    for audio, context in cases:
        inputs = processor.apply_transcription_request(audio=audio, prompt=context)
        with torch.inference_mode():
            out = model.generate(
                **inputs, max_new_tokens=len(target) + 8, sample=False, do_sample=False
            )
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        if new != target:
            seconds = len(audio) / _SAMPLE_RATE
            text = tokenizer.decode(new)
            failures.append(f"{seconds:.2f} s, context {context!r}: {text[:120]!r}")
    return failures
