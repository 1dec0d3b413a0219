"""Audio through the real server (``python -m vibevoice_rpc`` over pipes): M4A/WebM decoded in
process with no ffmpeg program to be found, and the bad-file cases of issues #14.3, #14.6, #14.7
and #19.6 answered with the right error, never ``-32603``.

Most tests need no model: the audio is decoded before the model is loaded, and the engine reports
``loading_audio`` 1.0 "decoded N s of audio" first. With ``VIBEVOICE_MODEL_PATH`` pointing at a
checkpoint that is found but does not load (no checkpoint at all is answered before decoding) the
request then ends in ``-32004`` — after the decode has been proven to succeed.
The ``model`` tests transcribe on the tiny model end to end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from .checkpoints import unloadable_checkpoint
from .drain import wait_for_stderr
from .rpc_client import RpcProcess, server_env
from .test_audio import fake_ffmpeg

pytestmark = pytest.mark.timeout(120)

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not found (makes the test file)")


def _env(tmp_path: Path, model: Path | None = None, **extra: str) -> dict[str, str]:
    nobin = tmp_path / "no-ffmpeg-here"
    nobin.mkdir(exist_ok=True)
    if model is None:
        model = unloadable_checkpoint(tmp_path / "unloadable-model")
    env = server_env(
        VIBEVOICE_MODEL_PATH=str(model),
        VIBEVOICE_PRECISION="fp32",
        OMP_NUM_THREADS="1",
        PATH=str(nobin),  # no ffmpeg program anywhere: decoding must stay in process
        **extra,
    )
    if "VIBEVOICE_FFMPEG" not in extra:
        env.pop("VIBEVOICE_FFMPEG", None)
    return env


def _transcribe(p: RpcProcess, path: Path, **params: Any) -> tuple[Any, dict[str, Any]]:
    # vad off: these files are tones and odd samples standing in for speech, and what is checked
    # is that their decoded audio reaches the model (the VAD would find no speech in them)
    params = {"max_new_tokens": 2, "vad": False, **params}
    rid = p.request("transcribe", {"audio_path": str(path), **params})
    return rid, p.response(rid, timeout=100)


def _decoded_seconds(p: RpcProcess, rid: Any) -> float | None:
    for n in p.notifications("progress", rid):
        if n["stage"] == "loading_audio" and n["progress"] == 1.0:
            return float(n["message"].split()[1])  # "decoded 70.0 s of audio"
    return None


def _write_with_pyav(path: Path, x: np.ndarray, rate: int, codec: str) -> Path:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            x[None, :].astype(np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


def _speech(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 1.3 * t) > 0)).astype(
        np.float32
    )


@pytest.mark.parametrize(
    ("name", "codec", "rate"),
    [
        ("Sound Recorder – Besprechung.m4a", "aac", 48000),
        ("Browser Aufnahme.webm", "libopus", 48000),
    ],
)
def test_server_decodes_m4a_and_webm_without_an_ffmpeg_program(tmp_path, name, codec, rate):
    path = _write_with_pyav(tmp_path / name, _speech(rate, 3.0), rate, codec)
    with RpcProcess(env=_env(tmp_path)) as p:
        rid, answer = _transcribe(p, path)
        decoded = _decoded_seconds(p, rid)
        assert decoded is not None and 2.9 < decoded < 3.2, (decoded, answer, p.stderr[-2000:])
        assert answer["error"]["code"] == -32004  # decoded; then the model does not load
        wait_for_stderr(p, "with pyav")


def test_server_refuses_a_silence_bomb_before_decoding(tmp_path):
    import av

    path = tmp_path / "bomb.mka"
    with av.open(str(path), "w") as out:  # an hour of 8 kHz silence in FLAC: ~1 MB
        stream = out.add_stream("flac", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 8000 * 60), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for minute in range(60):
            frame.pts = minute * 8000 * 60
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    assert path.stat().st_size < 3_000_000
    with RpcProcess(env=_env(tmp_path, VIBEVOICE_MAX_AUDIO_SECONDS="600")) as p:
        _, answer = _transcribe(p, path)
        err = answer["error"]
        assert (err["code"], err["data"]["kind"]) == (-32003, "too_long"), err
        assert abs(err["data"]["duration"] - 3600.0) < 1.0 and err["data"]["limit"] == 600.0
        assert "it lasts" in err["message"]  # from the container's header, not after decoding


@needs_ffmpeg
def test_server_limits_a_streamed_flac_while_decoding(tmp_path):
    src = tmp_path / "in.wav"
    sf.write(src, _speech(16000, 20.0), 16000)
    piped = tmp_path / "piped.flac"
    with open(piped, "wb") as fh:
        cmd = [FFMPEG, "-nostdin", "-loglevel", "error", "-i", str(src), "-f", "flac", "-"]
        subprocess.run(cmd, check=True, timeout=60, stdout=fh)
    with RpcProcess(env=_env(tmp_path, VIBEVOICE_MAX_AUDIO_SECONDS="8")) as p:
        _, answer = _transcribe(p, piped)
        err = answer["error"]
        assert (err["code"], err["data"]["kind"]) == (-32003, "too_long"), err
        assert 8.0 < err["data"]["duration"] < 20.0  # where decoding stopped, not 3.8e14 s
        assert "decoding stopped" in err["message"]
    with RpcProcess(env=_env(tmp_path)) as p:
        rid, answer = _transcribe(p, piped)
        assert _decoded_seconds(p, rid) == 20.0, answer


def test_server_refuses_a_few_hertz_wav_with_a_specific_error(tmp_path):
    """Issue #14.6 turned its -32603 into a decode; issue #19.6 into -32002: no speech below
    1 kHz."""
    path = tmp_path / "3hz.wav"
    sf.write(path, np.tile(np.float32([0.5, -0.5, 0.25]), 70), 3)  # 70 s at 3 Hz
    with RpcProcess(env=_env(tmp_path, VIBEVOICE_AUDIO_THREADS="2")) as p:
        _, answer = _transcribe(p, path)
        err = answer["error"]
        assert (err["code"], err["data"]["kind"]) == (-32002, "unsupported_sample_rate"), err
        assert err["data"]["sample_rate"] == 3 and "3 Hz" in err["message"]


def test_server_refuses_255_channels_with_a_specific_error(tmp_path):
    """Was -32603 ("ArgumentError: Invalid argument", PyAV's conversion of 255 channels)."""
    import av

    path = tmp_path / "255 channels.mka"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=16000, layout="255 channels")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1600 * 255), np.int16), format="s16", layout="255 channels"
        )
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with RpcProcess(env=_env(tmp_path)) as p:
        _, answer = _transcribe(p, path)
        err = answer["error"]
        assert (err["code"], err["data"]["kind"]) == (-32002, "too_many_channels"), err
        assert (err["data"]["channels"], err["data"]["max_channels"]) == (255, 64)


@pytest.mark.model
@pytest.mark.timeout(240)
def test_server_transcribes_an_adts_whose_rate_changes_midway(tmp_path, tiny_model):
    """Was -32603 ("Frame does not match AudioResampler setup"); the change is said in
    metadata.warnings."""
    import av

    data = b""
    for i, rate in enumerate((16000, 44100, 16000)):
        part = tmp_path / f"part{i}.aac"
        with av.open(str(part), "w", format="adts") as out:
            stream = out.add_stream("aac", rate=rate, layout="mono")
            frame = av.AudioFrame.from_ndarray(
                _speech(rate, 2.0)[None, :], format="fltp", layout="mono"
            )
            frame.sample_rate = rate
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                out.mux(packet)
        data += part.read_bytes()
    path = tmp_path / "joined.aac"
    path.write_bytes(data)
    with RpcProcess(env=_env(tmp_path, model=tiny_model)) as p:
        _, answer = _transcribe(p, path)
        meta = answer["result"]["metadata"]
        assert 6.0 <= meta["duration"] <= 6.4, meta  # 3 x 2 s, + each part's priming
        assert any("16000 -> 44100 -> 16000 Hz" in w for w in meta["warnings"]), meta


@pytest.mark.skipif(os.name == "nt", reason="the stand-in ffmpeg is a script with a #! line")
def test_server_decodes_with_the_ffmpeg_program_it_was_given(tmp_path):
    """VIBEVOICE_FFMPEG → Config → Engine → load_audio → the fallback decode. A file no real
    decoder reads: PyAV gives up, and the stand-in program (from its folder) answers 0.5 s."""
    path = tmp_path / "memo.m4a"
    path.write_bytes(b"nothing a real decoder reads\n" * 20)
    exe = fake_ffmpeg(tmp_path / "tools")
    with RpcProcess(env=_env(tmp_path, VIBEVOICE_FFMPEG=str(exe.parent))) as p:
        rid, answer = _transcribe(p, path)
        assert _decoded_seconds(p, rid) == 0.5, (answer, p.stderr[-2000:])
        assert answer["error"]["code"] == -32004
        wait_for_stderr(p, "with ffmpeg")


@pytest.mark.parametrize(("threads", "said"), [("1", None), ("3", "in 3 parallel parts")])
def test_server_decodes_in_as_many_parts_as_it_was_told(tmp_path, threads, said):
    """VIBEVOICE_AUDIO_THREADS → Config → Engine → load_audio → the parallel parts."""
    path = tmp_path / "long.wav"
    sf.write(path, _speech(8000, 95.0), 8000)  # >= 3 parts of 30 s
    env = _env(tmp_path, VIBEVOICE_AUDIO_THREADS=threads, VIBEVOICE_LOG_LEVEL="DEBUG")
    with RpcProcess(env=env) as p:
        rid, answer = _transcribe(p, path)
        assert _decoded_seconds(p, rid) == 95.0, answer
        # logged after the parallel-parts line (same pipe): once it is here, so is that one
        wait_for_stderr(p, "with soundfile")
        lines = [line for line in p.stderr.splitlines() if "parallel parts" in line]
        if said is None:
            assert lines == []
        else:
            assert len(lines) == 1 and said in lines[0], lines


def test_server_decodes_huge_finite_stereo_floats(tmp_path):
    x = np.full((48000, 2), 3e38, np.float32)
    x[::2] *= -1
    path = tmp_path / "loud.wav"
    sf.write(path, x, 48000, subtype="FLOAT")
    with RpcProcess(env=_env(tmp_path)) as p:
        rid, answer = _transcribe(p, path)
        assert _decoded_seconds(p, rid) == 1.0, answer
        assert answer["error"]["code"] == -32004


def test_server_says_corrupt_for_a_damaged_m4a(tmp_path):
    path = _write_with_pyav(tmp_path / "memo.m4a", _speech(16000, 2.0), 16000, "aac")
    path.write_bytes(path.read_bytes()[:200])
    with RpcProcess(env=_env(tmp_path)) as p:
        _, answer = _transcribe(p, path)
        err = answer["error"]
        assert (err["code"], err["data"]["kind"]) == (-32002, "corrupt"), err


@pytest.mark.model
@pytest.mark.timeout(240)
def test_server_transcribes_an_m4a_end_to_end(tmp_path, tiny_model, speech_clip):
    import av

    m4a = tmp_path / "Aufnahme Straße 会議.m4a"
    with av.open(str(speech_clip)) as inp, av.open(str(m4a), "w") as out:
        stream = None
        for frame in inp.decode(audio=0):
            if stream is None:
                stream = out.add_stream("aac", rate=frame.sample_rate, layout="mono")
            frame.pts = None
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with RpcProcess(env=_env(tmp_path, model=tiny_model)) as p:
        _, answer = _transcribe(p, m4a)
        result = answer["result"]
        assert result["status"] == "success"
        assert abs(result["metadata"]["duration"] - 11.5) < 0.1
        wait_for_stderr(p, "with pyav")
