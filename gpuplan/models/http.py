"""What the Hugging Face Hub and ModelScope clients share: offline mode, timeouts, the user agent, plain GETs and
the one-line errors for a server that cannot be reached or answers with an error.

Imported on every model lookup (offline mode is decided here), so its module level stays light: the HTTP
machinery is imported inside :func:`get`.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from typing import Any

from gpuplan.errors import HubUnavailableError, InputError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "HttpStatusError",
    "get",
    "known_network_reason",
    "library_version",
    "user_agent",
    "network_reason",
    "offline_mode",
    "request_timeout",
    "status_error",
    "unreachable_error",
]

# The same default huggingface_hub uses for its HEAD and download requests
# (huggingface_hub/constants.py: DEFAULT_ETAG_TIMEOUT = DEFAULT_DOWNLOAD_TIMEOUT = 10).
DEFAULT_TIMEOUT_S = 10.0
TIMEOUT_ENV = "GPUPLAN_HUB_TIMEOUT"
LIBRARY_NAME = "gpuplan"

# huggingface_hub/constants.py: ENV_VARS_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}, compared with value.upper(),
# and HF_HUB_OFFLINE = _is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")).
_TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline_mode(offline: bool | None = None) -> bool:
    """Whether to stay off the network: ``offline`` when given (``--offline``), else HF_HUB_OFFLINE.

    The one place gpuplan reads the variable, read on each call with huggingface_hub's own rule (its first
    non-empty value of HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE is true when it is 1, ON, YES or TRUE, in any case).
    """
    if offline is not None:
        return offline
    value = next((os.environ[name] for name in _OFFLINE_VARIABLES if os.environ.get(name)), "")
    return value.upper() in _TRUE_VALUES


def request_timeout(timeout_s: float | None) -> float:
    """Seconds each HTTP request may take: ``timeout_s``, else GPUPLAN_HUB_TIMEOUT, else 10 s."""
    if timeout_s is None:
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_TIMEOUT_S
        try:
            timeout_s = float(raw)
        except ValueError:
            raise InputError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
        source = TIMEOUT_ENV
    else:
        source = "the Hub timeout"
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise InputError(f"{source} must be a positive number of seconds, got {timeout_s!r}")
    return float(timeout_s)


@functools.cache
def library_version() -> str | None:
    """gpuplan's installed version, for the user agent (None when running from an uninstalled source tree)."""
    from importlib import metadata

    try:
        return metadata.version(LIBRARY_NAME)
    except metadata.PackageNotFoundError:
        return None


def user_agent() -> str:
    version = library_version()
    return f"{LIBRARY_NAME}/{version}" if version else LIBRARY_NAME


# --- errors ----------------------------------------------------------------------------------------------


def network_reason(exc: BaseException) -> str:
    """'timed out', 'connection refused', 'host name not resolved', or the error itself."""
    return known_network_reason(exc) or f"{type(exc).__name__}: {first_line(exc)}"


def known_network_reason(exc: BaseException) -> str | None:
    """'timed out', 'connection refused' or 'host name not resolved' when one of them stopped the request.

    The root cause sits a few levels down: httpx wraps httpcore's error, urllib wraps the socket error in
    ``URLError.reason``, huggingface_hub raises its own error from the one that stopped the request.
    """
    import socket

    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending and len(seen) < 50:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, TimeoutError) or "Timeout" in type(current).__name__ or "timed out" in str(current):
            return "timed out"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, socket.gaierror):
            return "host name not resolved"
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        pending.extend(a for a in current.args if isinstance(a, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unreachable_error(endpoint: str, exc: BaseException, *, endpoint_variable: str,
                      fallback: str) -> HubUnavailableError:
    """The error for a request that got no answer: no connection, no name, or no reply in time."""
    return HubUnavailableError(
        f"cannot reach {endpoint} ({network_reason(exc)})",
        hint=f"check the network or {endpoint_variable}; offline, {fallback} (raise {TIMEOUT_ENV} for a slow link)",
    )


def status_error(status: int, detail: str, *, endpoint: str, what: str, server_hint: str = "try again later",
                 rate_hint: str = "wait a minute and try again") -> HubUnavailableError:
    """The error for an answer that is neither the file nor a not-found or access error of the service."""
    if status >= 500:
        return HubUnavailableError(f"server error at {endpoint} ({detail}) while fetching {what}", hint=server_hint)
    if status == 429:
        return HubUnavailableError(f"{endpoint} is rate-limiting requests ({detail})", hint=rate_hint)
    return HubUnavailableError(f"unexpected answer from {endpoint} for {what} ({detail})")


# --- plain GET (ModelScope; the Hub goes through huggingface_hub) ------------------------------------------


class HttpStatusError(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body

    def server_message(self) -> str | None:
        """The message of a JSON error body (ModelScope: {"Code": ..., "Message": ..., "Success": false})."""
        try:
            data = json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        if isinstance(data, dict):
            for key in ("Message", "message", "msg", "error", "detail"):
                value = data.get(key)
                if isinstance(value, str) and value.strip():
                    return value.strip().splitlines()[0][:300]
        return None


# Error bodies are read up to this size: enough for any JSON error message.
_ERROR_BODY_BYTES = 64 * 1024


def get(url: str, *, timeout: float, max_bytes: int, headers: dict[str, str] | None = None,
        on_unreachable: Callable[[BaseException], HubUnavailableError]) -> bytes:
    """GET ``url`` once (no retries), following redirects, reading at most ``max_bytes + 1`` bytes.

    Credentials (``Authorization``, ``Cookie``) are never sent to another host on a redirect. Raises
    HttpStatusError for an error status and ``on_unreachable(exc)`` (a HubUnavailableError) when no answer came.
    """
    import urllib.error
    import urllib.request
    from http.client import HTTPException

    request = urllib.request.Request(
        url, headers={"User-Agent": user_agent(), **(headers or {})}, method="GET"
    )
    try:
        with _opener().open(request, timeout=timeout) as response:
            return response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(_ERROR_BODY_BYTES)
        except (OSError, HTTPException):
            body = b""
        raise HttpStatusError(exc.code, body) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException, OSError) as exc:
        raise on_unreachable(exc) from exc


@functools.cache
def _opener() -> Any:
    import urllib.parse
    import urllib.request

    class SameHostAuthRedirect(urllib.request.HTTPRedirectHandler):
        """Follow redirects (ModelScope sends downloads to object storage) but drop the credentials when the
        new location is another host, as requests does (Session.rebuild_auth)."""

        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            old_host, new_host = urllib.parse.urlsplit(req.full_url).netloc, urllib.parse.urlsplit(newurl).netloc
            if new is not None and old_host != new_host:
                for header in ("Authorization", "Cookie"):
                    new.headers.pop(header, None)
                    new.unredirected_hdrs.pop(header, None)
            return new

    return urllib.request.build_opener(SameHostAuthRedirect)
