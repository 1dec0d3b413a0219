"""Make the speaker encoder's reference numbers (tests/test_voice.py compares against them).

Runs in a venv of its own with the real Resemblyzer (it cannot run in the project's: resemblyzer
drags in librosa, webrtcvad and scipy):

    python3.11 -m venv /tmp/venv-resemblyzer
    /tmp/venv-resemblyzer/bin/pip install resemblyzer==0.1.4 torch==2.13.0 "setuptools<81"
    /tmp/venv-resemblyzer/bin/python tests/data/voice/make_reference.py

(``setuptools<81``: webrtcvad imports ``pkg_resources``.) Needs ``espeak-ng`` on the PATH.

The clips (the recipe, ``CLIPS``): espeak-ng's voice and sentence, written at espeak's 22,050 Hz,
resampled to 24 kHz with soxr HQ (what the product's decoder does) and stored as 16-bit FLAC, so the
test reads the very samples the references were computed from, whatever espeak-ng it has. For each
clip the 24 kHz samples are read back and go through Resemblyzer's own functions: ``librosa.resample``
to 16 kHz, ``audio.normalize_volume(wav, -30, increase_only=True)`` (``preprocess_wav`` without its
webrtcvad trimming, which the product does not do), ``VoiceEncoder.embed_utterance``. Stored in
``reference.json``: the embedding with the original float32 weights (``fp32``) and with the same
weights rounded to float16 and back (``fp16``: what the package ships, so the numpy forward pass can
be checked to float32 precision), the partial utterances' embeddings of the first clip, and
librosa's mel spectrogram of the first clip in ``mel_first_clip.npy``, and the frame ranges of the
partial utterances Resemblyzer cuts from utterances of a few lengths (``partial_slices``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import soxr
import torch
from resemblyzer import VoiceEncoder, audio

HERE = Path(__file__).resolve().parent
CLIPS = [
    ("clip_en-us.flac", "en-us", "The quarterly budget was approved after a long discussion."),
    ("clip_en-us+f3.flac", "en-us+f3", "Please send me the slides from yesterday's meeting."),
    ("clip_en-gb-x-rp+f2.flac", "en-gb-x-rp+f2", "Can everyone hear me clearly, or should I move?"),
]


# samples at 16 kHz: none, shorter than a partial, partials' edges, long
SLICE_LENGTHS = [0, 100, 16_000, 25_599, 25_600, 37_919, 40_000, 123_457, 480_000]


def synthesize(voice: str, text: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
        wav, rate = sf.read(path, dtype="float32")
    return soxr.resample(wav, rate, 24000, quality="HQ")


def main() -> int:
    encoder = VoiceEncoder(device="cpu", verbose=False)
    rounded = VoiceEncoder(device="cpu", verbose=False)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
    out: dict = {"resemblyzer": "0.1.4", "librosa": librosa.__version__, "clips": {}}
    for index, (name, voice, text) in enumerate(CLIPS):
        sf.write(HERE / name, synthesize(voice, text), 24000, subtype="PCM_16")
        wav24, _ = sf.read(HERE / name, dtype="float32")
        wav16 = librosa.resample(wav24, orig_sr=24000, target_sr=16000)
        wav16 = audio.normalize_volume(wav16, -30, increase_only=True)
        entry = {
            "voice": voice,
            "text": text,
            "samples_16k": len(wav16),
            "fp32": encoder.embed_utterance(wav16).tolist(),
            "fp16": rounded.embed_utterance(wav16).tolist(),
        }
        if index == 0:
            _, partials, _ = rounded.embed_utterance(wav16, return_partials=True)
            entry["fp16_partials"] = partials.tolist()
            np.save(HERE / "mel_first_clip.npy", audio.wav_to_mel_spectrogram(wav16))
        out["clips"][name] = entry
    out["partial_slices"] = {
        str(n): [
            [int(m.start), int(m.stop)]
            for m in VoiceEncoder.compute_partial_slices(n, 1.3, 0.75)[1]
        ]
        for n in SLICE_LENGTHS
    }
    (HERE / "reference.json").write_text(json.dumps(out) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
