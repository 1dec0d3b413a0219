"""The model's answer as it streams, whatever runs the model: segments, loops, recovery tries.

:class:`SegmentStream` takes the answer token by token (ids for loop detection) and text (for the
parser), and streams each completed segment once the tokens after it show it is not part of a
repeating stretch (normally one token later), so no segment is ever taken back.
:func:`run_with_recovery` runs the tries of one window: a greedy first try and, when it gets stuck
repeating itself, up to three continuations from the last complete segment, sampled at temperature
0.2, 0.3, 0.4 (top_p 0.95, a fixed seed per try) — what Microsoft's vLLM client does
(``vllm_plugin/tests/test_api_auto_recover.py``). A runner (the local model, a remote server) only
supplies one try: :data:`TryFn`.

No torch here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..messages import MemoryPlan, Segment
from .parser import IncrementalParser, ParsedTranscript
from .repetition import RepetitionDetector

__all__ = [
    "RECOVERY_TEMPERATURES",
    "RECOVERY_TOP_P",
    "RECOVERY_SEED",
    "WindowRun",
    "WindowResult",
    "SegmentStream",
    "Try",
    "TryOutcome",
    "TryFn",
    "run_with_recovery",
    "Runner",
    "RunnerInfo",
]

log = logging.getLogger(__name__)

RECOVERY_TEMPERATURES = (0.2, 0.3, 0.4)
RECOVERY_TOP_P = 0.95
RECOVERY_SEED = 1234  # + the try's number: the same audio recovers the same way every time


@dataclass
class WindowRun:
    """What one window needs from a runner and how the runner reports back."""

    samples: np.ndarray
    duration: float
    prompt: str | None  # the context text (prompt.build_context), or None
    max_new_tokens: int | None  # what is left of the request's cap; None: the duration decides
    check_cancelled: Callable[[], None]
    is_cancelled: Callable[[], bool]
    on_encoding: Callable[[float], None]
    on_first_token: Callable[[], None]
    on_segment: Callable[[Segment], None]
    park_encoders: bool = False  # the plan keeps the audio encoders on the CPU between jobs
    start: float = 0.0  # where the window starts in the model's input (for messages)
    on_upload: Callable[[float], None] = lambda _progress: None  # a remote runner's upload
    # the file's time of a time in the model's input (they differ where the VAD left a gap out)
    to_file: Callable[[float], float] = lambda t: t


@dataclass
class WindowResult:
    parsed: ParsedTranscript
    generated_tokens: int
    budget_exhausted: bool
    repetition_stopped: bool  # every recovery try looped too
    recoveries: int = 0  # loops recovered from (or tried to)
    max_new_tokens: int = 0  # the window's output budget
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunnerInfo:
    """What ran a job, for its metadata, and how long a window it takes."""

    precision: str
    device: str
    model: str  # the checkpoint folder, or the server's model
    max_window_seconds: float
    plan: MemoryPlan | None = None
    park_encoders: bool = False
    backend: str = "local"
    server: str | None = None  # the remote server's URL (no credentials)


class Runner(Protocol):
    """What the transcription pipeline needs from whatever runs the model."""

    info: RunnerInfo

    def count_tokens(self, text: str) -> int:
        """Prompt tokens ``text`` takes (for the context limit)."""

    def run_window(self, run: WindowRun) -> WindowResult:
        """Transcribe one window, streaming segments through ``run``."""


# A segment of a restarted try that ends this close to (or before) the last kept one's end was
# already transcribed by an earlier try.
_RESUME_TOLERANCE = 0.25


class SegmentStream:
    """One try's answer: feeds the parser, holds each completed segment until it is clear of any
    repeating stretch, detects loops and cuts back to the last complete segment.

    ``prefix`` is text an earlier try already streamed (a continuation's assistant prefix): the
    parser reads it first, so the result holds its segments, but they are not sent again.
    ``carried``: segments earlier tries made final when this try starts over without a prefix (a
    server that cannot continue an answer); its own segments ending by their last end are dropped.
    """

    def __init__(
        self,
        run: WindowRun,
        *,
        prefix: str = "",
        carried: Sequence[Segment] = (),
        report_first_token: bool = True,
    ) -> None:
        self._run = run
        self._report_first_token = report_first_token
        self._parser = IncrementalParser(run.duration)
        self._detector = RepetitionDetector()
        self._text: list[str] = [prefix] if prefix else []
        if prefix:
            self._parser.feed(prefix)
        self._carried = list(carried)
        self._drop_until = max((c.end_time for c in carried), default=None)
        # Parser segments already decided (prefix, sent or dropped) and the sent/prefix ones.
        self._decided = len(self._parser.segments)
        self._kept: list[Segment] = list(self._parser.segments)
        self._held: list[tuple[int, Segment]] = []  # (tokens seen when it completed, segment)
        self.tokens = 0
        self.looping = False

    @property
    def started(self) -> bool:
        return self.tokens > 0

    def push(self, token_ids: Iterable[int]) -> None:
        """Record generated tokens (ids, or any stable int per streamed piece)."""
        for token in token_ids:
            if self.tokens == 0 and self._report_first_token:
                self._run.on_first_token()
            self.tokens += 1
            if self._detector.push(int(token)):
                self.looping = True

    def feed(self, text: str) -> None:
        """Decoded text of the tokens pushed so far (in order, any chunking)."""
        if not text:
            return
        self._text.append(text)
        for segment in self._parser.feed(text):
            self._held.append((self.tokens, segment))
        self._release()

    def end(self) -> None:
        """The try ended (stop token, budget, cancel or loop): send what is final."""
        if not self.looping:
            self._release(final=True)

    def _release(self, *, final: bool = False, before: int | None = None) -> None:
        """Send held segments that can no longer be part of a loop: completed before the current
        periodic stretch (``final``: all of them; ``before``: those completed before that token)."""
        if self.looping and before is None:
            return
        if before is None:
            before = self.tokens - self._detector.current_span
        held = self._held
        while held and (final or held[0][0] - 1 < before):
            _, segment = held.pop(0)
            self._decided += 1
            limit = self._drop_until
            if limit is not None and segment.end_time <= limit + _RESUME_TOLERANCE:
                continue  # an earlier try has it
            self._kept.append(segment)
            self._run.on_segment(segment)

    @property
    def segments(self) -> list[Segment]:
        """The segments that are final: carried from earlier tries, then this try's."""
        return self._carried + self._kept

    @property
    def kept_until(self) -> float:
        """The end time (window seconds) of the last final segment."""
        return max((s.end_time for s in self.segments), default=0.0)

    def cut(self) -> str:
        """After a loop: send the held segments that came before it, drop the rest, and return the
        text up to the last decided segment (ending ``},``), or "" when there is none."""
        self._release(before=self._detector.loop_start)
        self._held.clear()
        if self._decided == 0:
            return ""
        end = self._parser.segment_end_offsets[self._decided - 1]
        return "".join(self._text)[:end] + ","

    def finish(self) -> ParsedTranscript:
        parsed = self._parser.finish()
        return dataclasses.replace(parsed, segments=self.segments)

    @property
    def text(self) -> str:
        return "".join(self._text)


@dataclass(frozen=True)
class Try:
    """One generation pass of a window: greedy (``number`` 0) or a recovery try."""

    number: int
    prefix: str  # assistant text to continue from ("" = from the start)
    temperature: float | None  # None: greedy
    top_p: float | None
    seed: int | None
    stream: SegmentStream


@dataclass(frozen=True)
class TryOutcome:
    new_tokens: int  # generated by this try (its prefix not counted)
    budget_exhausted: bool  # it stopped at its token budget
    max_new_tokens: int  # the window's output budget, as the runner computed it


TryFn = Callable[[Try], TryOutcome]


def run_with_recovery(run: WindowRun, attempt: TryFn, *, continues: bool = True) -> WindowResult:
    """Run ``attempt`` greedily, then again while it loops (≤ 3 recovery tries).

    ``continues``: the runner can continue an answer from a prefix (the local model; a server
    whose chat template renders a final assistant message). Otherwise a recovery try starts the
    window over at the recovery temperature and the segments it repeats are dropped.
    """
    warnings: list[str] = []
    prefix = ""
    carried: list[Segment] = []
    generated = 0
    tries = 0
    while True:
        stream = SegmentStream(run, prefix=prefix, carried=carried, report_first_token=tries == 0)
        sampling = (None, None, None)
        if tries:
            sampling = (RECOVERY_TEMPERATURES[tries - 1], RECOVERY_TOP_P, RECOVERY_SEED + tries)
        outcome = attempt(Try(tries, prefix, *sampling, stream))
        generated += outcome.new_tokens
        if not stream.looping or run.is_cancelled():
            break
        cut = stream.cut()
        if continues:
            prefix = cut
        else:
            carried = stream.segments
        where = run.to_file(run.start + stream.kept_until)
        if tries == len(RECOVERY_TEMPERATURES):
            warnings.append(
                f"generation was stuck repeating itself after {where:.1f} s and {tries} recovery "
                "tries looped too; the segments before the loop are kept and the rest of this "
                "audio has no transcript"
            )
            break
        tries += 1
        how = "continued from the last complete segment" if continues else "started over"
        warnings.append(
            f"generation got stuck repeating itself after {where:.1f} s; {how} at temperature "
            f"{RECOVERY_TEMPERATURES[tries - 1]} (recovery {tries} of {len(RECOVERY_TEMPERATURES)})"
        )
        log.warning("%s", warnings[-1])
        run.check_cancelled()
    parsed = stream.finish()
    exhausted = outcome.budget_exhausted and not stream.looping
    if exhausted and parsed.truncated:
        warnings.append(
            f"output stopped at the token budget ({outcome.max_new_tokens} tokens); the "
            "transcript is truncated (raise max_new_tokens)"
        )
    return WindowResult(
        parsed=parsed,
        generated_tokens=generated,
        budget_exhausted=exhausted,
        repetition_stopped=stream.looping,
        recoveries=tries,
        max_new_tokens=outcome.max_new_tokens,
        warnings=warnings,
    )
