"""Configuration: environment variables and command-line flags, in one place.

Flags win over environment variables, which win over defaults. The environment variable names are the
app's contract (``VIBEVOICE_PRECISION``, ``VIBEVOICE_MODEL_PATH``); keep them exactly.

:data:`ENV_VARS` is the one table of the variables: name, default, meaning and flag. The reading
below looks each name up in it, ``--help`` is generated from it (:func:`env_help`), and
:func:`unknown_env_warnings` warns about any other ``VIBEVOICE_*`` name at start (a typo such as
``VIBEVOICE_PRECISON`` was silently ignored). tests/test_config_errors.py checks that every name
this module reads has a row, and that each row's default is what the reading gives.

Why one file of ~650 lines: the table of every variable, the reading that uses it and the checks of
each value must not drift apart (tests compare the table with ``--help`` and the README).
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from .limits import MAX_WINDOW_SECONDS, MIN_WINDOW_SECONDS
from .logsink import LOG_DATEFMT, LOG_FORMAT
from .messages import PRECISIONS

log = logging.getLogger(__name__)

__all__ = [
    "LoadSpec",
    "Config",
    "DEFAULT_MAX_AUDIO_SECONDS",
    "DEFAULT_MODEL_ID",
    "DIALECTS",
    "LOG_FORMAT",
    "ENV_VARS",
    "EnvVar",
    "RemoteSettings",
    "clean_api_key",
    "env_help",
    "flag_help",
    "setup_logging",
    "unknown_env_warnings",
    "warn_unknown_env",
    "env_flag",
    "ffmpeg_program",
    "validate_url",
]

DEFAULT_MODEL_ID = "microsoft/VibeVoice-ASR-HF"

ENV_PREFIX = "VIBEVOICE_"
DEFAULT_MAX_AUDIO_SECONDS = 4 * 3600.0
# Voice activity detection (transcription/speech.py): 1 s of audio is kept on each side of speech
# and a 1 s pause replaces the rest of a gap, so a shorter threshold would save nothing.
DEFAULT_VAD_MIN_SILENCE_SECONDS = 8.0
MIN_VAD_SILENCE_SECONDS = 3.0


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: ``value`` is what the setting is when the variable is unset (a
    test compares it with what the reading gives), ``default`` how ``--help`` and the README say
    it, ``attr`` the :class:`Config` field it sets (``remote.<field>`` for
    :class:`RemoteSettings`), ``flag`` the command-line option that wins over it."""

    name: str
    value: object
    default: str
    meaning: str
    attr: str
    flag: str | None = None


# The table: --help lists it in this order; README.md's configuration table has a row for each.
ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar(
        "VIBEVOICE_PRECISION",
        "fp16",
        "fp16",
        "model precision: fp16, bf16, int8, nf4, fp32, auto (the best that fits free VRAM)",
        "precision",
        "--precision",
    ),
    EnvVar(
        "VIBEVOICE_MODEL_PATH",
        None,
        "download_model's folder, then the Hugging Face cache",
        "checkpoint folder (with config.json) or Hugging Face cache folder; tiny: the tiny "
        "random-weight model (noise, for trying the protocol)",
        "model_path",
        "--model-path",
    ),
    EnvVar("VIBEVOICE_DEVICE", "auto", "auto", "auto, cuda or cpu", "device", "--device"),
    EnvVar(
        "VIBEVOICE_PRELOAD",
        False,
        "off",
        "load the model in the background right after ready (1, true, yes or on)",
        "preload",
        "--preload",
    ),
    EnvVar(
        "VIBEVOICE_OFFLINE",
        False,
        "off",
        "download_model refuses, -32011 offline (1, true, yes or on; HF_HUB_OFFLINE too)",
        "offline",
    ),
    EnvVar(
        "VIBEVOICE_LOG_LEVEL",
        "INFO",
        "INFO",
        "stderr log level: DEBUG, INFO, WARNING, ERROR",
        "log_level",
        "--log-level",
    ),
    EnvVar("VIBEVOICE_MAX_QUEUE", 16, "16", "queued jobs before busy (-32007)", "max_queue"),
    EnvVar(
        "VIBEVOICE_MAX_AUDIO_SECONDS",
        DEFAULT_MAX_AUDIO_SECONDS,
        "14400",
        "longer audio is refused (-32003)",
        "max_audio_seconds",
    ),
    EnvVar(
        "VIBEVOICE_MAX_WINDOW_SECONDS",
        MAX_WINDOW_SECONDS,
        "3600",
        "single-pass limit (at least 10); longer audio is split at quiet moments into "
        "overlapping windows (lower automatically when VRAM is small)",
        "max_window_seconds",
    ),
    EnvVar(
        "VIBEVOICE_ALLOW_CPU_OFFLOAD",
        False,
        "off",
        "let a model that does not fit VRAM spill to the CPU instead of failing fast (1, true, "
        "yes or on)",
        "allow_cpu_offload",
    ),
    EnvVar(
        "VIBEVOICE_FFMPEG",
        None,
        "next to the executable, then PATH",
        "an ffmpeg program (or a folder holding one) for the audio fallback, used only when "
        "PyAV is missing or cannot decode a file",
        "ffmpeg",
    ),
    EnvVar(
        "VIBEVOICE_AUDIO_THREADS",
        None,
        "the CPUs, at most 4",
        "threads for decoding long WAV/FLAC/Opus in parallel parts (1: one pass)",
        "audio_threads",
    ),
    EnvVar(
        "VIBEVOICE_VAD",
        True,
        "on",
        "voice activity detection: long stretches without speech are not fed to the model and "
        "a file without speech does not run it (0, false, no or off: feed everything; a request's "
        "vad wins)",
        "vad",
    ),
    EnvVar(
        "VIBEVOICE_VAD_MIN_SILENCE_SECONDS",
        DEFAULT_VAD_MIN_SILENCE_SECONDS,
        "8",
        f"a stretch without speech at least this long (at least {MIN_VAD_SILENCE_SECONDS:g}) is "
        "left out, 1 s around speech kept; between two heard parts the model hears a 1 s pause",
        "vad_min_silence_seconds",
    ),
    EnvVar(
        "VIBEVOICE_BACKEND",
        "local",
        "local",
        "local (the model in this process) or remote (a VibeVoice vLLM server: VIBEVOICE_REMOTE_*)",
        "backend",
    ),
    EnvVar(
        "VIBEVOICE_REMOTE_URL",
        None,
        "unset",
        "the remote server, http(s)://host:port (with or without /v1)",
        "remote.url",
    ),
    EnvVar(
        "VIBEVOICE_REMOTE_API_KEY",
        None,
        "unset",
        "sent as Authorization: Bearer ...; never logged",
        "remote.api_key",
    ),
    EnvVar(
        "VIBEVOICE_REMOTE_MODEL",
        "vibevoice",
        "vibevoice",
        "the server's --served-model-name",
        "remote.model",
    ),
    EnvVar(
        "VIBEVOICE_REMOTE_DIALECT",
        "official",
        "official",
        "official (Microsoft's plugin: the whole instruction as text) or transformers (vLLM's "
        "Transformers backend: the text is the context)",
        "remote.dialect",
    ),
    EnvVar(
        "VIBEVOICE_REMOTE_MAX_AUDIO_SECONDS",
        MAX_WINDOW_SECONDS,
        "3600",
        "longest window sent to the server (at most 3600)",
        "remote.max_audio_seconds",
    ),
    EnvVar(
        "VIBEVOICE_REMOTE_IDLE_TIMEOUT",
        300.0,
        "300",
        "seconds without a byte from the server (waiting for the answer's headers, or within the "
        "stream): a stalled server",
        "remote.idle_timeout",
    ),
    EnvVar(
        "VIBEVOICE_REMOTE_CONNECT_TIMEOUT",
        10.0,
        "10",
        "seconds a connect (DNS included) may take: an unreachable server",
        "remote.connect_timeout",
    ),
    EnvVar(
        "VIBEVOICE_REMOTE_UPLOAD_TIMEOUT",
        600.0,
        "600",
        "seconds sending one window's request may take",
        "remote.upload_timeout",
    ),
    EnvVar(
        "VIBEVOICE_REMOTE_WINDOW_TIMEOUT",
        7200.0,
        "7200",
        "seconds one window's answer may take, from its headers to its end",
        "remote.window_timeout",
    ),
    EnvVar(
        "VIBEVOICE_REMOTE_RETRIES",
        3,
        "3",
        "retries (0-10) of 429/502/503/504 and refused connections, with backoff",
        "remote.retries",
    ),
    EnvVar(
        "VIBEVOICE_REMOTE_FALLBACK",
        None,
        "unset",
        "local: when the server can't be reached, transcribe with the local model (said in "
        "metadata.warnings)",
        "remote.fallback",
    ),
    EnvVar(
        "VIBEVOICE_REMOTE_CONTINUATION",
        "restart",
        "restart",
        "how a loop-recovery try resumes: restart (the window again; any server) or prefix (a "
        "final assistant message; needs a server whose chat template renders it)",
        "remote.continuation",
    ),
)
ENV: dict[str, EnvVar] = {var.name: var for var in ENV_VARS}

# VIBEVOICE_* names that belong to other programs, never warned about: the test suite's hooks
# read by its stand-in servers (tests/scripted_server.py, tests/download_server.py), the real-vLLM
# test harness (tests/vllm_server.py) and the frozen build (build_exe.spec). They are exported in
# the same shell or CI job that starts the server (the Windows workflow sets
# VIBEVOICE_BUILD_BITSANDBYTES for every step; every scripted test server runs this code with
# VIBEVOICE_TEST_SCRIPT set): a warning there would be noise in every log, and noise teaches
# people to skip the warning that matters.
FOREIGN_PREFIXES = ("VIBEVOICE_TEST_", "VIBEVOICE_BUILD_", "VIBEVOICE_VLLM_")


def _name(name: str) -> str:
    """``name``, if it has a row in :data:`ENV_VARS` (KeyError otherwise)."""
    return ENV[name].name


def _value(name: str):  # noqa: ANN202 - the row's typed value (int, float, str)
    """The setting's value when its variable is unset, from the table."""
    return ENV[name].value


def _raw(env: Mapping[str, str], name: str) -> str:
    """The variable's text, stripped ('' when unset). Only names in :data:`ENV_VARS` (KeyError
    otherwise: a new setting needs its row, or --help and the typo warning would miss it)."""
    return (env.get(ENV[name].name) or "").strip()


def flag_help(name: str) -> str:
    """A flag's help text: the variable's meaning, its name and default."""
    var = ENV[name]
    return f"{var.meaning} ({var.name}; default: {var.default})"


def env_help(width: int = 100) -> str:
    """The environment part of ``--help``: every variable, its default and meaning."""
    lines = ["environment variables (a flag wins over its variable; checked at start):"]
    for var in ENV_VARS:
        flag = f", {var.flag}" if var.flag else ""
        lines.append(f"  {var.name}{flag} (default: {var.default})")
        lines += textwrap.wrap(
            var.meaning,
            width,
            initial_indent=" " * 6,
            subsequent_indent=" " * 6,
            break_on_hyphens=False,
        )
    lines += textwrap.wrap(
        f"Any other {ENV_PREFIX}* variable is a warning at start, naming the nearest setting "
        f"(names starting {', '.join(FOREIGN_PREFIXES)} belong to the tests and the build).",
        width,
    )
    return "\n".join(lines)


def warn_unknown_env(env: Mapping[str, str]) -> None:
    """Log :func:`unknown_env_warnings`, one WARNING line each: a typo is never a stop."""
    for line in unknown_env_warnings(env):
        log.warning("%s", line)


def unknown_env_warnings(env: Mapping[str, str]) -> list[str]:
    """One line per ``VIBEVOICE_*`` variable in ``env`` that is not a setting, with the nearest
    known name. Names only: a value (it may be a misspelt API key's) is never shown."""
    out = []
    for key in sorted(env):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or key in ENV or upper.startswith(FOREIGN_PREFIXES):
            continue
        shown = key if key.isascii() and key.isprintable() else ascii(key)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        if upper in ENV:
            hint = f"; did you mean {upper} (names are upper case)?"
        else:  # compared without the prefix all names share, which would make anything close
            tails = {name[len(ENV_PREFIX) :]: name for name in ENV}
            near = difflib.get_close_matches(upper[len(ENV_PREFIX) :], list(tails), n=1, cutoff=0.6)
            hint = f"; did you mean {tails[near[0]]}?" if near else " (--help lists the settings)"
        out.append(f"the environment variable {shown} is not a setting and is ignored{hint}")
    return out


_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() in _ON


def _env_switch(env: Mapping[str, str], name: str) -> bool:
    """A setting that is on unless turned off: 1/true/yes/on or 0/false/no/off (else a stop)."""
    raw = _raw(env, name).lower()
    if not raw:
        return bool(_value(name))
    if raw in _ON or raw in _OFF:
        return raw in _ON
    raise SystemExit(
        f"vibevoice-rpc: {name}={raw!r} is not one of 1, true, yes, on, 0, false, no, off"
    )


def _env_float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    """A finite number of seconds above ``minimum`` (exclusive when it is 0)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"vibevoice-rpc: {name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise SystemExit(
            f"vibevoice-rpc: {name}={raw!r} must be a finite number of seconds "
            "(for practically no limit use a large one, e.g. 1e9)"
        )
    if value <= 0 or value < minimum:
        least = f"at least {minimum:g}" if minimum else "positive"
        raise SystemExit(f"vibevoice-rpc: {name} must be {least}, got {raw!r}")
    return value


DIALECTS = ("official", "transformers")
CONTINUATIONS = ("restart", "prefix")
BACKENDS = ("local", "remote")


@dataclass(frozen=True)
class LoadSpec:
    """Which checkpoint the local model's load reads and how: everything but the precision, which
    each request may choose (from :class:`Config`, then ``reload_model`` and ``download_model``)."""

    model_path: str | None  # a folder, "tiny", or None: download_model's folder, then the HF cache
    device_pref: str  # "auto", "cuda" or "cpu"
    offline: bool
    allow_cpu_offload: bool


@dataclass(frozen=True)
class RemoteSettings:
    """Where the server is and how to talk to it (env ``VIBEVOICE_REMOTE_*`` or ``reload_model``).

    Checked when made (:meth:`__post_init__` raises ``ValueError`` naming the field, never quoting
    a key or password): a settings object that exists can always make a client, so ``health``
    never fails on it."""

    url: str
    api_key: str | None = field(default=None, repr=False)
    model: str = "vibevoice"
    dialect: str = "official"
    connect_timeout: float = 10.0
    idle_timeout: float = 300.0  # no byte from the server for this long: the stream stalled
    # Total time to send one request body (a never-reading server holds the upload otherwise).
    upload_timeout: float = 600.0
    # Total time of one window's answer, from the request sent to its last event.
    window_timeout: float = 7200.0
    max_audio_seconds: float = (
        MAX_WINDOW_SECONDS  # windows are at most this long (the server's too)
    )
    retries: int = 3  # for 429/502/503/504 and refused connections, with backoff
    fallback: str | None = None  # "local": run the local model when the server is unreachable
    # How a loop recovery try resumes: "restart" the window (any server), or continue a final
    # assistant "prefix" (needs a chat template that renders it: continue_final_message).
    continuation: str = "restart"

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", validate_url(self.url))
        object.__setattr__(self, "api_key", clean_api_key(self.api_key))
        if not self.model or len(self.model) > 256 or not self.model.isprintable():
            raise ValueError(
                f"the remote model name must be 1-256 printable characters, got {self.model[:80]!r}"
            )
        from .redact import register, url_secrets

        register(self.api_key, *url_secrets(self.url))

    @property
    def base(self) -> str:
        """The URL up to (not including) ``/v1``."""
        url = self.url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    @property
    def shown(self) -> str:
        """The URL without credentials or query, for messages, logs, health and metadata."""
        parts = urlsplit(self.base)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, host, parts.path, "", ""))


def validate_url(url: str) -> str:
    """``url`` (stripped) if it is an http(s) URL with a host and a port in 1-65535, in printable
    ASCII; raises ``ValueError`` saying what is wrong, showing the URL without its credentials."""
    from .redact import redact_url

    url = url.strip()
    parts = urlsplit(url)
    shown = redact_url(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the remote URL must be http(s)://host[:port], got {shown!r}")
    if not all(" " < c < "\x7f" for c in url):
        raise ValueError(
            f"the remote URL {shown!r} holds a space, a control or a non-ASCII character (write "
            "an international host name in its xn-- form, and percent-encode the rest)"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.rpartition("@")[2].endswith(":")):
        raise ValueError(f"the remote URL {shown!r} has no valid port (1-65535)")
    return url


def clean_api_key(key: str | None) -> str | None:
    """The key without surrounding whitespace (a key file's newline), None when empty; raises
    ``ValueError`` (without the key) when it holds a control or non-ASCII character, which no
    HTTP header can carry."""
    if key is None:
        return None
    key = key.strip()
    for position, char in enumerate(key, 1):
        if not " " <= char < "\x7f":
            what = "a control" if char.isascii() or not char.isprintable() else "a non-ASCII"
            raise ValueError(
                f"the remote API key holds {what} character (at position {position} of "
                f"{len(key)}); an HTTP header can carry only printable ASCII"
            )
    return key or None


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(
            f"vibevoice-rpc: {name}={raw!r} must be a whole number of at least {minimum}"
        ) from None
    if value < minimum:
        raise SystemExit(f"vibevoice-rpc: {name} must be at least {minimum}, got {raw!r}")
    return value


def _is_exe(path: str) -> bool:
    return os.path.isfile(path) and (os.name == "nt" or os.access(path, os.X_OK))


def ffmpeg_program(path: str) -> str | None:
    """The ffmpeg executable ``path`` names (``~`` expanded, made absolute): the file itself, or
    ``ffmpeg``/``ffmpeg.exe`` in that folder; None when it names neither. What ``VIBEVOICE_FFMPEG``
    may hold, and how the audio fallback looks into a folder."""
    cand = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(cand):
        names = ("ffmpeg.exe", "ffmpeg") if os.name == "nt" else ("ffmpeg", "ffmpeg.exe")
        for name in names:
            if _is_exe(os.path.join(cand, name)):
                return os.path.join(cand, name)
        return None
    return cand if _is_exe(cand) else None


def _env_ffmpeg(env: Mapping[str, str]) -> str | None:
    raw = _raw(env, "VIBEVOICE_FFMPEG")
    if not raw:
        return None
    program = ffmpeg_program(raw)
    if program is None:
        # A warning, not a stop: ffmpeg is only the fallback behind PyAV, and an app whose bundled
        # ffmpeg was quarantined must still start. The lookup goes on next to the program, then PATH.
        log.warning(
            "VIBEVOICE_FFMPEG=%r is neither an ffmpeg executable nor a folder holding one; the "
            "audio fallback looks next to the program, then on PATH",
            raw,
        )
        return raw
    return program


@dataclass
class Config:
    """Everything the server reads from its environment and flags."""

    precision: str = "fp16"
    model_path: str | None = None
    device: str = "auto"
    preload: bool = False
    offline: bool = False
    allow_cpu_offload: bool = False
    log_level: str = "INFO"
    max_queue: int = 16
    max_window_seconds: float = MAX_WINDOW_SECONDS
    max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS
    # Threads for decoding long WAV/FLAC/Ogg in parallel parts; None: the CPUs, at most 4.
    audio_threads: int | None = None
    # The ffmpeg program for the audio fallback; None: next to the executable, then PATH.
    ffmpeg: str | None = None
    parent_pid: int | None = None
    backend: str = "local"
    remote: RemoteSettings | None = None
    vad: bool = True
    vad_min_silence_seconds: float = DEFAULT_VAD_MIN_SILENCE_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        precision = _raw(env, "VIBEVOICE_PRECISION").lower() or _value("VIBEVOICE_PRECISION")
        if precision not in PRECISIONS:
            raise SystemExit(
                f"vibevoice-rpc: VIBEVOICE_PRECISION={precision!r} is not one of "
                f"{', '.join(PRECISIONS)}"
            )
        device = _raw(env, "VIBEVOICE_DEVICE").lower() or _value("VIBEVOICE_DEVICE")
        if device not in ("auto", "cuda", "cpu"):
            raise SystemExit(f"vibevoice-rpc: VIBEVOICE_DEVICE={device!r} is not auto, cuda or cpu")
        backend = _raw(env, "VIBEVOICE_BACKEND").lower() or _value("VIBEVOICE_BACKEND")
        if backend not in BACKENDS:
            raise SystemExit(f"vibevoice-rpc: VIBEVOICE_BACKEND={backend!r} is not local or remote")
        remote = remote_from_env(env)
        if backend == "remote" and remote is None:
            raise SystemExit(
                "vibevoice-rpc: VIBEVOICE_BACKEND=remote needs VIBEVOICE_REMOTE_URL "
                "(e.g. http://gpu-server:8000)"
            )
        return cls(
            backend=backend,
            remote=remote,
            precision=precision,
            model_path=env.get(_name("VIBEVOICE_MODEL_PATH")) or None,  # as given: not stripped
            device=device,
            preload=env_flag(_raw(env, "VIBEVOICE_PRELOAD")),
            offline=env_flag(_raw(env, "VIBEVOICE_OFFLINE")),
            allow_cpu_offload=env_flag(_raw(env, "VIBEVOICE_ALLOW_CPU_OFFLOAD")),
            log_level=(_raw(env, "VIBEVOICE_LOG_LEVEL") or _value("VIBEVOICE_LOG_LEVEL")).upper(),
            max_queue=_env_int(env, "VIBEVOICE_MAX_QUEUE", _value("VIBEVOICE_MAX_QUEUE")),
            max_window_seconds=_env_float(
                env,
                "VIBEVOICE_MAX_WINDOW_SECONDS",
                _value("VIBEVOICE_MAX_WINDOW_SECONDS"),
                minimum=MIN_WINDOW_SECONDS,
            ),
            max_audio_seconds=_env_float(
                env, "VIBEVOICE_MAX_AUDIO_SECONDS", _value("VIBEVOICE_MAX_AUDIO_SECONDS")
            ),
            # 0 only when unset (a value must be at least 1): the decoder's default
            audio_threads=_env_int(env, _name("VIBEVOICE_AUDIO_THREADS"), 0) or None,
            ffmpeg=_env_ffmpeg(env),
            vad=_env_switch(env, "VIBEVOICE_VAD"),
            vad_min_silence_seconds=_env_float(
                env,
                _name("VIBEVOICE_VAD_MIN_SILENCE_SECONDS"),
                _value("VIBEVOICE_VAD_MIN_SILENCE_SECONDS"),
                minimum=MIN_VAD_SILENCE_SECONDS,
            ),
        )


def remote_from_env(env: Mapping[str, str]) -> RemoteSettings | None:
    """The remote server's settings from ``VIBEVOICE_REMOTE_*``, or None without a URL."""
    url = env.get("VIBEVOICE_REMOTE_URL", "").strip()
    if not url:
        return None
    try:
        validate_url(url)
    except ValueError as exc:
        raise SystemExit(f"vibevoice-rpc: VIBEVOICE_REMOTE_URL: {exc}") from None
    try:  # one line without the key: the server stops before ready, like any bad value
        api_key = clean_api_key(env.get("VIBEVOICE_REMOTE_API_KEY"))
    except ValueError as exc:
        raise SystemExit(f"vibevoice-rpc: VIBEVOICE_REMOTE_API_KEY: {exc}") from None
    dialect = env.get("VIBEVOICE_REMOTE_DIALECT", "").strip().lower() or "official"
    if dialect not in DIALECTS:
        raise SystemExit(
            f"vibevoice-rpc: VIBEVOICE_REMOTE_DIALECT={dialect!r} is not official or transformers"
        )
    fallback = env.get("VIBEVOICE_REMOTE_FALLBACK", "").strip().lower() or None
    if fallback not in (None, "local", "none"):
        raise SystemExit(f"vibevoice-rpc: VIBEVOICE_REMOTE_FALLBACK={fallback!r} is not local")
    raw = env.get("VIBEVOICE_REMOTE_RETRIES", "").strip() or "3"
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 10:
        raise SystemExit(
            f"vibevoice-rpc: VIBEVOICE_REMOTE_RETRIES={raw!r} is not a whole number 0-10"
        )
    retries = int(raw)
    continuation = env.get("VIBEVOICE_REMOTE_CONTINUATION", "").strip().lower() or "restart"
    if continuation not in CONTINUATIONS:
        raise SystemExit(
            f"vibevoice-rpc: VIBEVOICE_REMOTE_CONTINUATION={continuation!r} is not restart or prefix"
        )
    try:
        return RemoteSettings(
            url=url,
            continuation=continuation,
            api_key=api_key,
            model=env.get("VIBEVOICE_REMOTE_MODEL", "").strip() or "vibevoice",
            dialect=dialect,
            idle_timeout=_env_float(env, "VIBEVOICE_REMOTE_IDLE_TIMEOUT", 300.0),
            connect_timeout=_env_float(env, "VIBEVOICE_REMOTE_CONNECT_TIMEOUT", 10.0),
            upload_timeout=_env_float(env, "VIBEVOICE_REMOTE_UPLOAD_TIMEOUT", 600.0),
            window_timeout=_env_float(env, "VIBEVOICE_REMOTE_WINDOW_TIMEOUT", 7200.0),
            max_audio_seconds=min(
                MAX_WINDOW_SECONDS,
                _env_float(env, "VIBEVOICE_REMOTE_MAX_AUDIO_SECONDS", MAX_WINDOW_SECONDS),
            ),
            retries=retries,
            fallback="local" if fallback == "local" else None,
        )
    except ValueError as exc:  # the model name (the URL and the key were checked above)
        raise SystemExit(f"vibevoice-rpc: VIBEVOICE_REMOTE_MODEL: {exc}") from None


def setup_logging(level: str, *, nonblocking: bool = False) -> None:
    """Log to stderr only, in the shape the app parses: ``date - logger - LEVEL - message``.

    ``nonblocking`` (the server) routes all stderr output through :mod:`vibevoice_rpc.logsink`,
    so a stderr pipe nobody reads can never block the protocol: lines are dropped and counted.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise SystemExit(f"vibevoice-rpc: unknown log level {level!r}")
    handler: logging.Handler
    if nonblocking:
        from .logsink import SinkHandler, install

        handler = SinkHandler(install())
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    logging.captureWarnings(True)
