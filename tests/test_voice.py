"""The speaker encoder in numpy (vibevoice_rpc/voice/) against the real Resemblyzer 0.1.4.

The references in tests/data/voice/ were computed by Resemblyzer and librosa themselves
(tests/data/voice/make_reference.py, in a venv of their own) on three espeak-ng clips stored
there: the mel front end, the partial utterances' frame ranges, the embeddings with the shipped
float16 weights (the forward pass, to float32 precision) and with the original float32 ones (what
storing float16 costs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vibevoice_rpc.voice.embedding import (
    VoiceEncoder,
    cosine,
    default_encoder,
    partial_slices,
    preprocess,
    weights_path,
)
from vibevoice_rpc.voice.mel import mel_filterbank, mel_spectrogram

DATA = Path(__file__).resolve().parent / "data" / "voice"
REFERENCE = json.loads((DATA / "reference.json").read_text(encoding="utf-8"))
CLIPS = sorted(REFERENCE["clips"])
FIRST = "clip_en-us.flac"


def _clip16k(name: str) -> np.ndarray:
    wav24, rate = sf.read(DATA / name, dtype="float32")
    assert rate == 24000
    return preprocess(wav24, rate)


def test_the_mel_front_end_equals_librosas() -> None:
    wav = _clip16k(FIRST)
    assert len(wav) == REFERENCE["clips"][FIRST]["samples_16k"]
    ours = mel_spectrogram(wav)
    theirs = np.load(DATA / "mel_first_clip.npy")
    assert ours.shape == theirs.shape == (1 + len(wav) // 160, 40)
    assert ours.dtype == np.float32
    # librosa computes in float32/complex64, this in float64: equal to float32 rounding
    assert np.abs(ours - theirs).max() <= 1e-5 * theirs.max()


def test_the_mel_filters_are_slaney_triangles_up_to_nyquist() -> None:
    bank = mel_filterbank()
    assert bank.shape == (40, 201) and (bank >= 0).all()
    assert (bank.sum(axis=1) > 0).all()  # every filter sees some bins
    peaks = bank.argmax(axis=1)
    assert (np.diff(peaks) > 0).all()  # ascending, none repeated


@pytest.mark.parametrize("n", sorted(int(n) for n in REFERENCE["partial_slices"]))
def test_partial_utterances_are_cut_where_resemblyzer_cuts_them(n: int) -> None:
    assert [list(s) for s in partial_slices(n)] == REFERENCE["partial_slices"][str(n)]


def test_the_partials_of_an_utterance_equal_resemblyzers() -> None:
    wav = _clip16k(FIRST)
    slices = partial_slices(len(wav))
    padded = np.pad(wav, (0, max(0, slices[-1][1] * 160 - len(wav))))
    mel = mel_spectrogram(padded)
    ours = default_encoder().embed_partials(np.stack([mel[a:b] for a, b in slices]))
    theirs = np.array(REFERENCE["clips"][FIRST]["fp16_partials"], np.float32)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 2e-6


@pytest.mark.parametrize("name", CLIPS)
def test_embeddings_equal_resemblyzers_from_the_24_khz_audio(name: str) -> None:
    wav24, rate = sf.read(DATA / name, dtype="float32")
    ours = default_encoder().embed(wav24, rate)
    ref = REFERENCE["clips"][name]
    # the same (float16-rounded) weights in torch: equal to float32 rounding
    assert np.abs(ours - np.array(ref["fp16"])).max() < 2e-6
    # the original float32 weights: float16 storage moves the embedding by almost nothing
    assert cosine(ours, np.array(ref["fp32"])) > 0.99999
    assert np.linalg.norm(ours) == pytest.approx(1.0, abs=1e-5)


def test_a_batch_of_clips_embeds_each_as_alone() -> None:
    clips = [sf.read(DATA / name, dtype="float32") for name in CLIPS]
    rate = clips[0][1]
    short = clips[1][0][: rate * 2]  # one partial, zero-padded, next to longer ones
    batch = [clips[0][0], short, clips[2][0]]
    together = default_encoder().embed_many(batch, rate)
    alone = np.stack([default_encoder().embed(c, rate) for c in batch])
    assert together.shape == (3, 256) and np.abs(together - alone).max() < 1e-5
    assert default_encoder().embed_many([], rate).shape == (0, 256)


def test_the_three_voices_are_told_apart() -> None:
    """Not a calibration (bench/bench_linking.py --calibrate): three espeak-ng voices the encoder
    separates, each far below the same-voice threshold from the others."""
    from vibevoice_rpc.voice.embedding import SAME_VOICE

    embs = [default_encoder().embed_utterance(_clip16k(name)) for name in CLIPS]
    for i in range(3):
        for j in range(i + 1, 3):
            assert cosine(embs[i], embs[j]) < SAME_VOICE - 0.05


def test_a_short_or_silent_utterance_still_gives_a_finite_embedding() -> None:
    enc = default_encoder()
    for wav in (np.zeros(800, np.float32), np.zeros(0, np.float32), np.zeros(40_000, np.float32)):
        emb = enc.embed_utterance(wav)
        assert emb.shape == (256,) and np.isfinite(emb).all()


def test_the_shipped_weights_say_where_they_come_from() -> None:
    from safetensors import safe_open

    path = weights_path()
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        names = set(f.keys())
    assert "8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f" in meta["source"]
    assert "Apache-2.0" in meta["licence"] and meta["dtype"] == "float16"
    assert len(names) == 14 and "linear.weight" in names
    notice = path.with_name("voice_encoder.NOTICE").read_text(encoding="utf-8")
    licence = path.with_name("voice_encoder.LICENSE").read_text(encoding="utf-8")
    assert "Copyright 2019 Resemble.AI" in notice and "Apache License" in licence
    assert path.stat().st_size < 3_000_000


def test_loading_refuses_weights_of_the_wrong_shape(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(weights_path()))
    tensors["lstm.weight_hh_l1"] = tensors["lstm.weight_hh_l1"][:, :128].copy()
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="LSTM layer 1"):
        VoiceEncoder.load(tmp_path / "bad.safetensors")
