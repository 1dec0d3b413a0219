"""The user's context and hotwords → the words VibeVoice-ASR was trained to read, and their limits.

The model was fine-tuned with the context items as plain lines joined by ``\\n`` (Microsoft's ASR
fine-tuning code joins ``customized_context`` that way: names and terms, then sentences) inside::

    This is a {d:.2f} seconds audio, with extra info: {context}

    Please transcribe it with these keys: Start time, End time, Speaker ID, Content

and without context ``This is a {d:.2f} seconds audio, please transcribe it with these keys: …``.
There is no language input: the model detects the language itself, so ``language`` never enters
the prompt (it only sets ``metadata.language``). The local engine hands :func:`build_context`'s text
to the checkpoint's chat template, which writes the instruction around it; a backend that must send
the whole instruction (Microsoft's vLLM plugin) uses :func:`instruction`. No torch here.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "build_context",
    "instruction",
]

# Its limits (the built context's tokens, enforced by the pipeline; the params' characters and counts,
# checked when they are decoded) are in vibevoice_rpc.limits.

_KEYS = "Start time, End time, Speaker ID, Content"


def context_lines(hotwords: Iterable[str], context: str | None) -> list[str]:
    """The context items, one per line: each hotword (stripped, first occurrence only), then each
    non-empty line of ``context``."""
    lines: list[str] = []
    seen: set[str] = set()
    for word in hotwords:
        word = " ".join((word or "").split())  # a hotword is one line
        if word and word not in seen:
            seen.add(word)
            lines.append(word)
    for line in (context or "").splitlines():
        line = line.strip()
        if line:
            lines.append(line)
    return lines


def build_context(hotwords: Iterable[str], context: str | None) -> str | None:
    """The "extra info" text for the prompt, or None when there is nothing to add."""
    lines = context_lines(hotwords, context)
    return "\n".join(lines) if lines else None


def instruction(duration: float, context: str | None) -> str:
    """The whole user instruction for ``duration`` seconds of audio, as the model was trained."""
    if context:
        return (
            f"This is a {duration:.2f} seconds audio, with extra info: {context}\n\n"
            f"Please transcribe it with these keys: {_KEYS}"
        )
    return f"This is a {duration:.2f} seconds audio, please transcribe it with these keys: {_KEYS}"
