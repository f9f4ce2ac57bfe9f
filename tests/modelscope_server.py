"""A small stand-in for ModelScope's file download API, served over real HTTP on 127.0.0.1 for tests.

It answers ``GET /api/v1/models/{owner}/{name}/repo?Revision={rev}&FilePath={path}`` the way the SDK expects
(modelscope_hub, src/modelscope_hub/_legacy_api.py: get_download_url / download_stream): the file's bytes
with 200, or an error status with ModelScope's JSON envelope ``{"Code": ..., "Message": ..., "Success":
false}`` (src/modelscope_hub/errors.py reads ``Message``).

Per-repo modes: ``ok``; ``private`` (404 without a token, as ModelScope hides private repos; 401 with a wrong
one); ``forbidden`` (403 even with a token); ``error`` (500); ``slow`` (waits ``slow_s`` seconds, or until the
server stops); ``redirect`` (302 to ``/oss/...`` on the host name ``localhost``, which serves the file: a
different host than 127.0.0.1, as object storage is); ``envelope`` (200 with a failure envelope instead of
the file).
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

MODES = {"ok", "private", "forbidden", "error", "slow", "redirect", "envelope"}


@dataclass
class MsRepo:
    files: dict[str, dict[str, bytes]]  # revision -> path -> content
    mode: str = "ok"
    token: str | None = None


@dataclass
class MsRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    host: str | None
    authorization: str | None
    cookie: str | None


@dataclass
class FakeModelScope:
    """The fake ModelScope; use as a context manager, or call start() and stop()."""

    slow_s: float = 5.0
    repos: dict[str, MsRepo] = field(default_factory=dict)
    requests: list[MsRequest] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def add(
        self,
        repo_id: str,
        files: dict[str, bytes | dict] | None = None,
        *,
        revisions: dict[str, dict[str, bytes | dict]] | None = None,
        mode: str = "ok",
        token: str | None = None,
    ) -> MsRepo:
        """Add a repo; ``files`` is the master branch. A dict value is served as its JSON."""
        assert mode in MODES, mode
        encoded = {
            rev: {p: json.dumps(v).encode() if isinstance(v, dict) else v for p, v in content.items()}
            for rev, content in {"master": files or {}, **(revisions or {})}.items()
        }
        repo = MsRepo(files=encoded, mode=mode, token=token)
        self.repos[repo_id] = repo
        return repo

    @property
    def port(self) -> int:
        assert self._server is not None, "the fake ModelScope is not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeModelScope:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-modelscope",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeModelScope:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    fake: FakeModelScope

    def handle_error(self, request: object, client_address: object) -> None:
        error = sys.exc_info()[1]
        if error is not None and not isinstance(error, (BrokenPipeError, ConnectionResetError)):
            with self.fake._lock:
                self.fake.errors.append(error)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    timeout = 5

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        fake = self.server.fake
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        with fake._lock:
            fake.requests.append(
                MsRequest(
                    "GET",
                    parts.path,
                    query,
                    self.headers.get("Host"),
                    self.headers.get("Authorization"),
                    self.headers.get("Cookie"),
                )
            )
        if parts.path.startswith("/oss/"):
            # /oss/{owner}/{name}/{revision}/{file}: the object-storage location a redirect points to
            _, _, owner, name, revision, filename = parts.path.split("/", 5)
            repo = fake.repos.get(f"{owner}/{name}")
            data = repo.files.get(revision, {}).get(filename) if repo else None
            if data is None:
                self._json(404, {"Code": 404, "Message": "object not found", "Success": False})
            else:
                self._send(200, data, "application/octet-stream")
            return
        segments = parts.path.strip("/").split("/")
        if len(segments) != 6 or segments[:3] != ["api", "v1", "models"] or segments[5] != "repo":
            self._json(404, {"Code": 404, "Message": "Not Found", "Success": False})
            return
        repo_id = f"{segments[3]}/{segments[4]}"
        revision = (query.get("Revision") or ["master"])[0]
        filename = (query.get("FilePath") or [""])[0]
        repo = fake.repos.get(repo_id)
        token = self._token()
        if repo is None or (repo.mode == "private" and token is None):
            self._json(
                404,
                {
                    "Code": 10010205001,
                    "Message": f"The request model: {repo_id} does not exist!",
                    "Success": False,
                },
            )
            return
        if repo.mode == "private" and token != repo.token:
            self._json(401, {"Code": 401, "Message": "Invalid access token", "Success": False})
            return
        if repo.mode == "forbidden":
            self._json(
                403,
                {"Code": 403, "Message": "You do not have permission to access this model", "Success": False},
            )
            return
        if repo.mode == "error":
            self._json(500, {"Code": 500, "Message": "Internal Server Error", "Success": False})
            return
        if repo.mode == "slow" and fake._stopping.wait(fake.slow_s):
            return
        if repo.mode == "envelope":
            self._json(
                200, {"Code": 10010205001, "Message": f"Revision {revision} does not exist", "Success": False}
            )
            return
        data = repo.files.get(revision, {}).get(filename)
        if data is None:
            self._json(
                404,
                {
                    "Code": 10010205001,
                    "Message": f"file {filename} not found at {revision}",
                    "Success": False,
                },
            )
            return
        if repo.mode == "redirect":
            location = f"http://localhost:{fake.port}/oss/{repo_id}/{revision}/{filename}"
            self._send(302, b"", "text/plain", {"Location": location})
            return
        self._send(200, data, "application/octet-stream")

    def _token(self) -> str | None:
        value = self.headers.get("Authorization") or ""
        return value[len("Bearer ") :] if value.startswith("Bearer ") else None

    def _json(self, status: int, body: dict) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)
