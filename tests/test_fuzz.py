"""Seeded protocol fuzzing of the real server over pipes (no model is ever loaded).

One server process gets random bytes, invalid UTF-8, random JSON values, requests and notifications
with random (and systematically wrong) params for every method, 5 MB lines, deeply nested arrays,
odd ids and batches of all of these. A small reference model of the JSON-RPC rules in
docs/PROTOCOL.md predicts, for every line sent, which answers must come back; the test then checks:

* every stdout line is valid UTF-8, valid JSON (no NaN/Infinity), compact (no whitespace outside
  strings), one message, ending in ``\\n`` and holding no ``\\r``;
* every request with an id is answered exactly once, with that id echoed exactly (ids are unique);
* notifications are never answered (also inside batches: an all-notification batch prints nothing);
* garbage is answered once with ``id: null`` and a client-error code — never ``-32603``, which would
  mean an unhandled exception inside the server;
* params of the wrong type are ``-32602`` naming the field;
* the process stays alive and still answers ``health`` at the end.

``shutdown`` is never sent. Model work is cheap by construction: ``VIBEVOICE_MODEL_PATH`` names a
directory that does not exist (``reload_model`` and ``transcribe`` fail fast: a missing checkpoint
is answered before the audio is opened) and the server runs in an empty working directory.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .rpc_client import RpcProcess, server_env

pytestmark = pytest.mark.timeout(180)

SEED = 0x5EED_F022
METHODS = ["health", "transcribe", "reload_model", "unload_model", "cancel", "$/cancelRequest"]
PRECISIONS = ("fp16", "bf16", "int8", "nf4", "fp32", "auto")
CLIENT_ERRORS_FOR_GARBAGE = {-32700, -32600}
MISSING = object()

# --- what must come back: a small reference model of docs/PROTOCOL.md -------------------------------


@dataclass
class Req:
    """A request (or an invalid object with a readable id): exactly one answer with this id."""

    id: Any
    expect_code: int | None = None  # a specific error code, when the test knows it
    expect_field: str | None = None  # -32602: data.field starts with this
    garbage: bool = False  # an invalid request with a readable id: a client-error code
    expect_result: bool = False


@dataclass
class Note:
    """A notification: never answered."""


@dataclass
class Junk:
    """Not a request: exactly one error with ``id: null`` and a client-error code."""


@dataclass
class Batch:
    members: list[Any]


@dataclass
class Expected:
    by_id: dict[Any, Req] = field(default_factory=dict)
    null_top: int = 0  # top-level answers with id null
    arrays: Counter = field(default_factory=Counter)  # multiset of batch-answer id signatures
    lines: int = 0

    def add(self, item: Any) -> None:
        if isinstance(item, Note):
            return
        if isinstance(item, Junk):
            self.null_top += 1
        elif isinstance(item, Req):
            self._req(item)
            if item.id is None:
                self.null_top += 1
        elif isinstance(item, Batch):
            sig = []
            for m in item.members:
                if isinstance(m, Junk):
                    sig.append(key(None))
                elif isinstance(m, Req):
                    self._req(m)
                    sig.append(key(m.id))
            if sig:
                self.arrays[tuple(sorted(sig, key=repr))] += 1
        else:  # pragma: no cover
            raise TypeError(item)

    def _req(self, r: Req) -> None:
        if r.id is None:
            return
        k = key(r.id)
        assert k not in self.by_id, f"test bug: id {r.id!r} used twice"
        self.by_id[k] = r


def key(id_: Any) -> tuple[str, str]:
    """A hashable identity for an id: 1, 1.0, "1" and -0.0 are all different ids."""
    return (type(id_).__name__, repr(id_))


def _valid_id(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float, str)) and not isinstance(v, bool))


def predict_member(m: Any) -> Any:
    """One message object (top level or batch member)."""
    if not isinstance(m, dict):
        return Junk()
    has_id = "id" in m
    ok = m.get("jsonrpc") == "2.0" and isinstance(m.get("method"), str)
    if has_id and not _valid_id(m["id"]):
        return Junk()
    if not ok:
        if has_id and m["id"] is not None:
            return Req(m["id"], garbage=True)  # -32600 with the readable id
        return Junk()
    if not has_id:
        return Note()
    return Req(m["id"])


def predict_value(v: Any) -> Any:
    if isinstance(v, list):
        if not v:
            return Junk()  # [] is one -32600, not an array
        return Batch([predict_member(m) for m in v])
    return predict_member(v)


def predict_line(raw: bytes) -> list[Any]:
    """What the server must answer for ``raw`` (bytes as written, possibly holding newlines)."""
    out = []
    for part in raw.split(b"\n"):
        if part.endswith(b"\r"):
            part = part[:-1]
        if not part.strip():
            continue  # blank lines are ignored
        try:
            text = part.decode("utf-8")
            value = json.loads(text, parse_constant=_reject)
        except (UnicodeDecodeError, ValueError, RecursionError):
            out.append(Junk())
            continue
        out.append(predict_value(value))
    return out


def _reject(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# --- random inputs ----------------------------------------------------------------------------------

_CHARS = (
    list("abcxyzABCXYZ0189 _-:,{}[]\"'\\`!@#$%^&*()=+|;<>?")
    + ["\t", "\r", "\n", "\x00", "\x01", "\x1b", "\x7f", "\u0085", "\u00a0", "\u2028", "\u2029"]
    + ["ü", "ß", "é", "我", "好", "🎙", "👩‍💻", "\u202e", "\u0301", "\ufeff", "\uffff", "\U0010ffff"]
)


class Fuzzer:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n = 0

    def new_id(self) -> Any:
        """A fresh id, in every valid form: ints (huge, negative), floats, strings (odd ones)."""
        self.n += 1
        n, r = self.n, self.rng.random()
        if r < 0.25:
            return n
        if r < 0.35:
            return -n
        if r < 0.45:
            return self.rng.choice([2**63 + n, 2**64 + n, -(2**70) - n, 10**25 + n])
        if r < 0.55:
            return self.rng.choice([n + 0.5, -n - 0.25, n * 1e300, n * 5e-320, float(n) * 1e17])
        if r < 0.65:
            return f"{n}"  # the string "5" is not the number 5
        if r < 0.75:
            return f'id {n} ü\r\n\t"\\\u2028🎙'
        if r < 0.8:
            return f"{n}:" + "x" * self.rng.choice([1000, 10_000])
        return f"f{n}"

    def string(self, max_len: int = 12) -> str:
        k = self.rng.randrange(0, max_len + 1)
        s = "".join(self.rng.choice(_CHARS) for _ in range(k))
        return s.replace("/", "").replace(".", "").replace("~", "")  # never an existing path

    def number(self) -> Any:
        return self.rng.choice(
            [
                0,
                -1,
                1,
                self.rng.randrange(-(10**6), 10**6),
                2**53 + 1,
                10**40,
                -(2**64),
                0.5,
                -0.0,
                1e308,
                5e-324,
                self.rng.uniform(-1e6, 1e6),
            ]
        )

    def scalar(self) -> Any:
        r = self.rng.random()
        if r < 0.15:
            return None
        if r < 0.3:
            return self.rng.random() < 0.5
        if r < 0.6:
            return self.number()
        return self.string()

    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth >= 4 or r < 0.5:
            return self.scalar()
        if r < 0.75:
            return [self.value(depth + 1) for _ in range(self.rng.randrange(0, 5))]
        # No "id" key: an object with an id is a request, and those come from request() with
        # ids that are unique (this alphabet cannot spell "id" either).
        keys = ["method", "params", "jsonrpc", "audio_path", "precision", "x"]
        out = {}
        for _ in range(self.rng.randrange(0, 5)):
            k = self.rng.choice(keys) if self.rng.random() < 0.5 else self.string(6)
            out[k] = self.value(depth + 1)
        return out

    def method(self) -> str:
        r = self.rng.random()
        if r < 0.8:
            return self.rng.choice(METHODS)
        return self.rng.choice(["", "Health", "health ", "rpc.discover", "$/progress", "exit"]) + (
            self.string(4) if r > 0.95 else ""
        )

    def params_for(self, method: str) -> Any:
        """Params that are sometimes right, sometimes subtly or wildly wrong."""
        r = self.rng.random()
        if r < 0.1:
            return MISSING
        if r < 0.25:
            return self.value()
        p: dict[str, Any] = {}
        if method == "transcribe":
            p["audio_path"] = self.rng.choice([self.string(20) or "x", "", 5, None])
            for name, gen in (
                ("precision", lambda: self.rng.choice([*PRECISIONS, None, "fp64", 16])),
                ("language", lambda: self.rng.choice(["auto", "de", "", self.string(), None])),
                ("hotwords", lambda: [self.string() for _ in range(self.rng.randrange(4))]),
                ("context", lambda: self.rng.choice([None, self.string(40), 1])),
                ("max_new_tokens", lambda: self.rng.choice([1, 8, 0, -3, 10**30, 2.5, None])),
            ):
                if self.rng.random() < 0.4:
                    p[name] = gen()
        elif method == "reload_model":
            p["precision"] = self.rng.choice([*PRECISIONS, "FP16", None, 1])
            if self.rng.random() < 0.5:
                p["model_path"] = self.rng.choice([self.string(30), None, 3, ["a"]])
            if self.rng.random() < 0.5:
                p["device"] = self.rng.choice(["auto", "cpu", "cuda", "gpu", None, 0])
        elif method in ("cancel", "$/cancelRequest"):
            p["id"] = self.rng.choice(
                [self.rng.randrange(1, max(2, self.n)), f"f{self.n}", None, 1.5]
            )
        if self.rng.random() < 0.2:
            p[self.string(5) or "extra"] = self.value(1)
        return p

    def request(self, *, notification: bool = False, broken: bool = False) -> dict[str, Any]:
        method = self.method()
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        params = self.params_for(method)
        if params is not MISSING:
            msg["params"] = params
        if not notification:
            msg["id"] = self.new_id()
        if broken:  # an envelope that is wrong in one way
            what = self.rng.randrange(6)
            if what == 0:
                msg["jsonrpc"] = self.rng.choice(["1.0", 2.0, None, "2.0 ", ""])
            elif what == 1:
                msg["method"] = self.rng.choice([1, None, ["health"], {"name": "health"}, True])
            elif what == 2:
                msg["id"] = self.rng.choice([True, False, [1], {"id": 1}])
            elif what == 3:
                del msg["jsonrpc"]
            elif what == 4:
                del msg["method"]
            else:
                msg["result"] = {"x": 1}  # a response-looking message with a method: fine
        if method == "shutdown" or msg.get("method") == "shutdown":  # pragma: no cover
            msg["method"] = "health"
        return msg

    def encode(self, obj: Any) -> bytes:
        compact = self.rng.random() < 0.7
        text = json.dumps(
            obj,
            ensure_ascii=self.rng.random() < 0.3,
            separators=(",", ":") if compact else (" , ", " : "),
            allow_nan=False,
        )
        if self.rng.random() < 0.1:
            text = " \t" + text + "  "
        return text.encode("utf-8") + (b"\r\n" if self.rng.random() < 0.3 else b"\n")

    def random_bytes(self) -> bytes:
        k = self.rng.choice([1, 2, 5, 30, 200, 2000])
        data = self.rng.randbytes(k)
        return data + b"\n"

    def invalid_utf8(self) -> bytes:
        bad = self.rng.choice(
            [
                b"\xff",
                b"\xfe\xff",
                b"\x80",
                b"\xc3\x28",
                b"\xc0\xaf",  # overlong "/"
                b"\xe0\x80\xaf",  # overlong
                b"\xed\xa0\x80",  # an encoded surrogate
                b"\xf4\x90\x80\x80",  # above U+10FFFF
                b"\xe6\x88",  # truncated 3-byte sequence
                b"\xf0\x9f\x8e",  # truncated emoji
            ]
        )
        msg = {"jsonrpc": "2.0", "id": self.new_id(), "method": "health", "params": {"p": "@@"}}
        line = json.dumps(msg).encode()
        where = self.rng.randrange(3)
        if where == 0:
            line = line.replace(b"@@", bad)  # inside a string member the server would ignore
        elif where == 1:
            line = bad + line
        else:
            line = line + bad
        return line + b"\n"


# --- the server and the checks -----------------------------------------------------------------------

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def check_wire(raw: list[bytes]) -> None:
    for line in raw:
        assert line.endswith(b"\n") and line.count(b"\n") == 1, line[:300]
        assert b"\r" not in line, line[:300]
        body = line[:-1]
        body.decode("utf-8")  # strict: raises on invalid UTF-8
        json.loads(body, parse_constant=_reject)
        outside = _STRING.sub(b'""', body)
        assert not re.search(rb"\s", outside), f"not compact JSON: {line[:300]!r}"


def check_shape(msg: dict[str, Any]) -> None:
    assert msg.get("jsonrpc") == "2.0", msg
    if "method" in msg:
        assert "id" not in msg and msg["method"] in ("ready", "progress", "segment"), msg
        return
    assert "id" in msg and (("result" in msg) != ("error" in msg)), msg
    if "error" in msg:
        err = msg["error"]
        assert isinstance(err["code"], int) and isinstance(err["message"], str), msg
        assert isinstance(err["data"]["kind"], str), msg


class Session:
    """The fuzzed server and the bookkeeping of what it must answer."""

    def __init__(self, p: RpcProcess) -> None:
        self.p = p
        self.expected = Expected()
        self.sync_n = 0

    def send(self, data: bytes, expect: list[Any] | None = None) -> None:
        for item in predict_line(data) if expect is None else expect:
            self.expected.add(item)
        self.expected.lines += 1
        self.p.send_raw(data)

    def sync(self, timeout: float = 60) -> dict[str, Any]:
        """A health round trip: every inline answer to what was sent before is out by then."""
        self.sync_n += 1
        sid = f"sync-{self.sync_n}"
        self.expected.add(Req(sid))
        assert self.p.proc.poll() is None, f"server died: {self.p.stderr[-3000:]}"
        self.p.send({"jsonrpc": "2.0", "id": sid, "method": "health"})
        r = self.p.response(sid, timeout=timeout)
        assert r["result"]["status"] == "ok", r
        return r["result"]

    def drain(self, timeout: float = 90) -> None:
        """Wait until every request sent so far is answered and the queue is empty (or, when
        something is never answered, until ``timeout``: the final checks then say what is
        missing). Waited for, not inferred from a silence: a busy machine can keep a server quiet
        for seconds while work is still queued."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answered = {key(m.get("id")) for m in _all_answers(self.p) if m.get("id") is not None}
            if all(k in answered for k in self.expected.by_id):
                break
            assert self.p.proc.poll() is None, f"server died: {self.p.stderr[-3000:]}"
            time.sleep(0.05)
        health = self.sync()
        assert health["queue_length"] == 0, health

    def settle(self, timeout: float = 60) -> None:
        """A queued request after everything else, answered by the worker: it runs jobs in order
        and writes a job's answer before it takes the next, and the reader handles lines in order,
        so a late or second answer to anything sent before is on the wire before this one's."""
        sid = "settle"
        self.expected.add(Req(sid, expect_result=True))
        self.p.send({"jsonrpc": "2.0", "id": sid, "method": "unload_model"})
        r = self.p.response(sid, timeout=timeout)
        assert r["result"]["status"] == "success", r

    def since(self, mark: int) -> list[Any]:
        with self.p._cv:
            return [
                m for m in self.p.messages[mark:] if not (isinstance(m, dict) and "method" in m)
            ]


@pytest.fixture(params=["stderr read", "stderr full"])
def fuzz_server(tmp_path: Path, request: pytest.FixtureRequest):
    """The server to fuzz. ``stderr full``: its stderr pipe is never read and is filled up before
    the fuzzing starts (DEBUG logging, a flood of bad notifications that log a line each), so every
    answer below is given while logging has nowhere to go."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    full = request.param == "stderr full"
    env = server_env(
        VIBEVOICE_MODEL_PATH=str(tmp_path / "no model here"),
        VIBEVOICE_PRECISION="fp32",
        VIBEVOICE_LOG_LEVEL="DEBUG" if full else "WARNING",
        OMP_NUM_THREADS="1",
    )
    with RpcProcess(env=env, cwd=str(cwd), read_stderr=not full) as p:
        p.wait_for(lambda m: isinstance(m, dict) and m.get("method") == "ready", timeout=30)
        if full:
            flood = b"".join(b'{"jsonrpc":"2.0","method":"flood %d"}\n' % i for i in range(4000))
            p.send_raw(flood + b'{"jsonrpc":"2.0","id":"flooded","method":"health"}\n')
            assert p.response("flooded", timeout=60)["result"]["log_lines_dropped"] > 0
            with p._cv:  # the flood's answer is not part of the fuzzing's bookkeeping
                p.messages = [m for m in p.messages if m.get("id") != "flooded"]
                p.raw = [r for r in p.raw if b'"flooded"' not in r]
        p.full_stderr = full  # type: ignore[attr-defined]
        yield p


def test_fuzz_the_protocol(fuzz_server: RpcProcess) -> None:
    p = fuzz_server
    s = Session(p)
    f = Fuzzer(SEED)
    started = time.monotonic()

    # 1. Systematic: a wrong type in every param of every method, everything else valid.
    for method, base, fields in WRONG_TYPE_CASES:
        for name, valid in fields.items():
            for label, value in WRONG_VALUES:
                if valid(value):
                    continue
                params = dict(base)
                if value is MISSING:
                    params.pop(name, None)
                else:
                    params[name] = value
                rid = f"wrong {method}.{name}={label}"
                s.send(
                    json.dumps(
                        {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
                    ).encode()
                    + b"\n",
                    [Req(rid, expect_code=-32602, expect_field=name)],
                )
        for label, value in NOT_AN_OBJECT:
            rid = f"params {method}={label}"
            s.send(
                json.dumps(
                    {"jsonrpc": "2.0", "id": rid, "method": method, "params": value}
                ).encode()
                + b"\n",
                [Req(rid, expect_code=-32602)],
            )
    s.sync()

    # 2. Random lines of every kind, in rounds, each ending with a health round trip.
    kinds = [
        ("request", 30),
        ("broken request", 10),
        ("notification", 10),
        ("value", 12),
        ("random bytes", 12),
        ("invalid utf-8", 6),
        ("batch", 10),
    ]
    names = [k for k, _ in kinds]
    weights = [w for _, w in kinds]
    for _round in range(12):
        for _ in range(150):
            kind = f.rng.choices(names, weights)[0]
            if kind == "request":
                s.send(f.encode(f.request()))
            elif kind == "broken request":
                s.send(f.encode(f.request(broken=True)))
            elif kind == "notification":
                s.send(f.encode(f.request(notification=True)))
            elif kind == "value":
                s.send(f.encode(f.value()))
            elif kind == "random bytes":
                s.send(f.random_bytes())
            elif kind == "invalid utf-8":
                s.send(f.invalid_utf8(), [Junk()])
            else:
                members = []
                for _ in range(f.rng.choice([1, 2, 5, 20])):
                    r = f.rng.random()
                    if r < 0.4:
                        members.append(f.request())
                    elif r < 0.6:
                        members.append(f.request(notification=True))
                    elif r < 0.75:
                        members.append(f.request(broken=True))
                    else:
                        members.append(f.value())
                s.send(f.encode(members))
        s.sync()

    # 3. Odd ids, on an inline method so they come back at once.
    odd_ids = [
        0, -0.0, 0.0, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**30),
        1e308, -1e308, 5e-324, 2.5e-310, 0.125, "", " ", "null", "0", "\u0000", "\r", "\r\n",
        "\u2028\u2029", "🎙" * 100, "x" * 100_000, "\\", '"', "\U0010ffff",
    ]  # fmt: skip
    for id_ in odd_ids:
        s.send(
            json.dumps({"jsonrpc": "2.0", "id": id_, "method": "health"}).encode() + b"\n",
            [Req(id_)],
        )
    s.send(b'{"jsonrpc":"2.0","id":null,"method":"health"}\n', [Req(None)])
    s.send(b'{"jsonrpc":"2.0","id":1E2,"method":"nope"}\n', [Req(100.0, expect_code=-32601)])
    s.send(b'{"jsonrpc":"2.0","id":-1.5e-3,"method":"health"}\n', [Req(-0.0015)])
    # ids that are not ids: the request is invalid, the answer's id is null
    for bad in (b"true", b"false", b"[1]", b'{"a":1}', b"1e400", b"-1e999", b'"\\ud800"'):
        s.send(b'{"jsonrpc":"2.0","method":"health","id":' + bad + b"}\n", [Junk()])
    # a lone surrogate anywhere is not valid JSON text for the server; neither is NaN
    s.send(b'{"jsonrpc":"2.0","id":"s","method":"health","params":{"a":"\\udc00"}}\n', [Junk()])
    s.send(b'{"jsonrpc":"2.0","id":NaN,"method":"health"}\n', [Junk()])
    s.sync()

    # 4. 5 MB lines: a request that carries 5 MB, 5 MB of garbage, a 5 MB batch, a 5 MB string.
    s.drain()  # so the 5 MB transcribe finds room in the queue
    five = 5 * 1024 * 1024
    pad = "é😀x" * (five // 8)
    s.send(
        json.dumps(
            {"jsonrpc": "2.0", "id": "5mb", "method": "health", "params": {"pad": pad}}
        ).encode()
        + b"\n",
        [Req("5mb")],
    )
    s.send(
        json.dumps(
            {"jsonrpc": "2.0", "id": "5mb-t", "method": "transcribe", "params": {"audio_path": pad}}
        ).encode()
        + b"\n",
        # No checkpoint (the fixture's): -32004, answered before the 5 MB path is looked at.
        [Req("5mb-t", expect_code=-32004)],
    )
    junk = bytes(b for b in f.rng.randbytes(five) if b != 0x0A)
    s.send(junk + b"\n", [Junk()])
    s.send(b'"' + b"a" * five + b'"\n', [Junk()])
    s.send(b"[" + b"1," * (five // 2) + b"1\n", [Junk()])  # unterminated 2.6M-member array
    members = [{"jsonrpc": "2.0", "id": f"b5-{i}", "method": "health", "params": {"pad": "p" * 2500}}
               for i in range(2000)]  # fmt: skip
    members += [{"jsonrpc": "2.0", "method": "health"}] * 100 + [7, "x", {}]
    s.send(json.dumps(members).encode() + b"\n")
    s.sync(timeout=120)

    # 5. Deep nesting. A server may limit the depth it parses, but it must answer every such line
    # once, with a client error (never an internal one), keep the id when there is one, and live.
    deep = 100_000
    nest = b"[" * deep + b"]" * deep
    s.send(
        b'{"jsonrpc":"2.0","id":"deep-100","method":"health","params":{"x":'
        + b"[" * 100
        + b"]" * 100
        + b"}}\n",
        [Req("deep-100", expect_result=True)],
    )  # modest nesting is just JSON
    # Around the parser's depth limit (~1000 levels, minus the stack the server already uses), in
    # the envelope and in params: each answered once with its id, never an internal error.
    for depth in range(960, 1040):
        for method, params in (("health", {}), ("transcribe", {"audio_path": "nowhere.wav"})):
            rid = f"depth {depth} {method}"
            inner = json.dumps(params)[:-1].encode() + (b", " if params else b"")
            s.send(
                json.dumps({"jsonrpc": "2.0", "id": rid, "method": method}).encode()[:-1]
                + b',"params":'
                + inner
                + b'"x":'
                + b"[" * depth
                + b"]" * depth
                + b"}}\n",
                [Req(rid)],
            )
    s.drain()  # from here on only inline answers: each line's answers come before its sync
    deep_lines = [
        ("unbalanced", b"[" * deep, None),
        ("balanced", nest, None),
        ("objects", b'{"a":' * deep + b"1" + b"}" * deep, None),
        ("request", b'{"jsonrpc":"2.0","id":"deep","method":"health","params":{"x":' + nest + b"}}", "deep"),
        ("in a batch", b'[{"jsonrpc":"2.0","id":"deep-b","method":"health"},' + nest + b"]", "deep-b"),
        ("invalid", b'{"jsonrpc":"1.0","id":"deep-i","method":"health","params":' + nest + b"}", "deep-i"),
    ]  # fmt: skip
    deep_problems = []
    for what, line, id_ in deep_lines:
        mark = len(p.messages)
        s.send(line + b"\n", [])
        s.sync()
        got = [
            m
            for m in s.since(mark)
            if not (isinstance(m, dict) and m.get("id") == f"sync-{s.sync_n}")
        ]
        problem = _check_deep(what, got, id_)
        if problem:
            deep_problems.append(problem)
        for m in got:  # account for what came, so the global checks below stay exact
            if isinstance(m, list):
                s.expected.arrays[tuple(sorted((key(a.get("id")) for a in m), key=repr))] += 1
                for a in m:
                    if a.get("id") is not None:
                        s.expected.by_id.setdefault(key(a.get("id")), Req(a.get("id")))
            elif m.get("id") is None:
                s.expected.null_top += 1
            else:
                s.expected.by_id.setdefault(key(m.get("id")), Req(m.get("id")))
    assert p.proc.poll() is None

    # 6. Let queued work finish; the queue must drain.
    s.drain()
    s.settle()  # a stray second answer would be on the wire by now
    elapsed = time.monotonic() - started
    print(f"fuzz: {s.expected.lines} lines, {len(p.raw)} output lines in {elapsed:.1f} s")

    # --- the checks -------------------------------------------------------------------------
    # The wire format and the message shapes fail at once; the rest is collected, so one run
    # reports every kind of wrong answer.
    with p._cv:
        raw = list(p.raw)
        messages = list(p.messages)
    check_wire(raw)
    assert messages[0]["method"] == "ready"
    answers = []
    top_null = []
    got_arrays: Counter = Counter()
    for m in messages:
        if isinstance(m, list):
            assert m, "an empty array was written"
            for a in m:
                check_shape(a)
            answers += m
            got_arrays[tuple(sorted((key(a["id"]) for a in m), key=repr))] += 1
            continue
        check_shape(m)
        if "method" in m:
            continue
        answers.append(m)
        if m["id"] is None:
            top_null.append(m)
    problems: list[str] = []

    def problem(title: str, items: list[Any]) -> None:
        if items:
            shown = "\n    ".join(_short(i) for i in items[:8])
            problems.append(f"{title} ({len(items)}):\n    {shown}")

    problem(
        "progress/segment for a request never sent",
        [
            m
            for m in messages
            if isinstance(m, dict)
            and m.get("method") in ("progress", "segment")
            and key(m["params"]["id"]) not in s.expected.by_id
        ],
    )
    counts = Counter(key(a["id"]) for a in answers if a["id"] is not None)
    problem(
        "answers to ids never sent (or to notifications)",
        [k for k in counts if k not in s.expected.by_id],
    )
    problem("answered more than once", [(k, n) for k, n in counts.items() if n > 1])
    problem(
        "requests never answered", [r.id for k, r in s.expected.by_id.items() if k not in counts]
    )
    problem(
        "internal errors (an unhandled exception in the server)",
        [a for a in answers if "error" in a and a["error"]["code"] == -32603],
    )
    problem(
        "id-null answers that are not client errors",
        [
            m
            for m in top_null
            if "error" in m and m["error"]["code"] not in CLIENT_ERRORS_FOR_GARBAGE
        ],
    )
    wrong = []
    for a in answers:
        r = s.expected.by_id.get(key(a["id"])) if a["id"] is not None else None
        if r is None:
            continue
        err = a.get("error") or {}
        if r.expect_result and "result" not in a:
            wrong.append((r, a))
        elif r.expect_code is not None and err.get("code") != r.expect_code:
            wrong.append((r, a))
        elif r.expect_field is not None and not (
            str(err["data"].get("field") or "").startswith(r.expect_field)
            and r.expect_field in err["message"]
        ):
            wrong.append((r, a))
        elif r.garbage and err.get("code") not in CLIENT_ERRORS_FOR_GARBAGE:
            wrong.append((r, a))
    problem("wrong answers", wrong)
    if len(top_null) != s.expected.null_top:
        problems.append(
            f"{len(top_null)} top-level answers with id null, expected {s.expected.null_top}"
        )
    if got_arrays != s.expected.arrays:
        problem("batch answers missing", list((s.expected.arrays - got_arrays).elements()))
        problem("batch answers not expected", list((got_arrays - s.expected.arrays).elements()))
    problem("deeply nested lines", deep_problems)
    assert not problems, "\n".join(problems)

    # --- still alive and well --------------------------------------------------------------------
    assert p.proc.poll() is None
    h = p.call("health", timeout=30)["result"]
    assert h["status"] == "ok" and h["queue_length"] == 0, h
    if p.full_stderr:  # type: ignore[attr-defined]
        assert h["log_lines_dropped"] > 0, h
        print(f"fuzz with stderr full: {h['log_lines_dropped']} log lines dropped")
        p.close_stdin()  # and a stop path still works with stderr full
        assert p.wait_exit(30) == 0


def _short(item: Any) -> str:
    text = repr(item)
    return text if len(text) < 300 else text[:300] + "…"


def _check_deep(what: str, got: list[Any], id_: str | None) -> str | None:
    """The answers to one deeply nested line: exactly one line, a client error (or, for a server
    that parses any depth, the batch's array), with the request's id when it has one."""

    def client_error(m: Any, want_id: Any) -> bool:
        return (
            isinstance(m, dict)
            and m.get("id") == want_id
            and "error" in m
            and m["error"]["code"] in CLIENT_ERRORS_FOR_GARBAGE
        )

    def show() -> str:
        return f"{what}: got {json.dumps(got)[:400]}"

    if len(got) != 1:
        return show()
    m = got[0]
    if what == "invalid":  # an invalid request whose id is readable: -32600 with that id
        ok = client_error(m, id_)
    elif what == "request":  # answered with its own id: an error, or the health result
        ok = (
            isinstance(m, dict)
            and m.get("id") == id_
            and ("result" in m or m["error"]["code"] in CLIENT_ERRORS_FOR_GARBAGE)
        )
    elif what == "in a batch":  # the whole batch refused at once, or answered member by member
        ok = client_error(m, None) or (
            isinstance(m, list)
            and [a.get("id") for a in m].count(id_) == 1
            and all(a.get("id") == id_ or client_error(a, None) for a in m)
        )
    elif what == "balanced":
        ok = client_error(m, None) or (
            isinstance(m, list) and len(m) == 1 and client_error(m[0], None)
        )
    else:
        ok = client_error(m, None)
    return None if ok else show()


def _all_answers(p: RpcProcess) -> list[dict[str, Any]]:
    with p._cv:
        out: list[dict[str, Any]] = []
        for m in p.messages:
            if isinstance(m, list):
                out += m
            elif "method" not in m:
                out.append(m)
        return out


# --- the systematic wrong-type table ------------------------------------------------------------------

WRONG_VALUES: list[tuple[str, Any]] = [
    ("missing", MISSING),
    ("null", None),
    ("true", True),
    ("false", False),
    ("zero", 0),
    ("negative", -1),
    ("int", 7),
    ("float", 1.5),
    ("integral-float", 2.0),
    ("huge", 10**30),
    ("string", "x"),
    ("empty-string", ""),
    ("bad-precision", "fp64"),
    ("upper-precision", "FP16"),
    ("bad-device", "gpu"),
    ("array", []),
    ("string-array", ["a", "b"]),
    ("mixed-array", ["a", 1]),
    ("object", {}),
    ("object2", {"a": 1}),
]

NOT_AN_OBJECT: list[tuple[str, Any]] = [
    ("null", None),
    ("array", []),
    ("by-position", ["/x.wav"]),
    ("number", 3),
    ("string", "health"),
    ("true", True),
]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _optional(check: Any) -> Any:
    return lambda v: v is MISSING or v is None or check(v)


WRONG_TYPE_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "transcribe",
        {"audio_path": "no such file.wav", "max_new_tokens": 1},
        {
            "audio_path": lambda v: isinstance(v, str) and v != "",
            "precision": _optional(lambda v: v in PRECISIONS),
            "language": lambda v: v is MISSING or isinstance(v, str),
            "hotwords": lambda v: (
                v is MISSING or (isinstance(v, list) and all(isinstance(x, str) for x in v))
            ),
            "context": _optional(lambda v: isinstance(v, str)),
            "max_new_tokens": _optional(lambda v: _is_int(v) and v > 0),
        },
    ),
    (
        "reload_model",
        {"precision": "fp32"},
        {
            "precision": lambda v: v in PRECISIONS,
            "model_path": _optional(lambda v: isinstance(v, str)),
            "device": _optional(lambda v: v in ("auto", "cuda", "cpu")),
        },
    ),
    # any id a request can have (number or string; a null id cannot be cancelled)
    ("cancel", {"id": "nothing"}, {"id": lambda v: _is_int(v) or isinstance(v, (float, str))}),
    (
        "$/cancelRequest",
        {"id": "nothing"},
        {"id": lambda v: _is_int(v) or isinstance(v, (float, str))},
    ),
    ("health", {}, {}),
    ("unload_model", {}, {}),
]
