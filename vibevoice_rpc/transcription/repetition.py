"""Generation stuck in a loop: a per-token detector of a repeating stretch of output tokens.

Used by :mod:`vibevoice_rpc.transcription.stream` on every generated token, for local and remote runners alike.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

__all__ = ["RepetitionDetector"]


class RepetitionDetector:
    """Detects generation stuck in a loop, one token at a time.

    Stuck means: the most recent tokens are a pattern of period ``p`` (1 ≤ p ≤ ``max_period``)
    repeated without a break over a span of at least ``min_span`` tokens (``single_token_span``
    for p = 1). A transcript never does that: even when segments share their JSON skeleton, their
    times and words differ. Per token the cost is the number of earlier occurrences of that token
    within the last ``max_period`` tokens (amortized O(1) on normal text, ≤ ``max_period``).
    Once stuck it stays stuck (``push`` keeps returning True) until :meth:`reset`; ``loop_start``
    is then the index of the first token of the repeating stretch. ``current_span`` is the length
    of the longest periodic stretch ending at the last token (0 when there is none): a token
    before that stretch can no longer become part of a loop that is detected later.
    """

    def __init__(
        self, *, max_period: int = 64, min_span: int = 200, single_token_span: int = 64
    ) -> None:
        if max_period < 1 or min_span < 2 or single_token_span < 2:
            raise ValueError("max_period ≥ 1, min_span ≥ 2 and single_token_span ≥ 2 required")
        self.max_period = max_period
        self.min_span = min_span
        self.single_token_span = single_token_span
        self.reset()

    def reset(self) -> None:
        self._window: deque[int] = deque()  # the last max_period tokens
        self._where: dict[int, deque[int]] = {}  # token -> its positions inside the window
        self._runs: dict[int, int] = {}  # period -> consecutive matches ending at the last token
        self._pos = 0
        self.stuck = False
        self.period = 0
        self.span = 0
        self.loop_start = 0
        self.current_span = 0

    @property
    def tokens_seen(self) -> int:
        return self._pos

    def push(self, token_id: int) -> bool:
        """Record the next generated token; True when the output is stuck in a loop."""
        pos = self._pos
        where = self._where
        runs: dict[int, int] = {}
        best_period = 0
        best_span = 0
        longest = 0
        earlier = where.get(token_id)
        if earlier:
            old = self._runs
            for q in earlier:
                p = pos - q
                run = old.get(p, 0) + 1
                runs[p] = run
                span = run + p
                longest = max(longest, span)
                if span >= (self.single_token_span if p == 1 else self.min_span):
                    if best_period == 0 or p < best_period:  # report the fundamental period
                        best_period, best_span = p, span
        self._runs = runs
        # slide the window
        window = self._window
        window.append(token_id)
        if earlier is None:
            earlier = where[token_id] = deque()
        earlier.append(pos)
        if len(window) > self.max_period:
            gone = window.popleft()
            positions = where[gone]
            positions.popleft()
            if not positions:
                del where[gone]
        self._pos = pos + 1
        self.current_span = longest
        if best_span and not self.stuck:
            self.stuck = True
            self.period = best_period
            self.span = best_span
            self.loop_start = pos + 1 - best_span
        return self.stuck

    def extend(self, token_ids: Iterable[int]) -> bool:
        """Push several tokens; True when stuck after any of them."""
        for token in token_ids:
            self.push(int(token))
        return self.stuck
