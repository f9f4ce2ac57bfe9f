"""Fetch a model's config (and its safetensors parameter counts) from the Hugging Face Hub.

Only ``config.json`` (or ``params.json`` for Meta's original Llama repos) and the safetensors headers
are read: never the weights. Downloads go through ``huggingface_hub.hf_hub_download`` so they land in
the standard Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``) and can be reused offline.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` once, when
it is first imported; this module reads them on every call instead, so a process (or a test) that
changes them later is still honoured. ``HF_TOKEN`` is read by huggingface_hub itself on each request.

Works with huggingface_hub 0.24 and later (requests-based before 1.0, httpx-based from 1.0): only
public functions are called, errors are classified by HTTP status and the Hub's ``X-Error-Code`` header
rather than by exception classes that moved between versions.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydantic

from gpuplan.errors import (
    ConfigError,
    GatedRepoError,
    HubUnavailableError,
    InputError,
    ModelNotFoundError,
)

__all__ = ["HubModel", "fetch_model", "DEFAULT_TIMEOUT_S", "CONFIG_FILENAMES"]

DEFAULT_ENDPOINT = "https://huggingface.co"
# The same default huggingface_hub uses for its HEAD and download requests
# (huggingface_hub/constants.py: DEFAULT_ETAG_TIMEOUT = DEFAULT_DOWNLOAD_TIMEOUT = 10).
DEFAULT_TIMEOUT_S = 10.0
TIMEOUT_ENV = "GPUPLAN_HUB_TIMEOUT"

# Meta's original Llama repos (e.g. meta-llama/Llama-2-7b) ship params.json instead of config.json.
CONFIG_FILENAMES = ("config.json", "params.json")

SAFETENSORS_SINGLE_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
# huggingface_hub reads the first 100 kB of a safetensors file in one range request because "97% of
# safetensors files have a metadata size < 100kb" (huggingface_hub/hf_api.py,
# HfApi.parse_safetensors_file_metadata; https://github.com/huggingface/huggingface_hub/pull/1855).
_SAFETENSORS_FIRST_READ = 100_000
# Upper bound on a header's length, as huggingface_hub enforces it
# (huggingface_hub/constants.py: SAFETENSORS_MAX_HEADER_LENGTH = 25_000_000).
_SAFETENSORS_MAX_HEADER = 25_000_000
_SAFETENSORS_MAX_WORKERS = 8

# Values huggingface_hub accepts as true for HF_HUB_OFFLINE
# (huggingface_hub/constants.py: ENV_VARS_TRUE_VALUES).
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")

# Guards the huggingface_hub module settings changed for the duration of a download.
_HUB_SETTINGS_LOCK = threading.Lock()


class HubModel(pydantic.BaseModel):
    """A model config fetched from the Hub (or from the local Hugging Face cache)."""

    model_config = pydantic.ConfigDict(frozen=True)

    repo_id: str
    revision: str | None
    """The revision as asked (branch, tag or commit); None means the default branch."""
    commit: str | None
    """The commit the revision resolved to, when the server (or the cache) tells it."""
    endpoint: str
    filename: str
    config: dict[str, Any]
    safetensors_parameters: dict[str, int] | None
    """Parameter count per safetensors dtype (``{"BF16": 123}``); None if unknown or not safetensors."""
    from_cache: bool
    """True when served from the local cache without asking the Hub."""


def fetch_model(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    offline: bool | None = None,
    timeout_s: float | None = None,
    with_safetensors: bool = True,
) -> HubModel:
    """Fetch ``config.json`` (or ``params.json``) of a Hub model and count its safetensors parameters.

    ``token=None`` lets huggingface_hub find one (``HF_TOKEN`` or the saved login). ``offline=None``
    follows ``HF_HUB_OFFLINE``. ``timeout_s`` (default: ``GPUPLAN_HUB_TIMEOUT``, else 10 s) bounds
    each HTTP request. When the Hub cannot be reached or fails with a server error, a copy of the
    config already in the local cache is used instead (``from_cache=True``).

    Raises ModelNotFoundError, GatedRepoError, HubUnavailableError or ConfigError.
    """
    _validate_repo_id(repo_id)
    endpoint = _endpoint()
    cache_dir = _cache_dir()
    timeout = request_timeout(timeout_s)
    token = token or None
    if offline is None:
        offline = _env_offline()

    if offline:
        cached = _from_cache(repo_id, revision, cache_dir)
        if cached is None:
            raise HubUnavailableError(
                f"'{repo_id}'{_at(revision)} is not in the local Hugging Face cache and the Hub is off-limits"
                " (offline mode)",
                hint="unset HF_HUB_OFFLINE to download it, use a bundled model id, or pass a local path"
                " to a config.json",
            )
        filename, path, commit = cached
        return _build(repo_id, revision, commit, endpoint, filename, path, None, from_cache=True)

    try:
        filename, commit = _locate_config(repo_id, revision, endpoint, token, timeout)
        path = _download(repo_id, filename, revision, endpoint, token, timeout, cache_dir)
    except HubUnavailableError:
        cached = _from_cache(repo_id, revision, cache_dir)
        if cached is None:
            raise
        filename, path, commit = cached
        return _build(repo_id, revision, commit, endpoint, filename, path, None, from_cache=True)

    commit = commit or _commit_from_path(path)
    counts = (
        _safetensors_parameters(repo_id, commit or revision, endpoint, token, timeout)
        if with_safetensors
        else None
    )
    return _build(repo_id, revision, commit, endpoint, filename, path, counts, from_cache=False)


# --- configuration read at call time ---------------------------------------------------------------


def _validate_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ModelNotFoundError(
            f"'{repo_id}' is not a valid Hugging Face model id: {_first_line(exc)}",
            hint="a Hub id looks like 'organization/name'; for a local model pass the path to its folder",
        ) from exc


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "").strip().rstrip("/") or DEFAULT_ENDPOINT


def _cache_dir() -> str:
    """The hub cache folder, resolved the way huggingface_hub/constants.py does it."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return os.path.expandvars(os.path.expanduser(explicit))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(os.path.expandvars(os.path.expanduser(home)), "hub")


def _env_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE_VALUES


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


def _at(revision: str | None) -> str:
    return f" at revision '{revision}'" if revision else ""


# --- config.json / params.json -------------------------------------------------------------------


def _locate_config(
    repo_id: str, revision: str | None, endpoint: str, token: str | None, timeout: float
) -> tuple[str, str | None]:
    """Which config file the repo has, and the commit the revision resolves to.

    One HEAD request per candidate, without retries: when nothing is cached, hf_hub_download
    retries a failed HEAD with a 60 s timeout and back-off (file_download.py: _ETAG_RETRY_TIMEOUT in
    huggingface_hub 1.33 and 2.4), which would let a slow or failing server hang the CLI.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    for filename in CONFIG_FILENAMES:
        url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
        try:
            metadata = get_hf_file_metadata(url, token=token, timeout=timeout)
        except Exception as exc:
            kind = _http_kind(exc)
            if kind == "entry":
                continue
            raise _translate(exc, repo_id, revision, endpoint) from exc
        if metadata.commit_hash is None:
            raise HubUnavailableError(
                f"{endpoint} answered without the X-Repo-Commit header, so it does not look like a"
                " Hugging Face Hub endpoint",
                hint="check HF_ENDPOINT and any proxy in between",
            )
        return filename, metadata.commit_hash
    raise ModelNotFoundError(
        f"model '{repo_id}' on {endpoint}{_at(revision)} has neither config.json nor params.json",
        hint="is it a model repository with a transformers config? check the id",
    )


def _download(
    repo_id: str,
    filename: str,
    revision: str | None,
    endpoint: str,
    token: str | None,
    timeout: float,
    cache_dir: str,
) -> str:
    from huggingface_hub import hf_hub_download

    try:
        with _scoped_hub_settings(timeout):
            return hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                endpoint=endpoint,
                token=token,
                cache_dir=cache_dir,
                etag_timeout=timeout,
            )
    except Exception as exc:
        raise _translate(exc, repo_id, revision, endpoint) from exc


def _from_cache(repo_id: str, revision: str | None, cache_dir: str) -> tuple[str, str, str | None] | None:
    """(filename, path, commit) of a config already in the local cache, or None."""
    from huggingface_hub import hf_hub_download

    for filename in CONFIG_FILENAMES:
        try:
            path = hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=True
            )
        except Exception as exc:
            if isinstance(exc, (OSError, ValueError)):  # not cached, or not a valid repo id
                continue
            raise
        return filename, path, _commit_from_path(path)
    return None


def _commit_from_path(path: str) -> str | None:
    # Cached files live in <cache>/models--org--name/snapshots/<commit>/<filename>.
    parts = os.path.normpath(path).split(os.sep)
    if "snapshots" in parts:
        index = len(parts) - 1 - parts[::-1].index("snapshots")
        if index + 1 < len(parts) and _COMMIT_SHA.match(parts[index + 1]):
            return parts[index + 1]
    return None


def _build(
    repo_id: str,
    revision: str | None,
    commit: str | None,
    endpoint: str,
    filename: str,
    path: str,
    counts: dict[str, int] | None,
    *,
    from_cache: bool,
) -> HubModel:
    where = f"{filename} of '{repo_id}'{_at(revision)}"
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"cannot read {where} from the cache ({path}): {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{where} is JSON but not an object (found {type(config).__name__})")
    return HubModel(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        endpoint=endpoint,
        filename=filename,
        config=config,
        safetensors_parameters=counts,
        from_cache=from_cache,
    )


# --- safetensors headers -----------------------------------------------------------------------------


def _safetensors_parameters(
    repo_id: str, revision: str | None, endpoint: str, token: str | None, timeout: float
) -> dict[str, int] | None:
    """Parameter count per dtype, read from the safetensors headers with HTTP range requests.

    Same reads as huggingface_hub's get_safetensors_metadata (model.safetensors, else the index
    and each shard), done here so that every request carries the timeout (its ``timeout`` argument
    only exists in recent versions), the index is not written to a cache chosen at import time, and
    no progress bar is printed. Any failure yields None: the config alone is still useful.
    """
    try:
        try:
            return _count(_read_header(repo_id, SAFETENSORS_SINGLE_FILE, revision, endpoint, token, timeout))
        except Exception as exc:
            if _http_kind(exc) != "entry":
                raise
        try:
            index = _get(repo_id, SAFETENSORS_INDEX_FILE, revision, endpoint, token, timeout).json()
        except Exception as exc:
            if _http_kind(exc) == "entry":
                return None  # not a safetensors repository (.bin, GGUF, params.json + consolidated.pth)
            raise
        shards = sorted(set(index["weight_map"].values()))
        if not shards or not all(isinstance(name, str) for name in shards):
            return None
        pool = ThreadPoolExecutor(max_workers=min(_SAFETENSORS_MAX_WORKERS, len(shards)))
        try:
            headers = list(
                pool.map(lambda name: _read_header(repo_id, name, revision, endpoint, token, timeout), shards)
            )
        finally:
            # After a failure, skip the shards not started yet instead of waiting for each to time out.
            pool.shutdown(wait=True, cancel_futures=True)
        totals: dict[str, int] = {}
        for header in headers:
            for dtype, count in _count(header).items():
                totals[dtype] = totals.get(dtype, 0) + count
        return totals
    except Exception:
        return None


def _get(
    repo_id: str,
    filename: str,
    revision: str | None,
    endpoint: str,
    token: str | None,
    timeout: float,
    byte_range: tuple[int, int] | None = None,
) -> Any:
    from huggingface_hub import get_session, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    headers = build_hf_headers(token=token)
    if byte_range is not None:
        headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
    # huggingface_hub's session follows redirects (to the LFS/CDN location) for GET requests.
    response = get_session().get(url, headers=headers, timeout=timeout)
    hf_raise_for_status(response)
    return response


def _read_header(
    repo_id: str, filename: str, revision: str | None, endpoint: str, token: str | None, timeout: float
) -> dict[str, Any]:
    # Layout: 8-byte little-endian header length, then that many bytes of JSON
    # (https://huggingface.co/docs/safetensors/index#format).
    first_range = (0, _SAFETENSORS_FIRST_READ - 1)
    first = _get(repo_id, filename, revision, endpoint, token, timeout, first_range).content
    if len(first) < 8:
        raise ValueError(f"{filename}: shorter than a safetensors header")
    length = int.from_bytes(first[:8], "little")
    if length <= 0 or length > _SAFETENSORS_MAX_HEADER:
        raise ValueError(f"{filename}: implausible safetensors header length {length}")
    if 8 + length <= len(first):
        raw = first[8 : 8 + length]
    else:
        raw = _get(repo_id, filename, revision, endpoint, token, timeout, (8, 8 + length - 1)).content
        if len(raw) != length:
            raise ValueError(f"{filename}: truncated safetensors header")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError(f"{filename}: safetensors header is not a JSON object")
    return header


def _count(header: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        shape = info["shape"]
        if not isinstance(dtype, str) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"tensor {name!r}: malformed dtype or shape")
        counts[dtype] = counts.get(dtype, 0) + math.prod(shape)
    return counts


# --- errors --------------------------------------------------------------------------------------


def _response_of(exc: BaseException) -> Any:
    return getattr(exc, "response", None)


def _http_kind(exc: BaseException) -> str | None:
    """Classify a huggingface_hub error: 'entry', 'revision', 'repo', 'gated', 'denied', 'status' or None.

    The Hub's ``X-Error-Code`` / ``X-Error-Message`` headers decide when present (the values that
    hf_raise_for_status in huggingface_hub/utils/_http.py dispatches on). The exception's class is
    only a fallback: those classes moved and were renamed across huggingface_hub versions, and
    0.x turned some 401s into RepositoryNotFoundError whatever the headers said.
    """
    response = _response_of(exc)
    status = getattr(response, "status_code", None) if response is not None else None
    headers = getattr(response, "headers", None) or {}
    code = headers.get("X-Error-Code")
    by_code = {
        "GatedRepo": "gated",
        "RevisionNotFound": "revision",
        "EntryNotFound": "entry",
        "RepoNotFound": "repo",
    }
    if code in by_code:
        return by_code[code]
    if (
        status in (401, 403)
        and headers.get("X-Error-Message") == "Invalid credentials in Authorization header"
    ):
        return "denied"

    names = {cls.__name__ for cls in type(exc).__mro__}
    if "GatedRepoError" in names:
        return "gated"
    if "RevisionNotFoundError" in names:
        return "revision"
    if "RemoteEntryNotFoundError" in names:
        return "entry"
    if "EntryNotFoundError" in names and "LocalEntryNotFoundError" not in names:
        return "entry"  # huggingface_hub < 1.0 raised EntryNotFoundError for a remote 404
    if "RepositoryNotFoundError" in names:
        return "repo"
    if status == 404:
        return "entry"  # a 404 without the Hub's headers (a plain file server): the file is not there
    if status in (401, 403):
        return "denied"
    if status is not None:
        return "status"
    return None


def _transport_errors() -> tuple[type[BaseException], ...]:
    # Only modules huggingface_hub already imported: httpx2 / httpx (>= 1.0) or requests (< 1.0).
    found: list[type[BaseException]] = []
    for module_name, attributes in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        module = sys.modules.get(module_name)
        for attribute in attributes:
            cls = getattr(module, attribute, None) if module is not None else None
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append(cls)
    return tuple(found)


def _translate(exc: BaseException, repo_id: str, revision: str | None, endpoint: str) -> Exception:
    """The gpuplan error for an exception raised while talking to the Hub."""
    page = f"{endpoint}/{repo_id}"
    kind = _http_kind(exc)
    response = _response_of(exc)
    status = getattr(response, "status_code", None) if response is not None else None
    server_message = response.headers.get("X-Error-Message") if response is not None else None
    detail = f"HTTP {status}" + (f": {server_message}" if server_message else "") if status else ""

    if kind == "gated":
        return GatedRepoError(
            f"model '{repo_id}' on {endpoint} is gated: its files need an accepted licence and a token"
            + (f" ({detail})" if detail else ""),
            hint=f"accept the licence on {page}, then set HF_TOKEN or run `hf auth login`",
        )
    if kind == "revision":
        return ModelNotFoundError(
            f"model '{repo_id}' on {endpoint} has no revision '{revision or 'main'}'",
            hint=f"check the branch, tag or commit on {page}",
        )
    if kind == "repo":
        return ModelNotFoundError(
            f"no model '{repo_id}' on {endpoint}; check the id",
            hint="if the repository is private, set HF_TOKEN or run `hf auth login`",
        )
    if kind == "entry":
        return ModelNotFoundError(
            f"model '{repo_id}' on {endpoint}{_at(revision)}: file not found ({detail})"
        )
    if kind == "denied":
        return GatedRepoError(
            f"access to model '{repo_id}' on {endpoint} was refused ({detail})",
            hint="check the token in HF_TOKEN (or `hf auth login`);"
            f" for a gated model, accept the licence on {page}",
        )
    if kind == "status":
        if status is not None and status >= 500:
            return HubUnavailableError(
                f"server error at {endpoint} ({detail}) while fetching '{repo_id}'",
                hint="try again later, or set HF_ENDPOINT to a mirror",
            )
        if status == 429:
            return HubUnavailableError(
                f"{endpoint} is rate-limiting requests ({detail})",
                hint="wait a minute, or set HF_TOKEN: authenticated requests get higher limits",
            )
        return HubUnavailableError(f"unexpected answer from {endpoint} for '{repo_id}' ({detail})")

    names = {cls.__name__ for cls in type(exc).__mro__}
    if "OfflineModeIsEnabled" in names:
        return HubUnavailableError(
            f"huggingface_hub is in offline mode, so '{repo_id}' cannot be fetched from {endpoint}",
            hint="unset HF_HUB_OFFLINE (it is read when huggingface_hub is first imported), use a bundled"
            " model id, or pass a local path to a config.json",
        )
    if "HFValidationError" in names:
        return ModelNotFoundError(f"'{repo_id}' is not a valid Hugging Face model id: {exc}")
    if isinstance(exc, _transport_errors()) or isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return HubUnavailableError(
            f"cannot reach {endpoint} ({_network_reason(exc)})",
            hint="check the network or HF_ENDPOINT; offline, use a bundled model id or a local path"
            f" (raise {TIMEOUT_ENV} for a slow link)",
        )
    return HubUnavailableError(f"fetching '{repo_id}' from {endpoint} failed: {_first_line(exc)}")


def _network_reason(exc: BaseException) -> str:
    """'timed out', 'connection refused', 'host name not resolved', or the error itself.

    The root cause sits a few levels down: httpx wraps httpcore's error, requests wraps urllib3's
    MaxRetryError, whose ``reason`` holds the socket error.
    """
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending and len(seen) < 50:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, TimeoutError) or "Timeout" in type(current).__name__:
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
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- huggingface_hub global settings, scoped to one download -----------------------------------------


@contextlib.contextmanager
def _scoped_hub_settings(timeout: float) -> Iterator[None]:
    """Make hf_hub_download's GET one bounded request, with no progress bar and no log lines.

    * Its timeout comes from HF_HUB_DOWNLOAD_TIMEOUT, read from the environment at import and looked
      up in ``constants`` at call time (huggingface_hub >= 1.0) or in ``file_download``, which
      imported it by name (0.x): both are set for the duration of the call.
    * From 1.x, ``file_download.http_get`` resumes a stalled download up to 5 times with a 1 s pause
      (its ``_nb_retries`` argument), so a server that stalls after answering the HEAD would hold the
      CLI for about 6 x timeout + 5 s: the call gets ``_nb_retries=0``, when that argument exists.
    * A config of a few kB needs no progress bar, nor the "Trying to resume download..." warnings;
      both stay as the user configured them when HF_HUB_DISABLE_PROGRESS_BARS / HF_HUB_VERBOSITY are set.
    """
    from huggingface_hub import constants, file_download

    with _HUB_SETTINGS_LOCK, contextlib.ExitStack() as restore:
        for module in (constants, file_download):
            if hasattr(module, "HF_HUB_DOWNLOAD_TIMEOUT"):
                restore.enter_context(_patched(module, "HF_HUB_DOWNLOAD_TIMEOUT", timeout))

        http_get = getattr(file_download, "http_get", None)
        if callable(http_get) and "_nb_retries" in _parameters(http_get):

            def http_get_once(*args: Any, **kwargs: Any) -> Any:
                kwargs.setdefault("_nb_retries", 0)
                return http_get(*args, **kwargs)

            restore.enter_context(_patched(file_download, "http_get", http_get_once))

        if "HF_HUB_VERBOSITY" not in os.environ:
            hub_logger = logging.getLogger("huggingface_hub")
            restore.callback(hub_logger.setLevel, hub_logger.level)
            hub_logger.setLevel(logging.ERROR)

        if "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ:
            try:
                from huggingface_hub.utils import (
                    are_progress_bars_disabled,
                    disable_progress_bars,
                    enable_progress_bars,
                )
            except ImportError:
                pass
            else:
                if not are_progress_bars_disabled():
                    disable_progress_bars()
                    restore.callback(enable_progress_bars)
        yield


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    previous = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, previous)


def _parameters(function: Any) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()
