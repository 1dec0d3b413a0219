"""The real engine in process, on the tiny random-weight model: load, precisions, streaming, cancel,
OOM, long audio. Where segments are needed, tests/scripted.py forces a real-format answer through
the real generate loop (the tiny model's own words are noise)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from vibevoice_rpc.config import Config
from vibevoice_rpc.engine import Engine
from vibevoice_rpc.errors import ModelUnavailable, OutOfMemory, RequestCancelled
from vibevoice_rpc.messages import (
    STAGES,
    ReloadParams,
    TranscribeParams,
    TranscribeResult,
)
from vibevoice_rpc.protocol.dispatcher import Job

from . import scripted, speech
from .recorder import Recorder
from .scripted import ScriptedRuntime

pytestmark = [pytest.mark.model, pytest.mark.timeout(240)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only spin
    yield
    torch.set_num_threads(threads)


def run(
    engine: Engine, rec: Recorder | None = None, **params: Any
) -> tuple[TranscribeResult, Recorder]:
    rec = rec or Recorder()
    p = TranscribeParams(**params)
    job = Job("t", "transcribe", p, None, rec)
    rec.job = job
    return engine.transcribe(p, job), rec


# --- the plain pipeline -----------------------------------------------------------------------


def test_real_speech_goes_through_the_whole_pipeline(engine: Engine, speech_clip: Path) -> None:
    result, rec = run(engine, audio_path=str(speech_clip), max_new_tokens=24)
    meta = result.metadata
    assert result.status == "success"
    assert meta.duration == pytest.approx(11.5, abs=0.01)
    assert (meta.model_precision, meta.device, meta.windows) == ("fp32", "cpu", 1)
    assert 1 <= meta.generated_tokens <= 24 and meta.max_new_tokens == 24
    assert meta.processing_time > 0 and meta.plan and meta.plan.precision == "fp32"
    assert meta.num_speakers == len({s.speaker for s in result.segments})
    assert meta.language == "unknown" or len(meta.language) in (2, 3)
    # Stages arrive in the documented order (loading_model only when a load was needed).
    assert rec.stages == [s for s in STAGES if s in rec.stages]
    assert {"loading_audio", "encoding", "transcribing", "finalizing"} <= set(rec.stages)
    assert rec.progress("finalizing")[-1] == 1.0


def test_scripted_answer_streams_each_segment_before_the_result(
    engine: Engine, speech_clip: Path, script: Callable[..., None]
) -> None:
    script(scripted.real_format_answer())
    result, rec = run(engine, audio_path=str(speech_clip))
    expected = [
        ("Speaker_0", 0.0, 2.4, "Guten Morgen, Grüß Gott! 🎙"),
        ("Speaker_1", 2.4, 5.25, 'Hello, "quoted" and 我很好，谢谢。'),
        ("Speaker_0", 5.25, 8.0, "Très bien — let us start."),
        ("Speaker_1", 8.0, 11.2, "The budget is next."),
    ]
    got = [(s.speaker, s.start_time, s.end_time, s.text) for s in result.segments]
    assert got == expected
    assert [p.index for p in rec.segments] == [0, 1, 2, 3]
    assert [p.segment for p in rec.segments] == result.segments
    assert all(p.id == "t" for p in rec.segments)
    meta = result.metadata
    assert (meta.num_speakers, meta.truncated, meta.repetition_stopped) == (2, False, False)
    assert meta.warnings == []
    progress = rec.progress("transcribing")
    assert progress == sorted(progress) and progress[-1] == pytest.approx(11.2 / 11.5, abs=1e-3)
    # each segment notification comes before the final stage
    methods = [m for m, _ in rec.events]
    last_segment = max(i for i, m in enumerate(methods) if m == "segment")
    first_final = next(
        i for i, (m, p) in enumerate(rec.events) if m == "progress" and p.stage == "finalizing"
    )
    assert last_segment < first_final


def test_multibyte_characters_split_across_tokens_stream_intact(
    engine: Engine, speech_clip: Path, script: Callable[..., None]
) -> None:
    tokenizer = _tokenizer(engine, speech_clip)
    text = "Ärger 🎙🎉 über 漢字 ok"
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(text, add_special_tokens=False)]
    assert any("\ufffd" in p for p in pieces), "the test needs a character split across tokens"
    segments = [{"Start": 0, "End": 1.5, "Speaker": 3, "Content": text}]
    script(scripted.real_format_answer(segments))
    result, rec = run(engine, audio_path=str(speech_clip))
    assert [s.text for s in result.segments] == [text]
    assert rec.segments[0].segment.text == text and rec.segments[0].segment.speaker == "Speaker_3"


def test_language_is_identified_from_the_text_or_taken_from_the_request(
    engine: Engine, speech_clip: Path, script: Callable[..., None]
) -> None:
    segments = [
        {"Start": 0, "End": 5, "Speaker": 0, "Content": "Guten Morgen, wie geht es Ihnen heute?"},
        {"Start": 5, "End": 9, "Speaker": 1, "Content": "Danke, mir geht es gut. Und Ihnen?"},
    ]
    script(scripted.real_format_answer(segments))
    auto, _ = run(engine, audio_path=str(speech_clip))
    assert auto.metadata.language == "de"
    given, _ = run(engine, audio_path=str(speech_clip), language="fr")
    assert given.metadata.language == "fr"


def test_hotwords_and_context_reach_the_prompt_in_the_trained_wording(
    engine: Engine, speech_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(engine, audio_path=str(speech_clip), max_new_tokens=1)  # loaded
    processor = engine.local.loaded.processor
    prompts: list[str] = []
    real = processor.apply_transcription_request

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        prompts.append(processor.tokenizer.decode(out["input_ids"][0]))
        return out

    monkeypatch.setattr(processor, "apply_transcription_request", spy)
    result, _ = run(
        engine,
        audio_path=str(speech_clip),
        max_new_tokens=1,
        hotwords=["Trispr", "VibeVoice"],
        context="Weekly sync of the audio team.",
        language="de",
    )
    (prompt,) = prompts
    # The trained wording: context items as plain lines, no language line (the model detects it).
    duration = f"{result.metadata.duration:.2f}"
    assert prompt.endswith(
        f"<|object_ref_end|>\nThis is a {duration} seconds audio, with extra info: Trispr\n"
        "VibeVoice\nWeekly sync of the audio team.\n\nPlease transcribe it with these keys: "
        "Start time, End time, Speaker ID, Content<|im_end|>\n"
    )
    assert "Hotwords" not in prompt and "Language" not in prompt
    assert result.metadata.language == "de"


# --- output limits ---------------------------------------------------------------------------


def test_a_cut_answer_keeps_its_complete_segments_and_says_truncated(
    engine: Engine, speech_clip: Path, script: Callable[..., None]
) -> None:
    answer = scripted.real_format_answer()
    tokenizer = _tokenizer(engine, speech_clip)
    cut = answer.index('{"Start":5.25')  # the budget ends inside the third segment
    budget = len(tokenizer.encode(answer[: cut + 20], add_special_tokens=False))
    script(answer)
    result, _ = run(engine, audio_path=str(speech_clip), max_new_tokens=budget)
    assert [s.start_time for s in result.segments] == [0.0, 2.4]
    assert result.metadata.truncated is True
    assert result.metadata.generated_tokens == budget
    assert any("token budget" in w for w in result.metadata.warnings)


LOOP_START = '<|im_start|>assistant\n[{"Start":0,"End":1.5,"Speaker":0,"Content":"Hello there."},'
LOOP = '{"Start":1.5,"End":2,"Speaker":1,"Content":"' + "la " * 2000


def test_a_repetition_loop_is_stopped_when_every_recovery_loops_too(
    engine: Engine, speech_clip: Path, script: Callable[..., None]
) -> None:
    calls: list[dict[str, Any]] = []
    script(LOOP_START + LOOP, retries=[LOOP], calls=calls)
    result, rec = run(engine, audio_path=str(speech_clip), max_new_tokens=1500)
    meta = result.metadata
    assert [s.text for s in result.segments] == ["Hello there."]
    assert [p.segment.text for m, p in rec.events if m == "segment"] == ["Hello there."]
    assert meta.repetition_stopped is True and meta.loop_recoveries == 3
    assert [c["temperature"] for c in calls] == [None, 0.2, 0.3, 0.4]
    # Each of the four tries was stopped ~100 tokens in, long before the 1,500-token budget.
    assert meta.generated_tokens < 4 * 150
    assert any("3 recovery tries looped too" in w for w in meta.warnings)


def test_a_repetition_loop_is_recovered_from_the_last_complete_segment(
    engine: Engine, speech_clip: Path, script: Callable[..., None]
) -> None:
    calls: list[dict[str, Any]] = []
    rest = [
        {"Start": 1.5, "End": 4.0, "Speaker": 1, "Content": "Fine, thanks."},
        {"Start": 4.0, "End": 5.2, "Content": "[Silence]"},
        {"Start": 5.2, "End": 9.0, "Speaker": 0, "Content": "Then let us begin."},
    ]
    body = json.dumps(rest, ensure_ascii=False, separators=(",", ":"))
    script(LOOP_START + LOOP, retries=[body[1:] + "<|im_end|>"], calls=calls)
    result, rec = run(engine, audio_path=str(speech_clip), max_new_tokens=1500)
    meta = result.metadata
    texts = ["Hello there.", "Fine, thanks.", "[Silence]", "Then let us begin."]
    assert [s.text for s in result.segments] == texts
    streamed = [p for m, p in rec.events if m == "segment"]
    assert [p.segment.text for p in streamed] == texts  # nothing of the loop was ever sent
    assert [p.index for p in streamed] == [0, 1, 2, 3]
    assert (meta.loop_recoveries, meta.repetition_stopped, meta.truncated) == (1, False, False)
    assert meta.num_speakers == 2  # the [Silence] segment has no speaker and does not count
    assert [s.speaker_id for s in result.segments] == [0, 1, None, 0]
    assert any("recovery 1 of 3" in w for w in meta.warnings)
    # The retry continued after the last complete segment, sampling as Microsoft's client does.
    first, retry = calls
    assert first["do_sample"] is False
    assert retry["prompt_tail"].endswith(
        '<|im_start|>assistant\n[{"Start":0,"End":1.5,"Speaker":0,"Content":"Hello there."},'
    )
    assert (retry["do_sample"], retry["temperature"], retry["top_p"]) == (True, 0.2, 0.95)


def test_a_loop_of_whole_segments_sends_none_of_the_repeats(
    engine: Engine, speech_clip: Path, script: Callable[..., None]
) -> None:
    first = {"Start": 0, "End": 1.0, "Speaker": 0, "Content": "Are you there?"}
    a = {"Start": 1.0, "End": 2.0, "Speaker": 1, "Content": "Yes."}
    b = {"Start": 2.0, "End": 3.0, "Speaker": 0, "Content": "Good."}
    loop = [first] + [a, b] * 40
    answer = scripted.real_format_answer(loop)
    last = {"Start": 3.0, "End": 6.0, "Speaker": 1, "Content": "Shall we start?"}
    tail = json.dumps([last], separators=(",", ":"))[1:] + "<|im_end|>"
    script(answer, retries=[tail])
    result, rec = run(engine, audio_path=str(speech_clip), max_new_tokens=3000)
    texts = [s.text for s in result.segments]
    streamed = [p.segment.text for m, p in rec.events if m == "segment"]
    assert streamed == texts
    assert texts[0] == "Are you there?" and texts[-1] == "Shall we start?"
    assert len(texts) <= 4  # at most one copy of the repeating pair before the cut
    assert result.metadata.loop_recoveries == 1


def test_cancel_during_a_recovery_try_keeps_the_segments_before_the_loop(
    engine: Engine, speech_clip: Path, script: Callable[..., None]
) -> None:
    calls: list[dict[str, Any]] = []
    rec = Recorder()

    def on_step(step: int) -> None:
        if len(calls) == 2 and step == 3 and rec.job is not None:
            rec.job.cancel()  # what cancel and $/cancelRequest do

    script(LOOP_START + LOOP, retries=[LOOP], calls=calls, on_step=on_step)
    with pytest.raises(RequestCancelled) as info:
        run(engine, rec, audio_path=str(speech_clip), max_new_tokens=1500)
    assert len(calls) == 2  # stopped inside the first recovery try; no further try started
    assert [s.text for s in info.value.data["segments"]] == ["Hello there."]


def test_out_of_memory_during_a_recovery_try_is_reported(
    engine: Engine, speech_clip: Path, script: Callable[..., None]
) -> None:
    import torch

    calls: list[dict[str, Any]] = []

    def on_step(step: int) -> None:
        if len(calls) == 2 and step == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")

    script(LOOP_START + LOOP, retries=[LOOP], calls=calls, on_step=on_step)
    with pytest.raises(OutOfMemory) as info:
        run(engine, audio_path=str(speech_clip), max_new_tokens=1500)
    assert "CUDA out of memory" in info.value.message
    assert run(engine, audio_path=str(speech_clip), max_new_tokens=1)[0].metadata  # still works


def test_the_token_budget_scales_with_duration_within_the_64k_context(
    engine: Engine, tmp_path: Path
) -> None:
    from vibevoice_rpc.model.runner import token_budget

    room = 65536 - 27512  # an hour's prompt: 27,000 audio tokens + the template
    assert token_budget(1800, None, 65536) >= 18_000  # a dense half hour needs ~10 tokens/s
    assert token_budget(3600, None, room) == room  # an hour is capped by the context
    assert token_budget(60, None, 65536) < token_budget(600, None, 65536)
    assert token_budget(3600, 500, room) == 500
    path = tmp_path / "short.wav"
    sf.write(path, np.zeros(24000 * 2, np.float32), 24000)
    result, _ = run(engine, audio_path=str(path), vad=False)  # silence: the VAD would skip it
    assert result.metadata.max_new_tokens == token_budget(2.0, None, 65536) == 12 * 2 + 256


# --- cancel, OOM -------------------------------------------------------------------------------


def test_cancel_mid_generation_keeps_segments_so_far_and_the_model(
    engine: Engine, speech_clip: Path, script: Callable[..., None]
) -> None:
    def cancel_after_two(rec: Recorder, method: str, params: Any) -> None:
        if method == "segment" and params.index == 1:
            rec.job.cancel()

    script(scripted.real_format_answer())
    with pytest.raises(RequestCancelled) as info:
        run(engine, Recorder(cancel_after_two), audio_path=str(speech_clip))
    data = info.value.data
    assert data["kind"] == "cancelled"
    assert [s.start_time for s in data["segments"]] == [0.0, 2.4]
    assert engine.snapshot().model_loaded is True
    again, _ = run(engine, audio_path=str(speech_clip))
    assert len(again.segments) == 4


def test_cancel_during_encoding_stops_before_any_token(
    engine: Engine, speech_clip: Path, script: Callable[..., None]
) -> None:
    steps: list[int] = []

    def cancel_on_encoding(rec: Recorder, method: str, params: Any) -> None:
        if method == "progress" and params.stage == "encoding":
            rec.job.cancel()

    script(None, on_step=steps.append)
    with pytest.raises(RequestCancelled) as info:
        run(engine, Recorder(cancel_on_encoding), audio_path=str(speech_clip))
    assert info.value.data["segments"] == [] and steps == []


def test_cancel_during_the_prefill_stops_at_the_next_decoder_layer(
    engine: Engine, speech_clip: Path
) -> None:
    run(engine, audio_path=str(speech_clip), max_new_tokens=1)  # loaded
    layers = engine.local.loaded.model.model.language_model.layers
    rec = Recorder()
    entered: list[int] = []

    def first_layer(_module: Any, _args: Any) -> None:
        entered.append(0)
        if rec.job is not None and len(entered) == 1:  # inside the prefill's forward pass
            rec.job.cancel()

    def second_layer(_module: Any, _args: Any) -> None:
        entered.append(1)

    handles = [
        layers[0].register_forward_pre_hook(first_layer),
        layers[1].register_forward_pre_hook(second_layer),
    ]
    try:
        with pytest.raises(RequestCancelled) as info:
            run(engine, rec, audio_path=str(speech_clip))
    finally:
        for h in handles:
            h.remove()
    assert entered == [0]  # the prefill stopped inside layer 0: layer 1 never ran, no token
    assert info.value.data["segments"] == []
    assert "transcribing" not in rec.stages
    assert run(engine, audio_path=str(speech_clip), max_new_tokens=2)[0].metadata  # still serves


@pytest.mark.parametrize("kind", ["cuda", "host"])
def test_out_of_memory_mid_generation_is_reported_and_the_model_keeps_serving(
    engine: Engine, speech_clip: Path, script: Callable[..., None], kind: str
) -> None:
    import torch

    fired: list[int] = []

    def explode(step: int) -> None:
        if step == 5 and not fired:
            fired.append(step)
            if kind == "cuda":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise MemoryError()

    script(scripted.real_format_answer(), on_step=explode)
    with pytest.raises(OutOfMemory) as info:
        run(engine, audio_path=str(speech_clip))
    err = info.value
    assert err.code == -32005 and "CUDA out of memory" in err.message
    assert err.data["suggested_precision"] == "bf16" and "bf16" in err.data["hint"]
    assert engine.snapshot().model_loaded is True and engine.local.state == "idle"
    again, _ = run(engine, audio_path=str(speech_clip))
    assert len(again.segments) == 4


# --- long audio ------------------------------------------------------------------------------


def _windowed_run(
    tiny_model: Path, clip: Path, runtime: ScriptedRuntime, truth: list[tuple[float, float, str]]
) -> tuple[TranscribeResult, Recorder, int]:
    """Transcribe ``clip`` in 5 s windows; each window's scripted answer says who talks when, with
    local speaker ids numbered from 0 in order of appearance, as the real model numbers them
    (``SILENCE`` and ``NOISE`` are the model's non-speech segments, without a speaker number)."""
    from vibevoice_rpc.audio.decode import load_audio
    from vibevoice_rpc.limits import WINDOW_OVERLAP_SECONDS
    from vibevoice_rpc.transcription.speech import SpeechPlan
    from vibevoice_rpc.transcription.windowing import plan_windows, quiet_split_points

    audio = load_audio(clip)

    def splits(step: float) -> list[float]:
        points = quiet_split_points(audio.samples, 24000, step, min(30.0, step / 4))
        return [p / 24000 for p in points]

    windows = plan_windows(audio.duration, 5.0, WINDOW_OVERLAP_SECONDS, splits)
    whole = SpeechPlan.whole(len(audio.samples))  # no gap of 8 s: the clip is heard as it is
    answers = [
        scripted.real_format_answer(speech.window_answer(truth, whole, w.start, w.end))
        for w in windows
    ]
    calls = iter(answers)
    runtime.set(lambda _duration: next(calls))
    eng = Engine(
        Config(model_path=str(tiny_model), precision="fp32", offline=True, max_window_seconds=5.0),
        runtime=runtime,
    )
    try:
        result, rec = run(eng, audio_path=str(clip))
    finally:
        eng.unload(Job(None, "unload_model", None, None, None))
    return result, rec, len(windows)


def test_long_audio_is_split_into_windows_with_speakers_linked_across_them(
    tiny_model: Path,
    speech_clip: Path,
    scripted_runtime: ScriptedRuntime,
    script: Callable[..., None],  # clears the script afterwards
) -> None:
    # A conversation whose every window boundary falls where both speakers are heard.
    truth = [(0.0, 3.0, "A"), (3.0, 6.5, "B"), (6.5, 9.5, "A"), (9.5, 11.5, "B")]
    result, rec, windows = _windowed_run(tiny_model, speech_clip, scripted_runtime, truth)
    meta = result.metadata
    assert windows >= 3 and meta.windows == windows
    starts = [s.start_time for s in result.segments]
    assert starts == sorted(starts) and all(0 <= s <= meta.duration for s in starts)
    assert {s.text[0]: s.speaker for s in result.segments} == {"A": "Speaker_0", "B": "Speaker_1"}
    assert [(s.text[0], s.speaker) for s in result.segments] == [
        (s.text[0], "Speaker_0" if s.text[0] == "A" else "Speaker_1") for s in result.segments
    ]
    assert meta.num_speakers == 2
    assert not [w for w in meta.warnings if "uncertain" in w]
    # Each window's overlap is transcribed twice but every stretch is kept once.
    covered = sorted((s.start_time, s.end_time) for s in result.segments)
    assert all(a[1] <= b[0] + 0.01 for a, b in zip(covered, covered[1:], strict=False))
    assert [p.segment for p in rec.segments] == result.segments  # streamed once, in order


def test_a_speaker_who_returns_after_a_window_boundary_is_flagged_uncertain(
    tiny_model: Path,
    speech_clip: Path,
    scripted_runtime: ScriptedRuntime,
    script: Callable[..., None],  # clears the script afterwards
) -> None:
    # A is silent through the stretch window 3 shares with window 2, then talks again: nothing in
    # the transcript links the two, so the label may differ, and the metadata must say so.
    truth = [(0.0, 4.0, "A"), (4.0, 7.5, "B"), (7.5, 11.5, "A")]
    result, _, _ = _windowed_run(tiny_model, speech_clip, scripted_runtime, truth)
    labels = [s.speaker for s in result.segments if s.text[0] == "B"]
    assert len(set(labels)) == 1  # B talks across the boundaries: one label
    notes = [w for w in result.metadata.warnings if "speaker link uncertain" in w]
    later_a = [s for s in result.segments if s.text[0] == "A" and s.start_time >= 7.0]
    assert later_a and any(later_a[0].speaker in n for n in notes), result.metadata.warnings


def test_non_speech_segments_are_never_merged_into_a_speaker_across_windows(
    tiny_model: Path,
    speech_clip: Path,
    scripted_runtime: ScriptedRuntime,
    script: Callable[..., None],  # clears the script afterwards
) -> None:
    # Both speakers talk in every stretch two windows share (about 2.4-3.7, 5.8-7.1 and
    # 9.1-10.3 s); silence and noise fall inside the windows, where the old code called them
    # Speaker_0.
    truth = [
        (0.0, 1.0, "SILENCE"),
        (1.0, 2.9, "A"),
        (2.9, 3.8, "B"),
        (3.8, 4.6, "NOISE"),
        (4.6, 5.9, "A"),
        (5.9, 6.5, "B"),
        (6.5, 7.2, "A"),
        (7.2, 8.0, "SILENCE"),
        (8.0, 9.5, "B"),
        (9.5, 11.5, "A"),
    ]
    result, rec, windows = _windowed_run(tiny_model, speech_clip, scripted_runtime, truth)
    assert windows >= 3
    for s in result.segments:
        if s.text == "[Silence]":
            assert (s.speaker, s.speaker_id, s.non_speech) == ("Speaker_unknown", None, True)
        elif s.text == "[Environmental Sounds]":
            assert (s.speaker, s.speaker_id, s.non_speech) == ("Speaker_N_A", None, True)
        else:
            who = {"A": 0, "B": 1}[s.text[0]]
            assert (s.speaker, s.speaker_id, s.non_speech) == (f"Speaker_{who}", who, False)
    texts = {s.text for s in result.segments}
    assert {"[Silence]", "[Environmental Sounds]"} <= texts
    assert result.metadata.num_speakers == 2
    assert [p.segment for p in rec.segments] == result.segments


# --- precisions, reload, unload --------------------------------------------------------------


def test_reload_switches_precision_and_reports_what_runs(
    tiny_model: Path, speech_clip: Path
) -> None:
    import torch
    from bitsandbytes.nn import Linear8bitLt

    eng = Engine(Config(model_path=str(tiny_model), precision="fp16", offline=True))
    eng.warm_up()
    job = Job(None, "reload_model", None, None, None)
    try:
        # fp16 asked on a machine without CUDA: runs fp32 and says so
        res, _ = run(eng, audio_path=str(speech_clip), max_new_tokens=4)
        assert res.metadata.model_precision == "fp32" and eng.snapshot().precision == "fp32"

        msg = eng.reload(ReloadParams(precision="bf16"), job)
        assert msg.status == "success" and "precision: bf16" in msg.message
        model = eng.local.loaded.model
        assert model.lm_head.weight.dtype == torch.bfloat16
        assert next(model.model.acoustic_tokenizer_encoder.parameters()).dtype == torch.float32
        res, _ = run(eng, audio_path=str(speech_clip), max_new_tokens=4)
        assert res.metadata.model_precision == "bf16" and eng.snapshot().precision == "bf16"

        msg = eng.reload(ReloadParams(precision="int8"), job)
        assert "precision: int8" in msg.message
        model = eng.local.loaded.model
        lm = model.model.language_model
        assert any(isinstance(m, Linear8bitLt) for m in lm.modules())
        for name in (
            "acoustic_tokenizer_encoder",
            "semantic_tokenizer_encoder",
            "multi_modal_projector",
        ):
            part = getattr(model.model, name)
            assert not any(isinstance(m, Linear8bitLt) for m in part.modules())
            assert all(p.dtype == torch.float32 for p in part.parameters())
        assert not isinstance(model.lm_head, Linear8bitLt)
        res, _ = run(eng, audio_path=str(speech_clip), max_new_tokens=4)
        assert res.metadata.model_precision == "int8"

        # a transcribe that names another precision reloads first
        res, rec = run(eng, audio_path=str(speech_clip), max_new_tokens=4, precision="fp32")
        assert res.metadata.model_precision == "fp32" and "loading_model" in rec.stages
    finally:
        eng.unload(job)


def test_unload_frees_the_model(tiny_model: Path, speech_clip: Path) -> None:
    import gc
    import weakref

    eng = Engine(Config(model_path=str(tiny_model), precision="fp32", offline=True))
    eng.warm_up()
    run(eng, audio_path=str(speech_clip), max_new_tokens=2)
    ref = weakref.ref(eng.local.loaded.model)
    job = Job(None, "unload_model", None, None, None)
    assert eng.unload(job).message == "Model unloaded"
    gc.collect()
    assert ref() is None, "something still holds the unloaded model"
    snap = eng.snapshot()
    assert snap.model_loaded is False and snap.state == "idle"
    assert eng.unload(job).message == "No model was loaded"


def test_missing_model_says_where_it_looked_and_how_to_fetch_it(
    tmp_path: Path, speech_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = Engine(Config(model_path=str(tmp_path / "nope"), precision="fp32", offline=True))
    with pytest.raises(ModelUnavailable) as info:
        run(eng, audio_path=str(speech_clip))
    assert str(tmp_path / "nope") in info.value.message
    assert "hf download microsoft/VibeVoice-ASR-HF" in info.value.data["hint"]

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    eng = Engine(Config(model_path=str(cache), precision="fp32", offline=True))
    with pytest.raises(ModelUnavailable) as info:
        run(eng, audio_path=str(speech_clip))
    assert info.value.data["kind"] == "model_not_found"
    assert str(cache) in info.value.message and "offline" in info.value.message
    assert eng.snapshot().last_error == info.value.message


# --- the plan's knobs ------------------------------------------------------------------------


def test_chunked_encoding_reports_progress_per_chunk_and_changes_nothing(
    engine: Engine, speech_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(engine, audio_path=str(speech_clip), max_new_tokens=1)
    model = engine.local.loaded.model
    outputs: list[Any] = []
    real_generate = model.generate

    def spy(**kwargs: Any) -> Any:
        outputs.append(real_generate(**kwargs))
        return outputs[-1]

    monkeypatch.setattr(model, "generate", spy)
    whole = model.config.acoustic_tokenizer_chunk_size
    assert whole % 3200 == 0 and whole >= 24000 * 12  # the clip fits one chunk
    run(engine, audio_path=str(speech_clip), max_new_tokens=12)
    monkeypatch.setattr(model.config, "acoustic_tokenizer_chunk_size", 3200 * 24)  # 3.2 s: 4
    reported: list[float] = []
    real_report = Job.report

    def report(self: Job, stage: str, progress: float, message: str = "") -> None:
        if stage == "encoding":  # every report, before the 10-per-second limit thins them out
            reported.append(progress)
        real_report(self, stage, progress, message)

    monkeypatch.setattr(Job, "report", report)
    run(engine, audio_path=str(speech_clip), max_new_tokens=12)
    assert len(set(reported)) >= 4 and reported == sorted(reported)
    assert outputs[0].tolist() == outputs[1].tolist()  # chunked encoding: the same tokens


def test_parked_encoders_come_in_for_encoding_and_leave_at_the_first_token(
    engine: Engine, speech_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vibevoice_rpc.model.planner import ENCODER_MODULES

    run(engine, audio_path=str(speech_clip), max_new_tokens=1)
    loaded = engine.local.loaded
    order: list[str] = []
    for name in ENCODER_MODULES:
        module = getattr(loaded.model.model, name)
        real_to = module.to

        def to(*args: Any, _real: Any = real_to, _name: str = name, **kwargs: Any) -> Any:
            order.append(f"{_name}->{args[0] if args else kwargs}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, "to", to)

    def mark(rec: Recorder, method: str, params: Any) -> None:
        if method == "progress" and params.stage == "transcribing":
            order.append("first token")

    monkeypatch.setattr(engine.local, "loaded", dataclasses.replace(loaded, parked=True))
    run(engine, Recorder(mark), audio_path=str(speech_clip), max_new_tokens=3)
    moves = [f"{n}->cpu" for n in ENCODER_MODULES]  # device "cpu" here: the moves are the proof
    assert order == moves + ["first token"] + moves


def _tokenizer(engine: Engine, clip: Path) -> Any:
    if engine.local.loaded is None:
        run(engine, audio_path=str(clip), max_new_tokens=1)
    return engine.local.loaded.processor.tokenizer
