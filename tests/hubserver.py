"""A small stand-in for the Hugging Face Hub, served over real HTTP on 127.0.0.1 for tests.

It answers the requests huggingface_hub makes to fetch a file and read safetensors headers:

* ``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}``: regular files answer 200 with
  ``X-Repo-Commit``, ``ETag`` and ``Content-Length``; ``*.safetensors`` files are LFS files and answer
  302 to ``/cdn/{sha256}`` with ``X-Linked-Etag`` / ``X-Linked-Size``, which honours ``Range``.
* Errors carry the ``X-Error-Code`` / ``X-Error-Message`` headers that huggingface_hub's
  ``hf_raise_for_status`` (huggingface_hub/utils/_http.py) dispatches on: ``RepoNotFound``,
  ``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``, and the "Invalid credentials in
  Authorization header" message. As that function's comments describe, a missing or private repo
  answers 401 to an anonymous request and 404 to an authenticated one; a gated repo answers 401
  without a token and 403 with a token that has no access.

Per-repo modes: ``ok``, ``gated``, ``private`` (both unlocked by the repo's token), ``error`` (500),
``slow`` (waits ``slow_s`` seconds, or until the server stops, before answering), ``slow-download``
(the same for GET only: the HEAD that locates a file answers at once), ``error-download`` (500 for GET
only).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import quote, unquote, urlsplit

# Bytes per element of the safetensors dtypes used in tests
# (https://huggingface.co/docs/safetensors/index#format; names as in safetensors' Dtype enum).
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "F32": 4,
    "I64": 8,
    "F64": 8,
}

_RESOLVE = re.compile(r"^/(?P<repo>.+?)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha256>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(?P<start>\d+)-(?P<end>\d*)$")


def safetensors_bytes(
    tensors: dict[str, tuple[str, list[int]]], *, metadata: dict[str, str] | None = None, pad_to: int = 0
) -> bytes:
    """A valid .safetensors file: 8-byte little-endian header length, JSON header, zeroed tensor data.

    ``pad_to`` pads the JSON header with spaces (allowed by the format) to at least that many bytes.
    """
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = DTYPE_BYTES[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * max(0, pad_to - len(raw))
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def git_blob_id(content: bytes) -> str:
    """The git object id of a file, which the Hub sends as the ETag of a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Snapshot:
    commit: str
    files: dict[str, bytes]


@dataclass
class FakeRepo:
    snapshots: dict[str, Snapshot]  # revision name -> snapshot
    mode: str = "ok"
    token: str | None = None
    renamed_to: str | None = None

    def find(self, revision: str) -> Snapshot | None:
        if revision in self.snapshots:
            return self.snapshots[revision]
        return next((s for s in self.snapshots.values() if s.commit == revision), None)


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    range: str | None


@dataclass
class FakeHub:
    """The fake Hub; use as a context manager, or call start() and stop()."""

    slow_s: float = 5.0
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    valid_tokens: set[str] = field(default_factory=set)  # tokens the Hub knows (repo tokens are added)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._blobs: dict[str, bytes] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- set-up --------------------------------------------------------------------------------------

    def add(
        self,
        repo_id: str,
        files: dict[str, bytes | dict] | None = None,
        *,
        revisions: dict[str, dict[str, bytes | dict]] | None = None,
        mode: str = "ok",
        token: str | None = None,
        renamed_to: str | None = None,
    ) -> FakeRepo:
        """Add a repo; ``files`` is the main branch, ``revisions`` adds other branches or tags.

        A dict value is served as its JSON; bytes are served as they are.
        """
        assert mode in {"ok", "gated", "private", "error", "slow", "slow-download", "error-download"}, mode
        snapshots = {}
        for revision, content in {"main": files or {}, **(revisions or {})}.items():
            encoded = {n: json.dumps(v).encode() if isinstance(v, dict) else v for n, v in content.items()}
            commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
            snapshots[revision] = Snapshot(commit=commit, files=encoded)
            for name, data in encoded.items():
                if name.endswith(".safetensors"):
                    self._blobs[hashlib.sha256(data).hexdigest()] = data
        repo = FakeRepo(snapshots=snapshots, mode=mode, token=token, renamed_to=renamed_to)
        if token is not None:
            self.valid_tokens.add(token)
        self.repos[repo_id] = repo
        return repo

    def commit(self, repo_id: str, revision: str = "main") -> str:
        return self.repos[repo_id].snapshots[revision].commit

    def requests_for(self, repo_id: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(f"/{repo_id}/")]

    # -- life cycle ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "the fake Hub is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake slow handlers and wait for every handler thread to end."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # joins the handler threads (block_on_close)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() waits for the handlers
    block_on_close = True
    hub: FakeHub

    def handle_error(self, request: object, client_address: object) -> None:
        error = sys.exc_info()[1]
        # A client that gave up (timeout) before the answer is expected, not a server bug.
        if error is not None and not isinstance(error, (BrokenPipeError, ConnectionResetError)):
            with self.hub._lock:
                self.hub.errors.append(error)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive to wait for
    timeout = 5  # bounds a read from a client that connects and sends nothing

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class signature
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    # -- routing -------------------------------------------------------------------------------------

    def _serve(self, *, body: bool) -> None:
        hub = self.server.hub
        path = urlsplit(self.path).path
        with hub._lock:
            hub.requests.append(
                Request(self.command, path, self.headers.get("Authorization"), self.headers.get("Range"))
            )
        if cdn := _CDN.match(path):
            data = hub._blobs.get(cdn["sha256"])
            if data is None:
                self._answer(404, body=body)
            else:
                self._content(data, {"ETag": f'"{cdn["sha256"]}"'}, body=body)
            return
        resolve = _RESOLVE.match(path)
        if resolve is None:
            self._answer(404, body=body, message="Not Found")
            return
        repo_id = unquote(resolve["repo"])
        revision = unquote(resolve["revision"])
        filename = unquote(resolve["filename"])
        repo = hub.repos.get(repo_id)
        token = self._token()

        if token is not None and token not in hub.valid_tokens:
            self._answer(401, body=body, message="Invalid credentials in Authorization header")
            return
        if repo is None or (repo.mode == "private" and token != repo.token):
            self._answer(
                401 if token is None else 404, body=body, code="RepoNotFound", message="Repository not found"
            )
            return
        if repo.mode == "gated" and token != repo.token:
            self._answer(
                401 if token is None else 403,
                body=body,
                code="GatedRepo",
                message=f"Access to model {repo_id} is restricted.",
            )
            return
        if repo.mode == "error" or (repo.mode == "error-download" and self.command == "GET"):
            self._answer(500, body=body, message="Internal Error")
            return
        slow = repo.mode == "slow" or (repo.mode == "slow-download" and self.command == "GET")
        if slow and hub._stopping.wait(hub.slow_s):
            return  # the server is stopping: the client gave up long ago
        if repo.renamed_to is not None:
            location = f"/{repo.renamed_to}/resolve/{quote(revision, safe='')}/{quote(filename)}"
            self._answer(307, body=body, headers={"Location": location})
            return

        snapshot = repo.find(revision)
        if snapshot is None:
            self._answer(404, body=body, code="RevisionNotFound", message=f"Invalid rev id: {revision}")
            return
        commit = {"X-Repo-Commit": snapshot.commit}
        data = snapshot.files.get(filename)
        if data is None:
            self._answer(404, body=body, code="EntryNotFound", message="Entry not found", headers=commit)
            return
        if filename.endswith(".safetensors"):
            sha256 = hashlib.sha256(data).hexdigest()
            headers = {
                **commit,
                "Location": f"{hub.url}/cdn/{sha256}",
                "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": str(len(data)),
            }
            self._answer(302, body=body, headers=headers)
            return
        self._content(data, {**commit, "ETag": f'"{git_blob_id(data)}"'}, body=body)

    # -- answers -------------------------------------------------------------------------------------

    def _token(self) -> str | None:
        value = self.headers.get("Authorization") or ""
        return value[len("Bearer ") :] if value.startswith("Bearer ") else None

    def _answer(
        self,
        status: int,
        *,
        body: bool,
        code: str | None = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        payload = json.dumps({"error": message}).encode() if message else b""
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        if message:
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body and payload:
            self.wfile.write(payload)

    def _content(self, data: bytes, headers: dict[str, str], *, body: bool) -> None:
        status, chunk = 200, data
        wanted = _RANGE.match(self.headers.get("Range") or "")
        if wanted:
            start = int(wanted["start"])
            end = min(int(wanted["end"]) if wanted["end"] else len(data) - 1, len(data) - 1)
            if start >= len(data):
                self._answer(416, body=body, headers={"Content-Range": f"bytes */{len(data)}"})
                return
            status, chunk = 206, data[start : end + 1]
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if body:
            self.wfile.write(chunk)
