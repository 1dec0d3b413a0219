"""A loopback stand-in of the Hugging Face Hub (127.0.0.1 only) for the real huggingface_hub client.

It answers what the client asks when ``HF_ENDPOINT`` points here: model info with ``siblings`` (sizes,
git blob ids, LFS sha256), the file tree, and ``HEAD``/``GET /<repo>/resolve/<rev>/<path>`` with
``ETag``, ``X-Repo-Commit``, ``Content-Length`` and ``Range``. Faults are switched on per file:
a pause after N bytes (until :attr:`FakeHub.release` is set: tests wait on events, not sleeps), a
truncated body, corrupt bytes, a required token, a gated repo, a rate limit (for benchmarks).

A hostile mirror, for the download's name checks: a file may be stored under any name
(``../../x.json``, ``/abs/x.json``); it is listed as it is and served at whatever URL the client
normalises its name to. :attr:`FakeHub.siblings` replaces the listing with raw entries (wrong types,
missing fields, negative sizes, 10,000 files).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Served:
    method: str
    path: str
    start: int  # first byte asked for (Range), 0 without
    sent: int  # body bytes written


@dataclass
class FakeHub:
    repos: dict[str, dict[str, bytes]]
    token: str | None = None  # when set, requests without "Bearer <token>" get 401
    gated: set[str] = field(default_factory=set)
    pause_at: dict[str, int] = field(default_factory=dict)  # file -> pause after N bytes
    truncate_once: dict[str, int] = field(default_factory=dict)  # file -> end the body after N
    corrupt: set[str] = field(default_factory=set)  # files served with one byte flipped
    rate: float | None = None  # bytes per second per response (benchmarks)
    info_gate: threading.Event | None = None  # model info waits for this event when set
    siblings: list[Any] | None = None  # when set, model info lists these raw entries instead
    chunk: int = 64 * 1024

    def __post_init__(self) -> None:
        self.served: list[Served] = []
        self.paused = threading.Event()  # set when a response reached its pause point
        self.release = threading.Event()  # set to let paused responses go on
        self._lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @classmethod
    def from_dir(cls, repo_id: str, folder: Path, **kwargs: Any) -> FakeHub:
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        return cls({repo_id: files}, **kwargs)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def bytes_sent(self, name: str | None = None) -> int:
        with self._lock:
            return sum(
                s.sent
                for s in self.served
                if s.method == "GET" and (name is None or s.path == name)
            )

    def gets(self, name: str) -> list[Served]:
        with self._lock:
            return [s for s in self.served if s.method == "GET" and s.path == name]

    def record(self, s: Served) -> None:
        with self._lock:
            self.served.append(s)


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    # --- helpers ------------------------------------------------------------------------------
    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _authorized(self, repo: str) -> bool:
        hub = self.hub
        if hub.token is not None:
            if self.headers.get("Authorization") != f"Bearer {hub.token}":
                self._error(401, None, "Invalid credentials in Authorization header")
                return False
        if repo in hub.gated:
            self._error(403, "GatedRepo", "Access to model is restricted.")
            return False
        return True

    # --- routes -------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        path = unquote(urlsplit(self.path).path)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            return self._info(m.group(1), m.group(2) or "main")
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?", path)
        if m:
            return self._tree(m.group(1), m.group(2))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._resolve(m.group(1), m.group(2), m.group(3))
        hostile = self._hostile(path)
        if hostile is not None:
            return self._resolve(*hostile)
        self._error(404, None, "Not Found")

    def _hostile(self, path: str) -> tuple[str, str, str] | None:
        """A file stored under a name with ``..`` or a leading ``/``: the client's URL library
        removes the dot segments, so its request arrives at another path; match it there."""
        for repo, files in self.hub.repos.items():
            for name in files:
                for rev in ("main", COMMIT):
                    url = posixpath.normpath(f"/{repo}/resolve/{rev}/{name}".replace("//", "/"))
                    if url == posixpath.normpath(path.replace("//", "/")):
                        return repo, rev, name
        return None

    def _repo(self, repo: str, rev: str) -> dict[str, bytes] | None:
        files = self.hub.repos.get(repo)
        if files is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if not self._authorized(repo):
            return None
        if rev not in ("main", COMMIT):
            self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
            return None
        return files

    def _siblings(self, files: dict[str, bytes]) -> list[dict[str, Any]]:
        out = []
        for name, data in files.items():
            s: dict[str, Any] = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
            if name.endswith(".safetensors"):
                s["lfs"] = {
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
            out.append(s)
        return out

    def _info(self, repo: str, rev: str) -> None:
        if self.hub.info_gate is not None:
            self.hub.info_gate.wait(120)
        files = self._repo(repo, rev)
        if files is None:
            return
        siblings = self.hub.siblings if self.hub.siblings is not None else self._siblings(files)
        self._json(200, {"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings})

    def _tree(self, repo: str, rev: str) -> None:
        files = self._repo(repo, rev)
        if files is None:
            return
        tree = []
        for s in self._siblings(files):
            entry = {"type": "file", "oid": s["blobId"], "size": s["size"], "path": s["rfilename"]}
            if "lfs" in s:
                entry["lfs"] = {"oid": s["lfs"]["sha256"], "size": s["size"], "pointerSize": 134}
            tree.append(entry)
        self._json(200, tree)

    def _resolve(self, repo: str, rev: str, name: str) -> None:
        hub = self.hub
        files = self._repo(repo, rev)
        if files is None:
            return
        if name not in files:
            self._error(404, "EntryNotFound", f"{name} does not exist")
            return
        data = files[name]
        if name in hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        etag = (
            hashlib.sha256(data).hexdigest() if name.endswith(".safetensors") else git_blob_id(data)
        )
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            if m and int(m.group(1)) < len(data):
                start, status = int(m.group(1)), 206
        body_len = len(data) - start
        self.send_response(status)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(body_len))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            hub.record(Served("HEAD", name, start, 0))
            return
        served = Served("GET", name, start, 0)
        hub.record(served)
        end = len(data)
        cut = hub.truncate_once.pop(name, None)
        if cut is not None:
            end = min(end, start + cut)
        pause = hub.pause_at.get(name)
        pos = start
        t0 = time.monotonic()
        try:
            while pos < end:
                n = min(hub.chunk, end - pos)
                if pause is not None and pos < pause <= pos + n:
                    n = pause - pos
                if n:
                    self.wfile.write(data[pos : pos + n])
                    self.wfile.flush()
                    pos += n
                    served.sent += n
                if pause is not None and pos == pause:
                    pause = None
                    hub.paused.set()
                    hub.release.wait(120)
                if hub.rate:
                    ahead = served.sent / hub.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            return
        if end < len(data):  # a truncated body: close the connection mid-response
            self.close_connection = True
