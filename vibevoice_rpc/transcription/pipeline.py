"""A whole transcription: windows over the audio, streamed segments with global speaker labels, metadata."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidParams
from ..limits import PROMPT_CONTEXT_TOKENS, SAMPLE_RATE, WINDOW_OVERLAP_SECONDS
from ..messages import Metadata, Segment, SkippedAudio, TranscribeParams, TranscribeResult
from ..voice.embedding import VoiceEncoder, default_encoder
from .prompt import build_context
from .speech import SpeechPlan
from .voices import DECIDE_SECONDS, MAX_HOLD_SECONDS, SpeakerVoices
from .windowing import (
    TimedSpeech,
    Window,
    keeps_segment,
    link_late_speaker,
    link_speakers,
    plan_windows,
    quiet_split_points,
)

if TYPE_CHECKING:
    from ..audio.decode import DecodedAudio
    from ..job import Job
    from ..messages import EngineStatus
    from .stream import Runner

__all__ = ["transcribe_audio", "no_speech_result", "NO_SPEECH_WARNING"]

NO_SPEECH_WARNING = (
    "no speech found (voice activity detection): the model was not run; send vad: false to "
    "transcribe the audio anyway"
)

log = logging.getLogger(__name__)


class _Stitcher:
    """Turns each window's local segments into global ones, streaming them as soon as they are final.

    Window 0's speaker ids are kept. A later window's segments are held back until the first one
    after the split point arrives (or the window ends): by then the shared stretch is known, its
    speakers are linked to the previous window's, and the held segments go out with global labels.
    Only numbered speakers (``speaker_id``) are linked and renumbered, and only their speech
    counts as talking; a segment without a number keeps the label the model gave it.

    With ``voices``, the link also compares voices (transcription/voices.py), and a speaker
    without a timing link (first heard after the link point, or with too little speech in the
    shared stretch for a voice) is linked by voice: their segments (and the ones after them) wait
    until ``DECIDE_SECONDS`` of their speech has arrived, for at most ``MAX_HOLD_SECONDS`` of
    audio or until the window ends; a segment of theirs this window does not keep (the next one
    has it whole) is left to the next window. At each window's end the global speakers' voices
    are learnt.
    """

    def __init__(
        self,
        job: Job,
        duration: float,
        plan: SpeechPlan,
        file_duration: float,
        voices: SpeakerVoices | None = None,
    ) -> None:
        self.job = job
        self.duration = duration  # of the model's input, whose times the windows and links use
        self.plan = plan  # what maps them to the file's, as each segment goes out
        self.file_duration = file_duration
        self.voices = voices  # over the model's input too
        self.notes: list[str] = []
        self._next_id = 0
        self._window: Window | None = None
        self._mapping: dict[int, int] | None = None
        self._buffer: list[Segment] = []
        self._speech: list[TimedSpeech] = []  # this window's segments, kept or not, global ids
        self._previous: list[TimedSpeech] = []  # the same for the previous window
        self._unlinked: set[int] = set()  # new global ids of this window not yet reported

    @property
    def segments(self) -> list[Segment]:
        """The global segments so far: the job's (one list, which cancel and errors carry too)."""
        return self.job.segments

    def start_window(self, window: Window) -> None:
        # _unlinked carries over: a new id whose segments the previous window left to this one
        # (all in the overlap) is reported when it first goes out, here
        self._window, self._buffer = window, []
        self._previous, self._speech = self._speech, []
        self._mapping = {} if window.index == 0 else None

    def add(self, local: Segment) -> None:
        window = self._window
        assert window is not None
        seg = Segment(  # in the model's input, unrounded: mapped to the file and rounded at _emit
            speaker=local.speaker,
            start_time=min(self.duration, local.start_time + window.start),
            end_time=min(self.duration, local.end_time + window.start),
            text=local.text,
            speaker_id=local.speaker_id,
            non_speech=local.non_speech,
        )
        if self._mapping is None or self._buffer or self._undecided(seg):
            self._buffer.append(seg)
            self._flush()
            return
        self._emit(seg)

    def end_window(self) -> None:
        self._flush(final=True)
        window = self._window
        if self.voices is not None and window is not None and window.next_start is not None:
            self.voices.learn(self._speech)

    def _flush(self, final: bool = False) -> None:
        """Link once the split point is passed, then send the held segments whose speakers are
        known (a speaker first heard after the link point waits for :meth:`_decide`)."""
        window = self._window
        assert window is not None
        if self._mapping is None:
            if not final and self._buffer[-1].start_time < window.core_start:
                return
            self._link()
        while self._buffer:
            seg = self._buffer[0]
            if self._undecided(seg):
                if not keeps_segment(window, seg.start_time, seg.end_time):
                    # the next window has it whole and decides who it is, with all of it
                    self._buffer.pop(0)
                    continue
                if not self._decide(seg.speaker_id, final):  # type: ignore[arg-type]
                    return
            self._emit(self._buffer.pop(0))

    def _undecided(self, seg: Segment) -> bool:
        """A later window's speaker not linked yet, whom the voice may recognise (also for a
        numbered non-speech segment such as ``[Music]``: its number must not be given a new id
        before the speaker's voice is heard)."""
        window = self._window
        return (
            self.voices is not None
            and not self.voices.failed
            and window is not None
            and window.index > 0
            and self._mapping is not None
            and seg.speaker_id is not None
            and seg.speaker_id not in self._mapping
        )

    def _decide(self, local: int, final: bool) -> bool:
        """Link ``local`` (first heard after the link point) by voice, once enough of it is held."""
        assert self.voices is not None and self._mapping is not None
        held = [
            TimedSpeech(s.speaker_id, s.start_time, s.end_time)
            for s in self._buffer
            if s.speaker_id is not None and not s.non_speech
        ]
        talk = sum(t.end - t.start for t in held if t.speaker == local)
        span = self._buffer[-1].end_time - self._buffer[0].start_time
        if not final and talk < DECIDE_SECONDS and span < MAX_HOLD_SECONDS:
            return False
        sims = self.voices.similarities(held, only=local).get(local, {})
        first = self.plan.file_time(self._buffer[0].start_time)
        where = f"at {first:.1f} s (window {self._window.index + 1})"  # type: ignore[union-attr]
        glob, note = link_late_speaker(sims, set(self._mapping.values()), self._next_id, where)
        if note:
            self.notes.append(note)
        elif not sims:
            self._unlinked.add(glob)  # no voice to go by: reported when first kept
        self._mapping[local] = glob
        self._next_id = max(self._next_id, glob + 1)
        return True

    def _link(self) -> None:
        window = self._window
        assert window is not None
        shared = (window.start, window.core_start)
        previous = [t for t in self._previous if t.end > window.start]
        current = [
            TimedSpeech(s.speaker_id, s.start_time, s.end_time)
            for s in self._buffer
            if s.speaker_id is not None and not s.non_speech
        ]
        before = self._next_id
        sims = self.voices.similarities(current) if self.voices is not None else {}
        self._mapping, notes = link_speakers(
            previous,
            current,
            shared,
            self._next_id,
            voices=sims,
            to_file=self.plan.file_time,
            wait_for_voice=self.voices is not None and not self.voices.failed,
        )
        self.notes.extend(notes)
        self._unlinked |= {
            g for loc, g in self._mapping.items() if g >= before and not sims.get(loc)
        }
        self._next_id = max([self._next_id, *(g + 1 for g in self._mapping.values())])

    def _emit(self, seg: Segment) -> None:
        window = self._window
        assert window is not None and self._mapping is not None
        glob = self._global_id(seg.speaker_id) if seg.speaker_id is not None else None
        if glob is not None and not seg.non_speech:
            self._speech.append(TimedSpeech(glob, seg.start_time, seg.end_time))
        if not keeps_segment(window, seg.start_time, seg.end_time):
            return  # the neighbouring window has it whole
        start, end = self.plan.to_file(seg.start_time, seg.end_time)
        start, end = round(start, 3), round(end, 3)
        if glob is not None and glob in self._unlinked and self.segments:
            self._unlinked.discard(glob)
            self.notes.append(
                f"speaker link uncertain: Speaker_{glob}, first heard at {start:.1f} s "
                f"(window {window.index + 1}), did not talk in the stretch shared with the "
                "previous window; it may be an earlier speaker under a new label"
            )
        label = f"Speaker_{glob}" if glob is not None else seg.speaker
        final = Segment(
            label,
            start,
            end,
            seg.text,
            speaker_id=glob,
            non_speech=seg.non_speech,
        )
        self.job.add_segment(final)
        if self.file_duration > 0:
            self.job.report("transcribing", final.end_time / self.file_duration)

    def _global_id(self, local: int) -> int:
        """The global number of this window's speaker ``local`` (a new one if not linked)."""
        window = self._window
        assert window is not None and self._mapping is not None
        if local not in self._mapping:
            self._mapping[local] = local if window.index == 0 else self._next_id
            if window.index > 0:
                self._unlinked.add(self._mapping[local])
        glob = self._mapping[local]
        self._next_id = max(self._next_id, glob + 1)
        return glob


def _check_context_tokens(runner: Runner, context: str | None) -> None:
    """Refuse context/hotwords longer than the prompt has room for (before any audio is encoded)."""
    if not context:
        return
    tokens = runner.count_tokens(context)
    if tokens > PROMPT_CONTEXT_TOKENS:
        raise InvalidParams(
            f"context and hotwords are {tokens} tokens long; the prompt has room for "
            f"{PROMPT_CONTEXT_TOKENS} (shorten them)",
            kind="prompt_too_long",
            tokens=tokens,
            max_tokens=PROMPT_CONTEXT_TOKENS,
        )


def transcribe_audio(
    runner: Runner,
    audio: DecodedAudio,
    params: TranscribeParams,
    job: Job,
    *,
    started: float,
    notes: Sequence[str] = (),
    speech: SpeechPlan | None = None,
    voice_encoder: Callable[[], VoiceEncoder] | None = default_encoder,
) -> TranscribeResult:
    """Run ``runner`` over ``audio`` (window by window when long) and build the app's result.

    ``started``: the job's ``time.monotonic()`` before the audio was decoded (processing_time
    counts from there); ``notes``: the engine's own warnings for this job (e.g. a remote fallback),
    listed after the decoder's; ``speech``: what of the audio the model hears (the voice activity
    detector's plan, :mod:`.speech`; None: all of it). Windows, prompts and speaker links work
    in the model's input; each segment's times are mapped to the file's as it goes out.
    ``voice_encoder`` gives the speaker encoder for linking speakers across windows by voice
    (:mod:`.voices`; called once, when first needed; what it raises leaves timing alone, with a
    warning); None links by timing alone (bench/bench_linking.py compares the two)."""
    from .language import detect_language
    from .parser import count_speakers, spoken_text
    from .stream import WindowRun

    info = runner.info
    plan = speech if speech is not None else SpeechPlan.whole(len(audio.samples))
    samples = plan.model_samples(audio.samples)
    duration = len(samples) / SAMPLE_RATE  # what the model hears (audio.duration without the VAD)
    pauses = plan.input_pauses()
    context = build_context(params.hotwords, params.context)
    _check_context_tokens(runner, context)

    def splits(step: float) -> list[float]:
        points = quiet_split_points(
            samples, SAMPLE_RATE, step, search_seconds=min(30.0, step / 4), pauses=pauses
        )
        return [p / SAMPLE_RATE for p in points]

    windows = plan_windows(duration, info.max_window_seconds, WINDOW_OVERLAP_SECONDS, splits)
    voices = None
    if voice_encoder is not None and len(windows) > 1:
        voices = SpeakerVoices(samples, voice_encoder)
    stitcher = _Stitcher(job, duration, plan, audio.duration, voices)
    warnings: list[str] = []
    truncated = repetition = False
    recoveries = 0
    budget_left = params.max_new_tokens
    generated = budget_total = 0
    for window in windows:
        job.check_cancelled()
        stitcher.start_window(window)
        lo, hi = round(window.start * SAMPLE_RATE), round(window.end * SAMPLE_RATE)
        label = f" (window {window.index + 1}/{len(windows)})" if len(windows) > 1 else ""
        run = WindowRun(
            samples=samples[lo:hi],
            duration=window.end - window.start,
            prompt=context,
            max_new_tokens=budget_left,
            check_cancelled=job.check_cancelled,
            is_cancelled=lambda: job.cancelled,
            on_encoding=lambda p, label=label: job.report("encoding", p, "encoding audio" + label),
            on_first_token=lambda label=label, start=window.start: job.report(
                "transcribing",
                plan.file_time(start) / audio.duration if audio.duration else 0.0,
                "transcribing" + label,
            ),
            on_segment=stitcher.add,
            park_encoders=info.park_encoders,
            start=window.start,
            on_upload=lambda p, label=label: job.report("uploading", p, "uploading audio" + label),
            to_file=plan.file_time,
        )
        result = runner.run_window(run)
        stitcher.end_window()
        generated += result.generated_tokens
        budget_total += result.max_new_tokens
        if budget_left is not None:
            budget_left = max(1, budget_left - result.generated_tokens)
        job.check_cancelled()
        truncated = truncated or result.parsed.truncated or result.budget_exhausted
        repetition = repetition or result.repetition_stopped
        recoveries += result.recoveries
        warnings.extend(label.strip() + " " + w if label else w for w in result.warnings)
        warnings.extend(result.parsed.warnings)
    job.report("finalizing", 0.0, "finalizing")
    segments = stitcher.segments
    if params.language and params.language.lower() != "auto":
        language = params.language
    else:
        language = detect_language(spoken_text(segments))
    metadata = Metadata(
        duration=round(audio.duration, 3),
        language=language,
        processing_time=round(time.monotonic() - started, 3),
        model_precision=info.precision,
        num_speakers=count_speakers(segments),
        device=info.device,
        model=info.model,
        truncated=truncated,
        repetition_stopped=repetition,
        loop_recoveries=recoveries,
        backend=info.backend,
        server=info.server,
        warnings=[
            *audio.warnings,
            *notes,
            *_plan_notes(plan),
            *warnings,
            *stitcher.notes,
            *(voices.notes if voices else []),
        ],
        windows=len(windows),
        max_new_tokens=budget_total,
        generated_tokens=generated,
        plan=info.plan,
        **_speech_fields(plan),
    )
    job.report("finalizing", 1.0, f"{len(segments)} segments")
    return TranscribeResult(segments=segments, metadata=metadata)


def _plan_notes(plan: SpeechPlan) -> list[str]:
    return [plan.note] if plan.note else []


def _speech_fields(plan: SpeechPlan) -> dict[str, Any]:
    """The metadata of what the model heard: whether the VAD ran, the speech it found, the
    seconds the model was fed and the stretches it was not."""
    speech = plan.speech_seconds
    return {
        "vad": plan.vad,
        "speech_seconds": None if speech is None else round(speech, 3),
        "model_input_seconds": round(plan.input_length / SAMPLE_RATE, 3),
        "skipped": [
            SkippedAudio(round(a / SAMPLE_RATE, 3), round(b / SAMPLE_RATE, 3))
            for a, b in plan.skipped()
        ],
    }


def no_speech_result(
    audio: DecodedAudio,
    params: TranscribeParams,
    plan: SpeechPlan,
    status: EngineStatus,
    *,
    started: float,
    notes: Sequence[str] = (),
) -> TranscribeResult:
    """The result for audio in which the VAD found no speech: no segments, a warning, and the
    metadata of the backend that would have run (``status``: nothing was loaded or asked)."""
    from .language import UNKNOWN_LANGUAGE

    if params.language and params.language.lower() != "auto":
        language = params.language
    else:
        language = UNKNOWN_LANGUAGE
    metadata = Metadata(
        duration=round(audio.duration, 3),
        language=language,
        processing_time=round(time.monotonic() - started, 3),
        model_precision=status.precision,
        num_speakers=0,
        device=status.device or "none",
        model=status.model,
        backend=status.backend,
        server=status.remote.url if status.remote else None,
        warnings=[*audio.warnings, *notes, NO_SPEECH_WARNING],
        windows=0,
        **_speech_fields(plan),
    )
    return TranscribeResult(segments=[], metadata=metadata)
