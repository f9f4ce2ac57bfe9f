"""Fetch a model's config (and its safetensors parameter counts) from the Hugging Face Hub.

Only ``config.json`` (or ``params.json`` for Meta's original Llama repos) and the safetensors headers are
read: never the weights. Everything goes through huggingface_hub's public API (>= 1.25, the first release
whose ``get_safetensors_metadata`` takes a ``timeout``):

* ``get_hf_file_metadata``: one HEAD per candidate file, bounded by the timeout and never retried, which
  finds the config file and the commit its revision resolves to. (``hf_hub_download`` alone would, when
  nothing is cached, retry a failed HEAD with a 60 s timeout and back-off: file_download.py,
  ``_ETAG_RETRY_TIMEOUT``.)
* ``hf_hub_download`` with ``etag_timeout``: the file into the standard Hugging Face cache, reused offline
  and by other tools.
* ``get_safetensors_metadata`` with ``timeout``: the safetensors headers, by HTTP range requests (its
  checks of which files exist and its download of a shard index keep huggingface_hub's own timeouts).
* the typed errors of ``huggingface_hub.errors``, each turned into one gpuplan error.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_CACHE`` once, when it is first imported;
this module reads them on every call and passes them explicitly, so a process (or a test) that changes them
later is still honoured. ``HF_TOKEN`` is read by huggingface_hub on each request. huggingface_hub is
imported only when a Hub model is asked for.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import pydantic

from gpuplan.errors import ConfigError, GatedRepoError, HubUnavailableError, ModelNotFoundError
from gpuplan.models import http

__all__ = ["HubModel", "fetch_model", "CONFIG_FILENAMES"]

DEFAULT_ENDPOINT = "https://huggingface.co"

# Meta's original Llama repos (e.g. meta-llama/Llama-2-7b) ship params.json instead of config.json.
CONFIG_FILENAMES = ("config.json", "params.json")

_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


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


@dataclass(frozen=True)
class _Request:
    """One fetch: what is asked, and the settings read at call time."""

    repo_id: str
    revision: str | None
    endpoint: str
    cache_dir: str
    token: str | None
    timeout: float

    @property
    def page(self) -> str:
        return f"{self.endpoint}/{self.repo_id}"

    @property
    def at(self) -> str:
        return f" at revision '{self.revision}'" if self.revision else ""


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
    follows ``HF_HUB_OFFLINE``. ``timeout_s`` (default: ``GPUPLAN_HUB_TIMEOUT``, else 10 s) bounds the
    requests for the config's metadata and each safetensors header read; the download of the config itself
    is bounded by huggingface_hub (``HF_HUB_DOWNLOAD_TIMEOUT``). When the Hub cannot be reached or fails with a
    server error, a copy of the config already in the local cache is used instead (``from_cache=True``).

    Raises ModelNotFoundError, GatedRepoError, HubUnavailableError or ConfigError.
    """
    _validate_repo_id(repo_id)
    request = _Request(
        repo_id=repo_id,
        revision=revision,
        endpoint=_endpoint(),
        cache_dir=_cache_dir(),
        token=token or None,
        timeout=http.request_timeout(timeout_s),
    )
    if http.offline_mode(offline):
        cached = _from_cache(request)
        if cached is None:
            raise HubUnavailableError(
                f"'{repo_id}'{request.at} is not in the local Hugging Face cache and the Hub is off-limits"
                " (offline mode)",
                hint="unset HF_HUB_OFFLINE to download it, use a bundled model id, or pass a local path"
                " to a config.json",
            )
        return _build(request, *cached, counts=None, from_cache=True)

    try:
        filename, commit = _locate_config(request)
        path = _download(request, filename)
    except HubUnavailableError:
        cached = _from_cache(request)
        if cached is None:
            raise
        return _build(request, *cached, counts=None, from_cache=True)

    commit = commit or _commit_from_path(path)
    counts = _safetensors_parameters(request, commit) if with_safetensors else None
    return _build(request, filename, path, commit, counts=counts, from_cache=False)


# --- configuration read at call time ---------------------------------------------------------------


def _validate_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ModelNotFoundError(
            f"'{repo_id}' is not a valid Hugging Face model id: {http.first_line(exc)}",
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


# --- config.json / params.json -------------------------------------------------------------------


def _locate_config(request: _Request) -> tuple[str, str]:
    """Which config file the repo has, and the commit the revision resolves to: one HEAD per candidate."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    for filename in CONFIG_FILENAMES:
        url = hf_hub_url(request.repo_id, filename, revision=request.revision, endpoint=request.endpoint)
        try:
            metadata = get_hf_file_metadata(
                url,
                token=request.token,
                timeout=request.timeout,
                library_name=http.LIBRARY_NAME,
                library_version=http.library_version(),
            )
        except Exception as exc:
            if _is_missing_file(exc):
                continue
            raise _translate(exc, request) from exc
        if metadata.commit_hash is None:
            raise HubUnavailableError(
                f"{request.endpoint} answered without the X-Repo-Commit header, so it does not look like a"
                " Hugging Face Hub endpoint",
                hint="check HF_ENDPOINT and any proxy in between",
            )
        return filename, metadata.commit_hash
    raise ModelNotFoundError(
        f"model '{request.repo_id}' on {request.endpoint}{request.at} has neither config.json nor params.json",
        hint="is it a model repository with a transformers config? check the id",
    )


def _download(request: _Request, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(
            request.repo_id,
            filename,
            revision=request.revision,
            endpoint=request.endpoint,
            token=request.token,
            cache_dir=request.cache_dir,
            etag_timeout=request.timeout,
            library_name=http.LIBRARY_NAME,
            library_version=http.library_version(),
            tqdm_class=_quiet_progress_bar(),
        )
    except Exception as exc:
        raise _translate(exc, request) from exc


def _quiet_progress_bar() -> Any:
    """A progress bar class that shows nothing: a config of a few kB needs none."""
    from huggingface_hub.utils import tqdm

    class QuietProgressBar(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return QuietProgressBar


def _from_cache(request: _Request) -> tuple[str, str, str | None] | None:
    """(filename, path, commit) of a config already in the local cache, or None."""
    from huggingface_hub import hf_hub_download

    for filename in CONFIG_FILENAMES:
        try:
            path = hf_hub_download(
                request.repo_id,
                filename,
                revision=request.revision,
                cache_dir=request.cache_dir,
                local_files_only=True,
            )
        except OSError:  # LocalEntryNotFoundError (not cached), or a cache folder that cannot be read
            continue
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
    request: _Request,
    filename: str,
    path: str,
    commit: str | None,
    *,
    counts: dict[str, int] | None,
    from_cache: bool,
) -> HubModel:
    where = f"{filename} of '{request.repo_id}'{request.at}"
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
        repo_id=request.repo_id,
        revision=request.revision,
        commit=commit,
        endpoint=request.endpoint,
        filename=filename,
        config=config,
        safetensors_parameters=counts,
        from_cache=from_cache,
    )


# --- safetensors headers -----------------------------------------------------------------------------


def _safetensors_parameters(request: _Request, commit: str | None) -> dict[str, int] | None:
    """Parameter count per dtype, from the safetensors headers at the commit the config came from.

    Any failure yields None (not a safetensors repository, a damaged header, a server that stopped
    answering): the config alone is still useful.
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=request.endpoint, library_name=http.LIBRARY_NAME, library_version=http.library_version())
    try:
        metadata = api.get_safetensors_metadata(
            request.repo_id, revision=commit or request.revision, token=request.token, timeout=request.timeout
        )
    except Exception:
        return None
    totals: dict[str, int] = {}
    for file_metadata in metadata.files_metadata.values():
        for dtype, count in file_metadata.parameter_count.items():
            totals[dtype] = totals.get(dtype, 0) + count
    return totals


# --- errors --------------------------------------------------------------------------------------


def _is_missing_file(exc: BaseException) -> bool:
    """A 404 for the file itself: the Hub's EntryNotFound, or a plain 404 from a server without its headers."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, RemoteEntryNotFoundError):
        return True
    return (
        isinstance(exc, HfHubHTTPError)
        and not isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError))
        and _status(exc) == 404
    )


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) if response is not None else None


def _detail(exc: BaseException) -> str:
    """'HTTP 403: the Hub's X-Error-Message', or '' when no answer came."""
    status = _status(exc)
    if status is None:
        return ""
    message = exc.response.headers.get("X-Error-Message")  # type: ignore[attr-defined]
    return f"HTTP {status}" + (f": {message}" if message else "")


def _translate(exc: BaseException, request: _Request) -> Exception:
    """The gpuplan error for an exception raised by huggingface_hub while talking to the Hub."""
    from huggingface_hub.errors import (
        GatedRepoError as HubGatedRepoError,
    )
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, endpoint = request.repo_id, request.endpoint
    if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None:
        # hf_hub_download's "cannot locate the file and it is not cached": the request's own error is the cause.
        return _translate(exc.__cause__, request)
    detail = _detail(exc)
    if isinstance(exc, HubGatedRepoError):
        return GatedRepoError(
            f"model '{repo_id}' on {endpoint} is gated: its files need an accepted licence and a token"
            + (f" ({detail})" if detail else ""),
            hint=f"accept the licence on {request.page}, then set HF_TOKEN or run `hf auth login`",
        )
    if isinstance(exc, RevisionNotFoundError):
        return ModelNotFoundError(
            f"model '{repo_id}' on {endpoint} has no revision '{request.revision or 'main'}'",
            hint=f"check the branch, tag or commit on {request.page}",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelNotFoundError(
            f"no model '{repo_id}' on {endpoint}; check the id",
            hint="if the repository is private, set HF_TOKEN or run `hf auth login`",
        )
    if isinstance(exc, RemoteEntryNotFoundError) or _status(exc) == 404:
        return ModelNotFoundError(f"model '{repo_id}' on {endpoint}{request.at}: file not found ({detail})")
    if isinstance(exc, HfHubHTTPError) and _status(exc) in (401, 403):
        return GatedRepoError(
            f"access to model '{repo_id}' on {endpoint} was refused ({detail})",
            hint=f"check the token in HF_TOKEN (or `hf auth login`); for a gated model, accept the licence on"
            f" {request.page}",
        )
    if isinstance(exc, HfHubHTTPError) and _status(exc) is not None:
        return http.status_error(
            _status(exc) or 0,
            detail,
            endpoint=endpoint,
            what=f"'{repo_id}'",
            server_hint="try again later, or set HF_ENDPOINT to a mirror",
            rate_hint="wait a minute, or set HF_TOKEN: authenticated requests get higher limits",
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return HubUnavailableError(
            f"huggingface_hub is in offline mode, so '{repo_id}' cannot be fetched from {endpoint}",
            hint="unset HF_HUB_OFFLINE (huggingface_hub reads it when it is first imported), use a bundled"
            " model id, or pass a local path to a config.json",
        )
    if http.known_network_reason(exc) is None and not isinstance(exc, (ConnectionError, TimeoutError)):
        # Not a failed connection (a cache folder that cannot be written, an answer huggingface_hub rejects).
        return HubUnavailableError(
            f"fetching '{repo_id}' from {endpoint} failed: {type(exc).__name__}: {http.first_line(exc)}"
        )
    return http.unreachable_error(
        endpoint, exc, endpoint_variable="HF_ENDPOINT", fallback="use a bundled model id or a local path"
    )
