"""Audio input: every format to 24 kHz mono float32, exact durations, paths, the bad-file corpus,
limits, cancellation, the ffmpeg lookup, and where long audio is split."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vibevoice_rpc.audio import decode as audio
from vibevoice_rpc.audio import ffmpeg as audio_ffmpeg
from vibevoice_rpc.audio import libsndfile as audio_soundfile
from vibevoice_rpc.audio import paths as audio_paths
from vibevoice_rpc.audio import pyav as audio_pyav
from vibevoice_rpc.audio import sink as audio_sink
from vibevoice_rpc.audio.decode import (
    DecodedAudio,
    find_ffmpeg,
    load_audio,
)
from vibevoice_rpc.config import Config
from vibevoice_rpc.errors import AudioDecodeError, AudioFileError, AudioTooLong
from vibevoice_rpc.limits import SAMPLE_RATE as TARGET_RATE

pytestmark = pytest.mark.timeout(60)

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(
    FFMPEG is None, reason="ffmpeg not found on PATH (apt-get install ffmpeg); M4A needs it"
)
SAMPLE = Path(audio.__file__).parents[1] / "data" / "two_speakers.opus"  # the package's data/


@pytest.fixture
def no_pyav(monkeypatch):
    """As if PyAV were not installed: what the ffmpeg program's fallback path is for."""
    monkeypatch.setattr(audio_pyav, "import_av", lambda: None)


@pytest.fixture
def no_ffmpeg_program(monkeypatch, tmp_path):
    """No ffmpeg anywhere, and starting any process fails the test: decoding stays in process."""
    monkeypatch.setattr(audio, "find_ffmpeg", lambda configured=None: None)

    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(audio_ffmpeg.subprocess, "Popen", refuse)


def tone(rate: int, seconds: float, freq: float = 440.0, channels: int = 1, amp: float = 0.5):
    t = np.arange(round(rate * seconds)) / rate
    cols = [amp / (c + 1) * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]
    x = np.stack(cols, axis=1).astype(np.float32)
    return x[:, 0].copy() if channels == 1 else x


def speechlike(rate: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Tones gated on and off with noise: something lossy codecs treat like a recording."""
    rng = np.random.default_rng(seed)
    n = round(rate * seconds)
    t = np.arange(n) / rate
    env = (np.sin(2 * np.pi * 1.3 * t) > -0.3).astype(np.float32)
    base = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)
    x = (base * env).astype(np.float32)
    return x if channels == 1 else np.stack([x, 0.5 * x], axis=1)


def write_m4a(src: Path, dst: Path, *extra: str) -> Path:
    cmd = [FFMPEG, "-nostdin", "-y", "-loglevel", "error", "-i", str(src), *extra]
    subprocess.run([*cmd, "-c:a", "aac", "-b:a", "96k", str(dst)], check=True, timeout=30)
    return dst


def assert_model_ready(a: DecodedAudio) -> None:
    assert a.samples.dtype == np.float32
    assert a.samples.ndim == 1
    assert a.samples.flags.c_contiguous
    assert a.sample_rate == TARGET_RATE == 24000
    assert a.duration == len(a.samples) / TARGET_RATE
    assert np.isfinite(a.samples).all()


# --- formats --------------------------------------------------------------------------------------

FORMATS = [
    # name, kwargs for soundfile.write, rate, channels, lossless
    ("pcm16_16k.wav", {"subtype": "PCM_16"}, 16000, 1, True),
    ("pcm32_8k.wav", {"subtype": "PCM_32"}, 8000, 1, True),
    ("float_44k_stereo.wav", {"subtype": "FLOAT"}, 44100, 2, True),
    ("pcm24_48k.flac", {"subtype": "PCM_24"}, 48000, 2, True),
    ("vorbis_44k.ogg", {"format": "OGG", "subtype": "VORBIS"}, 44100, 2, False),
    ("opus_16k.opus", {"format": "OGG", "subtype": "OPUS"}, 16000, 1, False),
    ("opus_48k_stereo.opus", {"format": "OGG", "subtype": "OPUS"}, 48000, 2, False),
    ("mp3_44k.mp3", {"format": "MP3", "subtype": "MPEG_LAYER_III"}, 44100, 2, False),
    ("pcm16_24k.wav", {"subtype": "PCM_16"}, 24000, 1, True),
]


@pytest.mark.parametrize(("name", "kwargs", "rate", "channels", "lossless"), FORMATS)
def test_every_soundfile_format_decodes_to_24k_mono_float32(
    tmp_path, name, kwargs, rate, channels, lossless
):
    x = speechlike(rate, 1.7, channels)
    path = tmp_path / name
    sf.write(path, x, rate, **kwargs)
    a = load_audio(path)
    assert_model_ready(a)
    assert a.decoder == "soundfile"
    assert (a.source_rate, a.source_channels) == (rate, channels)
    assert a.warnings == []
    n_in = sf.info(str(path)).frames
    assert len(a.samples) == round(n_in * 24000 / rate)  # duration preserved to the sample
    assert abs(a.duration - 1.7) < (1e-4 if lossless else 0.03)


@needs_ffmpeg
def test_m4a_decodes_through_ffmpeg(no_pyav, tmp_path):
    wav = tmp_path / "src.wav"
    sf.write(wav, speechlike(44100, 2.0, 2), 44100)
    a = load_audio(write_m4a(wav, tmp_path / "memo.m4a"))
    assert_model_ready(a)
    assert (a.decoder, a.source_rate, a.source_channels) == ("ffmpeg", 44100, 2)
    assert a.warnings == []
    assert abs(a.duration - 2.0) < 0.03  # AAC pads to whole 1024-sample frames


@needs_ffmpeg
def test_durations_agree_across_formats_within_a_few_ms(tmp_path):
    rate = 48000  # a rate every writer here accepts, Opus included
    x = speechlike(rate, 2.5, 2)
    paths = []
    for name, kwargs, *_ in FORMATS:
        if name.endswith("24k.wav"):
            continue
        path = tmp_path / name.split("_")[0]
        path = path.with_suffix(Path(name).suffix)
        sf.write(path, x, rate, **kwargs)
        paths.append(path)
    paths.append(write_m4a(paths[0], tmp_path / "same.m4a"))
    durations = {p.name: load_audio(p).duration for p in paths}
    assert max(durations.values()) - min(durations.values()) < 0.025, durations
    assert abs(durations["pcm16.wav"] - 2.5) < 1e-9


def test_app_recording_sample_decodes(tmp_path):
    a = load_audio(SAMPLE)
    assert_model_ready(a)
    assert (a.source_rate, a.source_channels, a.decoder) == (16000, 1, "soundfile")
    assert abs(a.duration - sf.info(str(SAMPLE)).duration) < 1e-3
    assert np.sqrt(np.mean(a.samples**2)) > 0.01  # real speech, not silence


# --- content --------------------------------------------------------------------------------------


def test_resampling_keeps_a_1khz_sine_at_1khz(tmp_path):
    path = tmp_path / "sine16k.wav"
    sf.write(path, tone(16000, 2.0, 1000.0, amp=0.5), 16000, subtype="FLOAT")
    a = load_audio(path)
    assert len(a.samples) == 48000
    spectrum = np.abs(np.fft.rfft(a.samples * np.hanning(len(a.samples))))
    peak_hz = np.argmax(spectrum) * TARGET_RATE / len(a.samples)
    assert abs(peak_hz - 1000.0) <= TARGET_RATE / len(a.samples)
    middle = a.samples[2400:-2400]  # away from the resampler's edges
    assert abs(np.sqrt(np.mean(middle**2)) - 0.5 / np.sqrt(2)) < 0.005


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000])
def test_output_length_is_exactly_rounded_for_any_rate_and_odd_length(tmp_path, rate):
    n = rate * 3 // 2 + 7
    path = tmp_path / f"odd_{rate}.wav"
    sf.write(path, tone(rate, n / rate), rate, subtype="FLOAT")
    a = load_audio(path)
    assert len(a.samples) == round(n * 24000 / rate)
    # the resampled tone has no dropout at the end (the last samples are not padding)
    assert np.abs(a.samples[-200:-5]).max() > 0.3


def test_downmix_averages_the_channels(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, (24000, 3)).astype(np.float32)
    path = tmp_path / "three.wav"
    sf.write(path, x, 24000, subtype="FLOAT")  # 24 kHz: no resampling, the exact mean comes out
    a = load_audio(path)
    assert a.source_channels == 3
    np.testing.assert_allclose(a.samples, x.mean(axis=1), atol=1e-7)


def test_opposite_channels_cancel_to_silence(tmp_path):
    x = tone(16000, 1.0)
    path = tmp_path / "phase.wav"
    sf.write(path, np.stack([x, -x], axis=1), 16000, subtype="FLOAT")
    assert np.abs(load_audio(path).samples).max() < 1e-6


@pytest.mark.parametrize(
    ("subtype", "dtype", "values", "expected"),
    [
        ("PCM_16", np.int16, [0, 16384, -32768, 32767], [0.0, 0.5, -1.0, 32767 / 32768]),
        ("PCM_32", np.int32, [0, 2**30, -(2**31), 2**31 - 1], [0.0, 0.5, -1.0, 1.0]),
    ],
)
def test_integer_samples_scale_to_plus_minus_one(tmp_path, subtype, dtype, values, expected):
    path = tmp_path / f"{subtype}.wav"
    data = np.repeat(np.array(values, dtype=dtype), 100)  # 24 kHz: values pass through unchanged
    sf.write(path, data, 24000, subtype=subtype)
    a = load_audio(path)
    np.testing.assert_allclose(a.samples[::100], expected, atol=1e-6)


def test_silence_is_not_an_error(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000 * 3, np.int16), 16000)
    a = load_audio(path)
    assert a.duration == 3.0
    assert not a.samples.any()
    assert a.warnings == []


# --- long files: parallel parts -------------------------------------------------------------------


@pytest.fixture
def parallel(monkeypatch):
    """Split even short files into parts, so the parallel path runs in a fast test."""
    monkeypatch.setattr(audio_soundfile, "_PARALLEL_MIN_SECONDS", 2.0)
    monkeypatch.setattr(audio_soundfile, "_PART_MIN_SECONDS", 2.0)
    monkeypatch.setattr(audio_soundfile, "_OVERLAP_SECONDS", 0.5)
    calls = []
    real = audio_soundfile._decode_parts

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(audio_soundfile, "_decode_parts", spy)
    return calls


@pytest.mark.parametrize(
    ("name", "rate", "channels", "kwargs"),
    [
        ("p.opus", 16000, 1, {"format": "OGG", "subtype": "OPUS"}),
        ("p.flac", 44100, 2, {}),
        ("p.ogg", 22050, 1, {"format": "OGG", "subtype": "VORBIS"}),
        ("p.wav", 48000, 2, {"subtype": "PCM_16"}),
    ],
)
def test_parallel_parts_join_seamlessly(
    tmp_path, monkeypatch, parallel, name, rate, channels, kwargs
):
    path = tmp_path / name
    sf.write(path, speechlike(rate, 9.3, channels), rate, **kwargs)
    split = load_audio(path, threads=3)
    assert parallel == [True]
    whole = load_audio(path, threads=1)
    assert parallel == [True]  # the single-thread run did not take the parallel path
    assert (
        len(split.samples) == len(whole.samples) == round(sf.info(str(path)).frames * 24000 / rate)
    )
    np.testing.assert_allclose(split.samples, whole.samples, atol=2e-6)


def test_parallel_falls_back_to_one_pass_when_parts_disagree(
    tmp_path, monkeypatch, parallel, caplog
):
    path = tmp_path / "p.flac"
    sf.write(path, speechlike(16000, 8.0), 16000)
    monkeypatch.setattr(audio_soundfile, "_PROBE_TOLERANCE", -1.0)  # every seam "differs"
    with caplog.at_level(logging.WARNING, logger="vibevoice_rpc.audio.libsndfile"):
        a = load_audio(path, threads=2)
    assert parallel == [False]
    assert "one pass" in caplog.text
    assert len(a.samples) == 8 * 24000


def test_mp3_never_takes_the_parallel_path(tmp_path, monkeypatch, parallel):
    path = tmp_path / "long.mp3"
    sf.write(path, speechlike(16000, 6.0), 16000, format="MP3")
    load_audio(path, threads=3)
    assert parallel == []


def test_nan_in_a_parallel_part_is_reported(tmp_path, monkeypatch, parallel):
    x = speechlike(16000, 8.0)
    x[7 * 16000] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError) as err:
        load_audio(path, threads=3)
    assert err.value.kind == "invalid_samples"
    assert err.value.data["at_seconds"] == 7.0


# --- paths ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["Müller Besprechung 2026.wav", "日本語 会議.flac", 'a\'b "c".wav']
)
def test_unicode_and_spaced_paths(tmp_path, name):
    path = tmp_path / "Ordner mit Ümlaut" / name
    path.parent.mkdir()
    sf.write(path, tone(16000, 0.5), 16000)
    assert load_audio(path).duration == 0.5
    assert load_audio(str(path)).duration == 0.5


@needs_ffmpeg
def test_unicode_path_through_ffmpeg(no_pyav, tmp_path):
    src = tmp_path / "src.wav"
    sf.write(src, tone(16000, 1.0), 16000)
    a = load_audio(write_m4a(src, tmp_path / "Müller Besprechung 2026.m4a"))
    assert a.decoder == "ffmpeg"


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    sf.write(tmp_path / "memo.wav", tone(16000, 0.25), 16000)
    assert load_audio("~/memo.wav").duration == 0.25


def test_relative_paths_resolve_against_cwd(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "sub" / "rel.wav", tone(8000, 0.5), 8000)
    monkeypatch.chdir(tmp_path)
    assert load_audio("sub/rel.wav").duration == 0.5
    assert load_audio(Path("sub") / "rel.wav").duration == 0.5


@needs_ffmpeg
def test_name_starting_with_dash_is_not_an_ffmpeg_option(no_pyav, tmp_path, monkeypatch):
    src = tmp_path / "src.wav"
    sf.write(src, tone(16000, 1.0), 16000)
    write_m4a(src, tmp_path / "-y.m4a")
    monkeypatch.chdir(tmp_path)
    a = load_audio("-y.m4a")
    assert a.decoder == "ffmpeg"
    assert abs(a.duration - 1.0) < 0.03


def test_windows_long_paths_get_the_extended_prefix():
    long = "C:\\" + "\\".join(["ordner"] * 40) + "\\memo.opus"
    assert audio_paths._win_long_path(long) == "\\\\?\\" + long
    share = "\\\\server\\share\\" + "x" * 300
    assert audio_paths._win_long_path(share) == "\\\\?\\UNC\\server\\share\\" + "x" * 300
    assert audio_paths._win_long_path("C:\\short.wav") == "C:\\short.wav"
    assert audio_paths._win_long_path("\\\\?\\" + long) == "\\\\?\\" + long


# --- the bad-file corpus --------------------------------------------------------------------------


def _error(exc_type, path, **kwargs):
    with pytest.raises(exc_type) as err:
        load_audio(path, **kwargs)
    assert err.value.data["path"] == str(path)
    return err.value


def test_missing_file(tmp_path, monkeypatch):
    err = _error(AudioFileError, tmp_path / "nope.wav")
    assert (err.kind, err.code) == ("not_found", -32001)
    # an absolute path: no talk of a working directory, it was used as given
    assert "working directory" not in err.hint and "as given" in err.hint
    assert "looked at" not in err.message

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    err = _error(AudioFileError, "~/nope.wav")
    assert f"looked at {tmp_path / 'home' / 'nope.wav'}" in err.message
    assert "home folder" in err.hint

    monkeypatch.chdir(tmp_path)
    err = _error(AudioFileError, "sub/nope.wav")
    assert f"looked at {tmp_path / 'sub' / 'nope.wav'}" in err.message
    assert f"working directory {tmp_path}" in err.hint


def test_directory(tmp_path):
    assert _error(AudioFileError, tmp_path).kind == "is_directory"


def test_empty_file(tmp_path):
    (tmp_path / "empty.opus").write_bytes(b"")
    assert _error(AudioFileError, tmp_path / "empty.opus").kind == "empty_file"


@pytest.mark.skipif(
    os.name == "nt" or (hasattr(os, "geteuid") and os.geteuid() == 0),
    reason="root (or Windows) can read a mode-000 file",
)
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.wav"
    sf.write(path, tone(16000, 0.1), 16000)
    path.chmod(0)
    try:
        assert _error(AudioFileError, path).kind == "permission_denied"
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_permission_denied_when_access_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "locked.wav"
    sf.write(path, tone(16000, 0.1), 16000)
    monkeypatch.setattr(audio_paths.os, "access", lambda *a, **k: False)
    assert _error(AudioFileError, path).kind == "permission_denied"


def test_text_renamed_wav_is_corrupt(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("meeting notes, not audio\n" * 20)
    err = _error(AudioDecodeError, path)
    assert (err.kind, err.code) == ("corrupt", -32002)
    assert "soundfile:" in err.message


def test_random_bytes_mp3_is_corrupt_not_missing(tmp_path):
    path = tmp_path / "noise.mp3"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    err = _error(AudioDecodeError, path)
    assert err.kind == "corrupt"
    assert "not_found" not in err.kind


def test_random_bytes_with_unknown_extension_is_unsupported(tmp_path):
    path = tmp_path / "blob.xyz"
    path.write_bytes(b"\x00\x01garbage" * 100)
    assert _error(AudioDecodeError, path).kind == "unsupported_format"


def test_truncated_wav_decodes_what_is_there_with_a_warning(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, tone(16000, 2.0), 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: 44 + 16000 * 2])  # header + 1 s of the 2 s
    a = load_audio(path)
    assert abs(a.duration - 1.0) < 1e-3
    assert any("truncated" in w for w in a.warnings)


@pytest.mark.parametrize(
    ("name", "kwargs"), [("cut.flac", {}), ("cut.opus", {"format": "OGG", "subtype": "OPUS"})]
)
def test_truncated_compressed_file_warns(tmp_path, name, kwargs):
    path = tmp_path / name
    sf.write(path, speechlike(16000, 4.0), 16000, **kwargs)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    a = load_audio(path)
    assert 0.5 < a.duration < 3.5
    assert a.warnings


def test_nan_samples_are_invalid(tmp_path):
    x = tone(16000, 1.0)
    x[8000] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    err = _error(AudioDecodeError, path)
    assert err.kind == "invalid_samples"
    assert err.data["at_seconds"] == 0.5


def test_infinite_samples_are_invalid(tmp_path):
    x = tone(24000, 1.0)
    x[100] = np.inf
    path = tmp_path / "inf.wav"
    sf.write(path, x, 24000, subtype="FLOAT")
    assert _error(AudioDecodeError, path).kind == "invalid_samples"


def test_header_with_zero_samples_is_no_samples(tmp_path):
    path = tmp_path / "nothing.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    assert path.stat().st_size > 0
    assert _error(AudioDecodeError, path).kind == "no_samples"


@needs_ffmpeg
def test_video_without_audio_is_no_samples(tmp_path):
    path = tmp_path / "silent_video.mp4"
    cmd = [FFMPEG, "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i"]
    cmd += ["color=c=black:s=32x32:d=1", "-c:v", "mpeg4", str(path)]
    subprocess.run(cmd, check=True, timeout=30)
    assert _error(AudioDecodeError, path).kind == "no_samples"


def test_m4a_without_ffmpeg_says_how_to_get_it(no_pyav, tmp_path, monkeypatch):
    path = tmp_path / "memo.m4a"
    path.write_bytes(b"\x00\x00\x00\x18ftypM4A " + b"\x00" * 200)
    monkeypatch.setattr(audio, "find_ffmpeg", lambda configured=None: None)
    err = _error(AudioDecodeError, path)
    assert err.kind == "unsupported_format"
    assert "VIBEVOICE_FFMPEG" in err.hint and "ffmpeg" in err.message


def test_wav_falls_back_to_ffmpeg_when_soundfile_fails(no_pyav, tmp_path, monkeypatch):
    if FFMPEG is None:
        pytest.skip("ffmpeg not found on PATH (apt-get install ffmpeg)")
    path = tmp_path / "odd.wav"
    sf.write(path, tone(44100, 1.5, channels=2), 44100)

    def refuse(*args, **kwargs):
        raise audio_sink.NotDecoded("Format not recognised.")

    monkeypatch.setattr(audio_soundfile, "decode_soundfile", refuse)
    a = load_audio(path)
    assert (a.decoder, a.source_rate, a.source_channels) == ("ffmpeg", 44100, 2)
    assert len(a.samples) == 36000


@needs_ffmpeg
def test_both_decoders_give_the_same_samples_for_the_same_pcm(no_pyav, tmp_path, monkeypatch):
    path = tmp_path / "same.wav"
    sf.write(path, speechlike(44100, 3.0, 2), 44100, subtype="FLOAT")
    ours = load_audio(path)
    monkeypatch.setattr(audio, "_FFMPEG_FIRST_EXTS", audio._FFMPEG_FIRST_EXTS | {".wav"})
    theirs = load_audio(path)
    assert (ours.decoder, theirs.decoder) == ("soundfile", "ffmpeg")
    np.testing.assert_allclose(ours.samples, theirs.samples, atol=1e-6)


def test_nothing_is_written_to_stdout(tmp_path, capfd):
    path = tmp_path / "cut.mp3"
    sf.write(path, speechlike(16000, 3.0), 16000, format="MP3")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    load_audio(path)
    with pytest.raises(AudioDecodeError):
        (tmp_path / "x.wav").write_text("no")
        load_audio(tmp_path / "x.wav")
    assert capfd.readouterr().out == ""


# --- limits and cancel ----------------------------------------------------------------------------


def test_too_long_is_refused_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(16000 * 5, np.int16), 16000)
    # checked before decoding: reading would fail the test
    monkeypatch.setattr(audio_soundfile, "Pipeline", None)
    err = _error(AudioTooLong, path, max_seconds=2.0)
    assert (err.kind, err.code) == ("too_long", -32003)
    assert (err.data["duration"], err.data["limit"]) == (5.0, 2.0)


def test_limit_comes_from_the_argument_and_defaults_to_the_configs(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(16000 * 3, np.int16), 16000)
    assert _error(AudioTooLong, path, max_seconds=2.5).data["limit"] == 2.5
    assert load_audio(path, max_seconds=3.0).duration == 3.0
    assert audio.DEFAULT_MAX_SECONDS == Config().max_audio_seconds == 4 * 3600.0
    assert load_audio(path).duration == 3.0


def test_load_audio_reads_no_environment_variable(tmp_path, monkeypatch, parallel):
    """The settings come from config.Config (checked at start) through the arguments only."""
    path = tmp_path / "p.flac"
    sf.write(path, speechlike(16000, 8.0), 16000)
    monkeypatch.setenv("VIBEVOICE_MAX_AUDIO_SECONDS", "1")
    monkeypatch.setenv("VIBEVOICE_AUDIO_THREADS", "1")
    monkeypatch.setenv("VIBEVOICE_FFMPEG", str(tmp_path / "no-such-ffmpeg"))
    monkeypatch.setenv("PATH", str(_fake_exe(tmp_path / "onpath").parent))
    assert load_audio(path, threads=2).duration == 8.0  # not refused at 1 s
    assert parallel == [True]  # not one thread
    assert find_ffmpeg() == str(tmp_path / "onpath" / "ffmpeg")


@pytest.mark.parametrize(("threads", "parts"), [(1, None), (2, 2), (3, 3)])
def test_the_threads_setting_reaches_the_decoder(tmp_path, parallel, caplog, threads, parts):
    path = tmp_path / "p.wav"
    sf.write(path, speechlike(16000, 9.3), 16000, subtype="PCM_16")
    with caplog.at_level(logging.DEBUG, logger="vibevoice_rpc.audio.libsndfile"):
        assert load_audio(path, threads=threads).duration == 9.3
    said = [r.getMessage() for r in caplog.records if "parallel parts" in r.getMessage()]
    if parts is None:
        assert (parallel, said) == ([], [])
    else:
        assert parallel == [True]
        assert said == [f"decoding {path} in {parts} parallel parts (at most {threads} threads)"]


def test_threads_below_one_are_refused(tmp_path):
    path = tmp_path / "x.wav"
    sf.write(path, tone(16000, 0.1), 16000)
    with pytest.raises(ValueError, match="threads"):
        load_audio(path, threads=0)


@needs_ffmpeg
def test_too_long_is_caught_while_ffmpeg_decodes(no_pyav, tmp_path):
    src = tmp_path / "src.wav"
    sf.write(src, speechlike(16000, 30.0), 16000)
    err = _error(AudioTooLong, write_m4a(src, tmp_path / "long.m4a"), max_seconds=12.0)
    assert 12.0 < err.data["duration"] <= 30.1


def test_cancel_stops_decoding(tmp_path):
    path = tmp_path / "c.flac"
    sf.write(path, speechlike(16000, 35.0), 16000)
    calls = []

    def check_cancel():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        load_audio(path, check_cancel=check_cancel)
    assert len(calls) == 2


def test_cancel_stops_parallel_parts(tmp_path, monkeypatch, parallel):
    path = tmp_path / "c.opus"
    sf.write(path, speechlike(16000, 12.0), 16000, format="OGG", subtype="OPUS")

    class Cancelled(Exception):
        pass

    def check_cancel():
        raise Cancelled

    with pytest.raises(Cancelled):
        load_audio(path, threads=3, check_cancel=check_cancel)


@needs_ffmpeg
def test_cancel_kills_ffmpeg(no_pyav, tmp_path, monkeypatch):
    src = tmp_path / "src.wav"
    sf.write(src, speechlike(16000, 30.0), 16000)
    m4a = write_m4a(src, tmp_path / "c.m4a")
    procs = []
    real_popen = audio_ffmpeg.subprocess.Popen

    def spy(*args, **kwargs):
        procs.append(real_popen(*args, **kwargs))
        return procs[-1]

    monkeypatch.setattr(audio_ffmpeg.subprocess, "Popen", spy)

    def check_cancel():
        raise TimeoutError("stop")

    with pytest.raises(TimeoutError):
        load_audio(m4a, check_cancel=check_cancel)
    assert procs and procs[0].returncode is not None  # reaped, not left running


# --- ffmpeg lookup --------------------------------------------------------------------------------


def _fake_exe(folder: Path, name: str = "ffmpeg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / name
    exe.write_text("#!/bin/sh\nexit 1\n")
    exe.chmod(0o755)
    return exe


def test_find_ffmpeg_prefers_the_configured_program(tmp_path, monkeypatch):
    exe = _fake_exe(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(_fake_exe(tmp_path / "onpath").parent))
    assert find_ffmpeg(str(exe)) == str(exe)
    assert find_ffmpeg(str(exe.parent)) == str(exe)  # a folder works too
    assert find_ffmpeg(str(exe) + " ") == str(exe)  # as config.py strips it


def test_find_ffmpeg_ignores_a_wrong_configured_value(tmp_path, monkeypatch, caplog):
    # config.py refuses such a value at start; one that vanishes later is logged and skipped
    monkeypatch.setenv("PATH", str(_fake_exe(tmp_path / "onpath").parent))
    with caplog.at_level(logging.WARNING, logger="vibevoice_rpc.audio.ffmpeg"):
        assert find_ffmpeg(str(tmp_path / "missing")) == str(tmp_path / "onpath" / "ffmpeg")
    assert "VIBEVOICE_FFMPEG" in caplog.text and "missing" in caplog.text


def fake_ffmpeg(folder: Path, seconds: float = 0.5, value: float = 0.25) -> Path:
    """A stand-in "ffmpeg" that ignores its arguments and streams ``seconds`` of ``value`` at
    24 kHz as float32 WAV on stdout with unknown sizes, as the real one does into a pipe."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "ffmpeg"
    exe.write_text(
        f"#!{sys.executable}\n"
        "import struct, sys\n"
        "fmt = struct.pack('<HHIIHH', 3, 1, 24000, 96000, 4, 32)\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'RIFF' + struct.pack('<I', 0xFFFFFFFF) + b'WAVE')\n"
        "out.write(b'fmt ' + struct.pack('<I', len(fmt)) + fmt)\n"
        "out.write(b'data' + struct.pack('<I', 0xFFFFFFFF))\n"
        f"out.write(struct.pack('<f', {value}) * {round(24000 * seconds)})\n"
    )
    exe.chmod(0o755)
    return exe


@pytest.mark.skipif(os.name == "nt", reason="the stand-in ffmpeg is a script with a #! line")
def test_the_configured_ffmpeg_program_is_the_one_decoding(no_pyav, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no other ffmpeg to be found
    path = tmp_path / "memo.m4a"
    path.write_bytes(b"nothing a real decoder reads\n" * 20)
    exe = fake_ffmpeg(tmp_path / "tools")
    for configured in (exe, exe.parent):
        a = load_audio(path, ffmpeg=str(configured))
        assert (a.decoder, a.duration, a.warnings) == ("ffmpeg", 0.5, [])
        assert np.all(a.samples == np.float32(0.25))
    assert _error(AudioDecodeError, path).kind == "unsupported_format"  # none without it


def test_find_ffmpeg_looks_next_to_the_frozen_executable(tmp_path, monkeypatch):
    exe_dir = tmp_path / "app"
    _fake_exe(exe_dir)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(exe_dir / "vibevoice-rpc"))
    monkeypatch.setenv("PATH", "")
    assert find_ffmpeg() == str(exe_dir / "ffmpeg")


def test_find_ffmpeg_returns_none_when_there_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_ffmpeg() is None


def test_audio_module_does_not_import_torch():
    code = "import sys, vibevoice_rpc.audio.decode; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# --- PyAV: M4A/AAC/WebM/MP4 in process (issue #13.1) ---------------------------------------------


def write_with_pyav(path: Path, x: np.ndarray, rate: int, codec: str, fmt: str | None = None):
    """Encode ``x`` (frames, or frames x channels) with PyAV itself: no ffmpeg program needed."""
    import av

    planar = np.ascontiguousarray((x[None, :] if x.ndim == 1 else x.T), np.float32)
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono" if len(planar) == 1 else "stereo")
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=stream.layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


IN_PROCESS_FORMATS = [
    # name, codec, container, rate, channels
    ("Sound Recorder.m4a", "aac", None, 48000, 2),
    ("voice memo.mp4", "aac", None, 44100, 1),
    ("raw adts.aac", "aac", "adts", 22050, 1),
    ("browser.webm", "libopus", None, 48000, 1),
]


@pytest.mark.parametrize(("name", "codec", "fmt", "rate", "channels"), IN_PROCESS_FORMATS)
def test_m4a_aac_mp4_webm_decode_in_process_without_any_ffmpeg(
    no_ffmpeg_program, tmp_path, name, codec, fmt, rate, channels
):
    path = write_with_pyav(tmp_path / name, speechlike(rate, 2.0, channels), rate, codec, fmt)
    a = load_audio(path)
    assert_model_ready(a)
    assert (a.decoder, a.source_rate, a.source_channels) == ("pyav", rate, channels)
    assert a.warnings == []
    # PyAV's muxer writes no priming/padding info: the encoder's last partial frame stays
    assert 2.0 - 1e-3 < a.duration < 2.0 + 2 * 1024 / rate + 1e-3
    assert np.sqrt(np.mean(a.samples**2)) > 0.05


@needs_ffmpeg
def test_pyav_gives_the_ffmpeg_programs_samples_on_m4a(tmp_path, monkeypatch):
    src = tmp_path / "src.wav"
    sf.write(src, speechlike(44100, 3.0, 2), 44100)
    m4a = write_m4a(src, tmp_path / "memo.m4a")
    ours = load_audio(m4a)
    monkeypatch.setattr(audio_pyav, "import_av", lambda: None)
    theirs = load_audio(m4a)
    assert (ours.decoder, theirs.decoder) == ("pyav", "ffmpeg")
    assert len(ours.samples) == len(theirs.samples)  # edit list / priming handled alike
    np.testing.assert_allclose(ours.samples, theirs.samples, atol=1e-5)


def test_pyav_and_soundfile_give_the_same_samples_for_the_same_pcm(tmp_path, monkeypatch):
    path = tmp_path / "same.wav"
    sf.write(path, speechlike(44100, 3.0, 2), 44100, subtype="FLOAT")
    ours = load_audio(path)
    monkeypatch.setattr(audio, "_FFMPEG_FIRST_EXTS", audio._FFMPEG_FIRST_EXTS | {".wav"})
    theirs = load_audio(path)
    assert (ours.decoder, theirs.decoder) == ("soundfile", "pyav")
    np.testing.assert_allclose(ours.samples, theirs.samples, atol=1e-6)


def test_pyav_converts_integer_pcm(no_ffmpeg_program, tmp_path, monkeypatch):
    path = tmp_path / "ints.wav"
    data = np.repeat(np.array([0, 16384, -32768, 32767], np.int16), 100)
    sf.write(path, data, 24000, subtype="PCM_16")
    monkeypatch.setattr(audio, "_FFMPEG_FIRST_EXTS", audio._FFMPEG_FIRST_EXTS | {".wav"})
    a = load_audio(path)
    assert a.decoder == "pyav"
    np.testing.assert_allclose(a.samples[::100], [0.0, 0.5, -1.0, 32767 / 32768], atol=1e-6)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_pyav_converts_every_pcm_format_as_libsndfile_does(
    no_ffmpeg_program, tmp_path, monkeypatch, subtype
):
    """PyAV's frames become float32 in numpy (no swresample): the same samples as libsndfile's."""
    path = tmp_path / "pcm.wav"
    sf.write(path, np.clip(speechlike(22050, 1.0, 2) * 2.5, -1, 1), 22050, subtype=subtype)
    ours = load_audio(path)
    monkeypatch.setattr(audio, "_FFMPEG_FIRST_EXTS", audio._FFMPEG_FIRST_EXTS | {".wav"})
    theirs = load_audio(path)
    assert (ours.decoder, theirs.decoder) == ("soundfile", "pyav")
    np.testing.assert_array_equal(ours.samples, theirs.samples)


def test_wav_falls_back_to_pyav_when_soundfile_fails(no_ffmpeg_program, tmp_path, monkeypatch):
    path = tmp_path / "odd.wav"
    sf.write(path, tone(44100, 1.5, channels=2), 44100)

    def refuse(*args, **kwargs):
        raise audio_sink.NotDecoded("Format not recognised.")

    monkeypatch.setattr(audio_soundfile, "decode_soundfile", refuse)
    a = load_audio(path)
    assert (a.decoder, a.source_rate, a.source_channels) == ("pyav", 44100, 2)
    assert len(a.samples) == 36000


def test_m4a_under_a_non_ascii_path_decodes_in_process(no_ffmpeg_program, tmp_path):
    folder = tmp_path / "Aufnahmen Jürgen" / "日本語 会議"
    folder.mkdir(parents=True)
    path = write_with_pyav(folder / "-Besprechung März.m4a", tone(16000, 1.0), 16000, "aac")
    assert load_audio(path).decoder == "pyav"


def test_damaged_m4a_is_corrupt_and_prints_nothing(no_ffmpeg_program, tmp_path, capfd):
    path = write_with_pyav(tmp_path / "memo.m4a", tone(16000, 1.0), 16000, "aac")
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 3]))  # moov at the end: nothing to index
    err = _error(AudioDecodeError, path)
    assert (err.kind, err.code) == ("corrupt", -32002)
    assert "pyav:" in err.message
    assert capfd.readouterr().out == ""


def test_truncated_adts_decodes_what_is_there(no_ffmpeg_program, tmp_path, capfd):
    path = write_with_pyav(tmp_path / "cut.aac", speechlike(16000, 4.0), 16000, "aac", "adts")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 7])  # cut inside a frame
    a = load_audio(path)
    assert 1.0 < a.duration < 3.5
    assert capfd.readouterr().out == ""


def test_video_without_audio_is_no_samples_in_process(no_ffmpeg_program, tmp_path):
    import av

    path = tmp_path / "silent_video.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    assert _error(AudioDecodeError, path).kind == "no_samples"


def test_cancel_stops_pyav_and_its_thread(no_ffmpeg_program, tmp_path):
    import threading

    path = write_with_pyav(tmp_path / "c.m4a", speechlike(16000, 30.0), 16000, "aac")
    calls = []

    def check_cancel():
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        load_audio(path, check_cancel=check_cancel)
    assert len(calls) == 3
    assert not [t for t in threading.enumerate() if t.name == "audio-pyav"]


def test_too_long_is_caught_while_pyav_decodes_and_memory_stays_within_the_limit(
    no_ffmpeg_program, tmp_path, monkeypatch
):
    path = write_with_pyav(tmp_path / "long.m4a", speechlike(16000, 30.0), 16000, "aac")
    monkeypatch.setattr(audio_pyav, "_declared_seconds", lambda *a: None)  # as if nothing declared
    sizes = []
    real_append = audio_sink._Sink.append

    def spy(self, y):
        real_append(self, y)
        sizes.append(len(self.buf))

    monkeypatch.setattr(audio_sink._Sink, "append", spy)
    err = _error(AudioTooLong, path, max_seconds=12.0)
    assert 12.0 < err.data["duration"] <= 12.0 + audio_pyav._PYAV_BLOCK_SECONDS + 0.1  # + a frame
    assert "decoding stopped" in err.message
    assert sizes and max(sizes) <= 12 * TARGET_RATE + 64  # never more than the limit's output


def test_pyav_not_installed_leaves_m4a_to_the_ffmpeg_program(no_pyav, tmp_path):
    if FFMPEG is None:
        pytest.skip("ffmpeg not found on PATH (apt-get install ffmpeg)")
    path = write_with_pyav(tmp_path / "memo.m4a", tone(16000, 1.0), 16000, "aac")
    assert load_audio(path).decoder == "ffmpeg"


def test_pyav_import_does_not_print(tmp_path):
    code = (
        "import vibevoice_rpc.audio.decode, vibevoice_rpc.audio.pyav as a, sys; "
        "assert a.import_av() is not None; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout == "False\n", (out.stdout, out.stderr)


# --- decompression bombs: the declared duration first, memory bounded (issue #14.7) ---------------


@needs_ffmpeg
@pytest.mark.parametrize("decoder", ["pyav", "ffmpeg"])
def test_hours_of_silence_in_a_small_file_are_refused_before_decoding(
    tmp_path, monkeypatch, decoder
):
    path = tmp_path / "bomb.mka"
    cmd = [FFMPEG, "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i"]
    cmd += ["anullsrc=r=8000:cl=mono", "-t", "3600", "-c:a", "flac", str(path)]
    subprocess.run(cmd, check=True, timeout=60)
    assert path.stat().st_size < 2_000_000  # an hour in well under 2 MB
    for decoder in (audio_pyav, audio_ffmpeg):  # decoding would fail the test
        monkeypatch.setattr(decoder, "Pipeline", None)
    if decoder == "ffmpeg":  # PyAV only reads the header; the ffmpeg program is never started
        monkeypatch.setattr(audio_ffmpeg.subprocess, "Popen", None)
    err = _error(AudioTooLong, path, max_seconds=600.0)
    assert (err.data["duration"], err.data["limit"]) == (3600.0, 600.0)
    assert "it lasts 3600.0 s" in err.message


@needs_ffmpeg
def test_ffmpeg_program_path_keeps_memory_within_the_limit(no_pyav, tmp_path, monkeypatch):
    src = tmp_path / "src.wav"
    sf.write(src, speechlike(16000, 30.0), 16000)
    path = write_m4a(src, tmp_path / "long.m4a")
    monkeypatch.setattr(audio_ffmpeg, "_BLOCK_SECONDS", 1.0)
    sizes = []
    real_append = audio_sink._Sink.append

    def spy(self, y):
        real_append(self, y)
        sizes.append(len(self.buf))

    monkeypatch.setattr(audio_sink._Sink, "append", spy)
    err = _error(AudioTooLong, path, max_seconds=12.0)
    assert 12.0 < err.data["duration"] <= 13.1
    assert max(sizes) <= 12 * TARGET_RATE + 64


def test_sink_never_grows_past_its_cap():
    sink = audio_sink._Sink(10, cap=1000)
    for _ in range(99):
        sink.append(np.ones(10, np.float32))
    assert len(sink.buf) <= 1000
    assert len(sink.result(990)) == 990


def test_an_unknown_length_grows_by_remapping_not_copying():
    """numpy madvises huge pages on arrays of 4 MiB or more, and ndarray.resize then copies them
    (the ffmpeg program's path peaked at 1.95x a 10 min output). A sink of unknown length starts
    below that and grows 60 s at a time: at most 60 s of output beyond what it holds."""
    sink = audio_sink._Sink(0, cap=3600 * TARGET_RATE)
    assert sink.buf.nbytes < 4 * 2**20
    for _ in range(700):
        sink.append(np.ones(TARGET_RATE, np.float32))  # a second at a time
        assert len(sink.buf) - sink.n <= 60 * TARGET_RATE
    assert len(sink.result(sink.n)) == 700 * TARGET_RATE


# --- streamed FLAC: no length in the header (issue #14.3) ----------------------------------------


@pytest.fixture
def piped_flac(tmp_path):
    if FFMPEG is None:
        pytest.skip("ffmpeg not found on PATH (apt-get install ffmpeg)")
    src = tmp_path / "in.wav"
    sf.write(src, speechlike(16000, 20.0), 16000)
    out = tmp_path / "piped.flac"
    with open(
        out, "wb"
    ) as fh:  # written to a pipe: the encoder cannot seek back to fill in the length
        cmd = [FFMPEG, "-nostdin", "-loglevel", "error", "-i", str(src), "-f", "flac", "-"]
        subprocess.run(cmd, check=True, timeout=60, stdout=fh)
    assert sf.info(str(out)).frames >= 2**62  # libsndfile: unknown length (SF_COUNT_MAX)
    return out


def test_streamed_flac_without_a_length_decodes(piped_flac):
    a = load_audio(piped_flac)
    assert_model_ready(a)
    assert (a.decoder, a.duration, a.warnings) == ("pyav", 20.0, [])


def test_streamed_flac_limit_is_enforced_while_decoding(piped_flac):
    err = _error(AudioTooLong, piped_flac, max_seconds=5.0)
    assert "decoding stopped" in err.message
    assert 5.0 < err.data["duration"] <= 5.0 + audio_pyav._PYAV_BLOCK_SECONDS + 0.1  # + a frame


# --- a file that vanishes or shrinks as the parallel parts start (issue #14.4) -------------------


@pytest.mark.parametrize(
    ("change", "kind"),
    [("delete", "not_found"), ("empty", "empty_file"), ("replace_with_text", None)],
)
def test_file_changing_under_the_parallel_parts_is_a_file_error(
    tmp_path, monkeypatch, parallel, change, kind
):
    path = tmp_path / "long.wav"
    sf.write(path, speechlike(16000, 9.0), 16000, subtype="PCM_16")
    spy = audio_soundfile._decode_parts  # the `parallel` fixture's spy

    def vanish_first(*args, **kwargs):
        if change == "delete":
            path.unlink()
        elif change == "empty":
            path.write_bytes(b"")
        else:  # a new file under the old name (the caller's handle keeps the old one)
            tmp = tmp_path / "new.wav"
            tmp.write_text("not audio any more\n" * 100)
            os.replace(tmp, path)
        return spy(*args, **kwargs)

    monkeypatch.setattr(audio_soundfile, "_decode_parts", vanish_first)
    if kind is None:  # the open handle still reads the original: decoded from it, in one pass
        a = load_audio(path, threads=3)
        assert a.duration == 9.0
        assert parallel == [False]
        return
    err = _error(AudioFileError, path, threads=3)
    assert (err.kind, err.code) == (kind, -32001)
    assert parallel == [False]


def test_file_truncated_under_the_parallel_parts_decodes_what_is_left(
    tmp_path, monkeypatch, parallel
):
    path = tmp_path / "long.flac"
    sf.write(path, speechlike(16000, 9.0), 16000)
    spy = audio_soundfile._decode_parts

    def truncate_first(*args, **kwargs):
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size // 3)
        return spy(*args, **kwargs)

    monkeypatch.setattr(audio_soundfile, "_decode_parts", truncate_first)
    a = load_audio(path, threads=3)
    assert parallel == [False]
    assert 0.5 < a.duration < 6.0
    assert any("truncated" in w for w in a.warnings)


# --- odd but valid WAVs (issue #14.6) -------------------------------------------------------------


@pytest.mark.parametrize("rate", [1, 2, 3])
def test_a_few_hertz_wav_of_a_minute_is_refused_not_a_crash(tmp_path, rate):
    """Issue #14.6 made these decode instead of crashing (``-32603 zero-size array``); issue
    #19.6 refuses them with a specific error: no speech survives below 1 kHz, and a 1 Hz file is
    stretched 24,000-fold into hours of transcription."""
    path = tmp_path / f"{rate}hz.wav"
    sf.write(path, np.tile(np.float32([0.5, -0.5, 0.25]), 40 * rate)[: 70 * rate], rate)
    err = _error(AudioDecodeError, path, threads=2)  # would take the parallel path otherwise
    assert (err.code, err.kind, err.data["sample_rate"]) == (
        -32002,
        "unsupported_sample_rate",
        rate,
    )


@pytest.mark.parametrize("rate", [24000, 44100])
def test_huge_finite_float_samples_are_not_invalid(tmp_path, rate):
    x = np.full((rate, 2), 3e38, np.float32)
    x[::2] *= -1
    x[:, 1] *= 0.9
    path = tmp_path / "loud.wav"
    sf.write(path, x, rate, subtype="FLOAT")
    a = load_audio(path)
    assert_model_ready(a)  # finite, and small enough to square in float32
    assert a.duration == 1.0
    assert float(np.dot(a.samples, a.samples)) < np.finfo(np.float32).max
    assert a.warnings and "scaled" in a.warnings[0]
    if rate == 24000:  # no resampling: the average, scaled by 2^-80
        expected = (x[:, 0].astype(np.float64) + x[:, 1]) / 2 * 2.0**-80
        np.testing.assert_allclose(a.samples, expected, rtol=1e-6)


def test_huge_samples_in_a_parallel_part_are_scaled_too(tmp_path, monkeypatch, parallel):
    x = speechlike(16000, 8.0, 2)
    x[5 * 16000 : 5 * 16000 + 100] = 3e38
    path = tmp_path / "loud.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    a = load_audio(path, threads=3)
    assert_model_ready(a)
    assert a.duration == 8.0 and a.warnings


def test_stereo_nan_is_still_invalid_after_the_overflow_check(tmp_path):
    x = tone(16000, 1.0, channels=2)
    x[4000, 1] = np.nan
    path = tmp_path / "nan2.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    err = _error(AudioDecodeError, path)
    assert err.kind == "invalid_samples" and err.data["at_seconds"] == 0.25


# --- a rate that changes midway, odd rates and channel counts (issue #19.6) -----------------------


def _adts(path: Path, x: np.ndarray, rate: int, channels: int = 1) -> bytes:
    if channels == 2:
        x = np.stack([x, 0.5 * x], axis=1)
    return write_with_pyav(path, x, rate, "aac", "adts").read_bytes()


def _joined_adts(tmp_path: Path, parts: list[tuple[int, int, float]]) -> tuple[Path, list[Path]]:
    """ADTS streams at different rates (and channel counts) joined byte for byte: what a tool
    that concatenates AAC clips writes. Returns the joined file and the parts."""
    files, data = [], b""
    for i, (rate, channels, seconds) in enumerate(parts):
        part = tmp_path / f"part{i}.aac"
        data += _adts(part, speechlike(rate, seconds, seed=i), rate, channels)
        files.append(part)
    joined = tmp_path / "joined.aac"
    joined.write_bytes(data)
    return joined, files


def test_adts_whose_rate_changes_midway_decodes_each_part_at_its_own_rate(
    no_ffmpeg_program, tmp_path
):
    joined, files = _joined_adts(tmp_path, [(16000, 1, 3.0), (44100, 1, 2.0), (16000, 1, 1.5)])
    alone = [load_audio(f) for f in files]
    a = load_audio(joined)  # was -32603: "Frame does not match AudioResampler setup"
    assert_model_ready(a)
    assert (a.decoder, a.source_rate) == ("pyav", 16000)
    # each part is round(n * 24000 / its rate) samples: the sum, to the sample
    assert len(a.samples) == sum(len(p.samples) for p in alone)
    assert a.duration == pytest.approx(sum(p.duration for p in alone), abs=1 / TARGET_RATE)
    # the first part ends as a file of its own does: the same samples
    np.testing.assert_array_equal(a.samples[: len(alone[0].samples)], alone[0].samples)
    assert a.warnings == [
        "the sample rate changes 2 times midway (16000 -> 44100 -> 16000 Hz): each part was "
        "resampled to 24 kHz from its own rate"
    ]


def test_adts_whose_rate_and_layout_change_midway_decodes(no_ffmpeg_program, tmp_path):
    joined, files = _joined_adts(tmp_path, [(22050, 2, 2.0), (8000, 1, 2.0)])
    alone = [load_audio(f) for f in files]
    a = load_audio(joined)
    assert (a.source_rate, a.source_channels) == (22050, 2)
    assert len(a.samples) == sum(len(p.samples) for p in alone)
    assert a.warnings and "22050 -> 8000 Hz" in a.warnings[0]


@needs_ffmpeg
def test_the_ffmpeg_program_decodes_a_rate_change_within_a_frame(no_pyav, tmp_path):
    """The fallback: ffmpeg converts later parts to the first part's rate itself (we cannot see
    the change); the duration is still the sum within one AAC frame (1024 samples)."""
    joined, files = _joined_adts(tmp_path, [(16000, 1, 3.0), (44100, 1, 2.0), (16000, 1, 1.5)])
    alone = [load_audio(f) for f in files]
    a = load_audio(joined)
    assert a.decoder == "ffmpeg"
    assert a.duration == pytest.approx(sum(p.duration for p in alone), abs=1024 / 16000)


def test_the_limit_counts_seconds_across_rate_changes(no_ffmpeg_program, tmp_path):
    joined, _ = _joined_adts(tmp_path, [(16000, 1, 3.0), (44100, 1, 3.0)])
    err = _error(AudioTooLong, joined, max_seconds=4.5)
    assert 4.5 < err.data["duration"] <= 6.2
    assert "decoding stopped" in err.message


def test_pipeline_resamples_each_part_from_its_own_rate():
    pipe = audio_sink.Pipeline(16000, 1, 100, 60.0, "x.aac")
    pipe.feed(np.full(16001, 0.25, np.float32))
    pipe.feed(np.full(44101, 0.25, np.float32), rate=44100)
    pipe.feed(np.full(8003, 0.25, np.float32), rate=8000)
    out = pipe.finish()
    assert len(out) == round(16001 * 1.5) + round(44101 * 24000 / 44100) + round(8003 * 3)
    assert pipe.rates == [16000, 44100, 8000]
    assert pipe.seconds == pytest.approx(16001 / 16000 + 44101 / 44100 + 8003 / 8000)
    mid = out[30000:40000]  # inside the second part: the level survives the change
    np.testing.assert_allclose(mid, 0.25, atol=1e-3)


def test_nan_in_a_later_part_is_placed_in_file_time():
    pipe = audio_sink.Pipeline(16000, 1, 100, 60.0, "x.aac")
    pipe.feed(np.zeros(32000, np.float32))  # 2 s
    block = np.zeros(44100, np.float32)
    block[22050] = np.nan  # 0.5 s into the 44.1 kHz part
    with pytest.raises(AudioDecodeError) as info:
        pipe.feed(block, rate=44100)
    assert info.value.data["at_seconds"] == 2.5


def test_a_rate_that_changes_to_one_hertz_midway_is_refused():
    pipe = audio_sink.Pipeline(16000, 1, 100, 60.0, "x.aac")
    pipe.feed(np.zeros(16000, np.float32))
    with pytest.raises(AudioDecodeError) as info:
        pipe.feed(np.zeros(10, np.float32), rate=1)
    assert (info.value.kind, info.value.data["sample_rate"]) == ("unsupported_sample_rate", 1)


def _wav_header(path: Path, rate: int, channels: int, frames: int) -> Path:
    """A 16-bit PCM WAV with any header values (soundfile refuses to write some of them)."""
    import struct

    data = bytes(frames * channels * 2)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * channels * 2) % 2**32, channels * 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def _decode_with(decoder: str, path: Path, monkeypatch):
    """``load_audio`` through one decoder: soundfile, PyAV or the ffmpeg program."""
    if decoder != "soundfile":
        monkeypatch.setattr(audio, "_FFMPEG_FIRST_EXTS", audio._FFMPEG_FIRST_EXTS | {".wav"})
    if decoder == "ffmpeg":
        if FFMPEG is None:
            pytest.skip("ffmpeg not found on PATH (apt-get install ffmpeg)")
        monkeypatch.setattr(audio_pyav, "import_av", lambda: None)
    return _error(AudioDecodeError, path)


DECODERS = ["soundfile", "pyav", "ffmpeg"]


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("channels", [65, 255])
def test_too_many_channels_is_a_specific_error_for_every_decoder(
    tmp_path, monkeypatch, decoder, channels
):
    """PyAV's conversion and the ffmpeg program (swresample: at most 64 channels) failed on these
    (``-32603`` ArgumentError, or "corrupt"); libsndfile decoded them. Now all three refuse alike,
    before decoding."""
    path = _wav_header(tmp_path / "many.wav", 24000, channels, 2400)
    err = _decode_with(decoder, path, monkeypatch)
    assert (err.code, err.kind) == (-32002, "too_many_channels")
    assert (err.data["channels"], err.data["max_channels"]) == (channels, 64)
    assert f"{channels} channels" in err.message and err.hint


@pytest.mark.parametrize("decoder", DECODERS)
def test_sixty_four_channels_still_decode_with_every_decoder(tmp_path, monkeypatch, decoder):
    path = _wav_header(tmp_path / "many.wav", 16000, 64, 1600)
    if decoder != "soundfile":
        monkeypatch.setattr(audio, "_FFMPEG_FIRST_EXTS", audio._FFMPEG_FIRST_EXTS | {".wav"})
    if decoder == "ffmpeg":
        if FFMPEG is None:
            pytest.skip("ffmpeg not found on PATH (apt-get install ffmpeg)")
        monkeypatch.setattr(audio_pyav, "import_av", lambda: None)
    a = load_audio(path)
    assert (a.decoder, a.source_channels, a.duration) == (decoder, 64, 0.1)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("rate", [1, 999, 768_001, 2**31 - 1])
def test_an_odd_sample_rate_is_a_specific_error_for_every_decoder(
    tmp_path, monkeypatch, decoder, rate
):
    """1 Hz decoded (as hours of noise from a few bytes); 2^31-1 Hz asked numpy for 80 GB for one
    block and answered ``-32005 CUDA out of memory``. Both are refused before decoding."""
    path = _wav_header(tmp_path / "odd.wav", rate, 1, 20)
    err = _decode_with(decoder, path, monkeypatch)
    assert (err.code, err.kind, err.data["sample_rate"]) == (
        -32002,
        "unsupported_sample_rate",
        rate,
    )
    assert (err.data["min_sample_rate"], err.data["max_sample_rate"]) == (1000, 768_000)


def test_a_block_never_holds_more_than_block_bytes(tmp_path, monkeypatch):
    """A 64-channel file reads ~10 s at a time no longer: at 768 kHz that was 2 GB per block."""
    monkeypatch.setattr(audio_sink, "BLOCK_BYTES", 64 * 1024)
    path = _wav_header(tmp_path / "wide.wav", 48000, 64, 4800)
    seen = []
    real_feed = audio_sink.Pipeline.feed

    def spy(self, block, **kw):
        seen.append(block.size * 4)
        real_feed(self, block, **kw)

    monkeypatch.setattr(audio_sink.Pipeline, "feed", spy)
    assert load_audio(path).duration == 0.1
    assert len(seen) > 1 and max(seen) <= 64 * 1024
    assert audio_sink.block_frames(768_000, 64, 10.0) * 64 * 4 <= audio_sink.BLOCK_BYTES
