"""Fetch a model's config.json from ModelScope (modelscope.cn) over plain HTTP, without the modelscope SDK.

The file comes from ModelScope's download endpoint
``{endpoint}/api/v1/models/{owner}/{name}/repo?Revision={revision}&FilePath=config.json``
(modelscope/modelscope_hub, src/modelscope_hub/_legacy_api.py: LegacyClient.get_download_url; the same URL
as modelscope/modelscope, modelscope/hub/file_download.py: get_file_download_url). The environment is read
as the SDK reads it (modelscope_hub, src/modelscope_hub/config.py):

* ``MODELSCOPE_ENDPOINT`` (a URL), else the older ``MODELSCOPE_DOMAIN`` (a bare domain gets ``https://``),
  else ``https://modelscope.cn`` (src/modelscope_hub/constants.py: DEFAULT_ENDPOINT);
* ``MODELSCOPE_API_TOKEN``: sent as ``Authorization: Bearer`` and as the ``m_session_id`` cookie, as the SDK
  sends it (_legacy_api.py: "Both cookie and Bearer header are sent"), never to another host on a redirect;
* ``MODELSCOPE_CACHE`` (default ``~/.cache/modelscope``): fetched configs are kept under its ``gpuplan``
  folder, one per (endpoint, repository, revision), and reused offline.

The SDK has no offline switch of its own; ``HF_HUB_OFFLINE`` (or ``offline=True``) keeps this module off the
network too. Each request is bounded by ``GPUPLAN_HUB_TIMEOUT`` (default 10 s) and made once: no retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from gpuplan.errors import ConfigError, GatedRepoError, HubUnavailableError, InputError, ModelNotFoundError
from gpuplan.models import http

__all__ = ["ModelScopeInfo", "fetch_modelscope_config", "DEFAULT_ENDPOINT", "DEFAULT_REVISION"]

DEFAULT_ENDPOINT = "https://modelscope.cn"
# ModelScope repositories are git repositories whose default branch is "master" (_legacy_api.py:
# get_download_url(..., revision="master")).
DEFAULT_REVISION = "master"
ENDPOINT_ENV = "MODELSCOPE_ENDPOINT"
DOMAIN_ENV = "MODELSCOPE_DOMAIN"
TOKEN_ENV = "MODELSCOPE_API_TOKEN"
CACHE_ENV = "MODELSCOPE_CACHE"
# Configs are small (see gpuplan.models.sources.MAX_CONFIG_BYTES): more than this is not a config.json.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
# ModelScope ids: owner/name with letters, digits, '-', '_' and '.' (the site's naming rule for both parts).
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelScopeInfo(BaseModel):
    """Where a ModelScope config came from."""

    model_config = ConfigDict(frozen=True)

    repo_id: str
    revision: str
    endpoint: str
    url: str
    from_cache: bool
    cache_path: str | None = None


def fetch_modelscope_config(
    repo_id: str,
    *,
    revision: str | None = None,
    offline: bool | None = None,
    timeout_s: float | None = None,
    token: str | None = None,
) -> tuple[dict[str, Any], ModelScopeInfo]:
    """Fetch ``config.json`` of a ModelScope model: (the parsed config, where it came from).

    ``offline=None`` follows HF_HUB_OFFLINE; ``token=None`` reads MODELSCOPE_API_TOKEN. When ModelScope
    cannot be reached or answers with a server error, a copy kept by an earlier call is used
    (``from_cache=True``). Raises ModelNotFoundError (404), GatedRepoError (401/403), HubUnavailableError
    (server errors, timeouts, no connection, offline without a cached copy) or ConfigError (not JSON).
    """
    repo_id = repo_id.strip().strip("/")
    if not _REPO_ID.match(repo_id):
        raise ModelNotFoundError(
            f"'{repo_id}' is not a valid ModelScope model id",
            hint="a ModelScope id looks like 'owner/name', e.g. 'Qwen/Qwen2.5-7B-Instruct'",
        )
    revision = (revision or DEFAULT_REVISION).strip()
    if not revision:
        raise InputError("the revision is empty")
    endpoint = _endpoint()
    timeout = http.request_timeout(timeout_s)
    token = token or os.environ.get(TOKEN_ENV) or None
    owner, name = repo_id.split("/")
    url = (
        f"{endpoint}/api/v1/models/{urllib.parse.quote(owner)}/{urllib.parse.quote(name)}/repo"
        f"?Revision={urllib.parse.quote_plus(revision)}&FilePath=config.json"
    )
    cache_path = _cache_path(endpoint, repo_id, revision)
    info = ModelScopeInfo(
        repo_id=repo_id,
        revision=revision,
        endpoint=endpoint,
        url=url,
        from_cache=False,
        cache_path=str(cache_path),
    )

    if http.offline_mode(offline):
        cached = _read_cache(cache_path, repo_id)
        if cached is None:
            raise HubUnavailableError(
                f"'{repo_id}'{_at(revision)} is not in the local ModelScope cache"
                " and the network is off-limits"
                " (offline mode)",
                hint="unset HF_HUB_OFFLINE to download it, or pass a local path to a config.json",
            )
        return cached, info.model_copy(update={"from_cache": True})

    try:
        body = _get(url, endpoint=endpoint, repo_id=repo_id, revision=revision, token=token, timeout=timeout)
    except HubUnavailableError:
        cached = _read_cache(cache_path, repo_id)
        if cached is None:
            raise
        return cached, info.model_copy(update={"from_cache": True})
    config = _parse(body, repo_id, endpoint, revision)
    _write_cache(cache_path, body)
    return config, info


# --- configuration read at call time ---------------------------------------------------------------


def _endpoint() -> str:
    explicit = (os.environ.get(ENDPOINT_ENV) or "").strip()
    if explicit:
        return explicit.rstrip("/")
    domain = (os.environ.get(DOMAIN_ENV) or "").strip()
    if domain:
        if not domain.startswith(("http://", "https://")):
            domain = f"https://{domain}"
        return domain.rstrip("/")
    return DEFAULT_ENDPOINT


def _cache_root() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "modelscope")
    return Path(os.path.expandvars(os.path.expanduser(root)))


def _cache_path(endpoint: str, repo_id: str, revision: str) -> Path:
    # A readable host name plus a hash of the whole endpoint, so two mirrors on one host never share a copy.
    host = re.sub(r"[^A-Za-z0-9.-]+", "_", urllib.parse.urlsplit(endpoint).netloc or "endpoint")
    tag = hashlib.sha256(endpoint.encode()).hexdigest()[:12]
    safe_rev = re.sub(r"[^A-Za-z0-9._-]+", "_", revision)
    rev_tag = hashlib.sha256(revision.encode()).hexdigest()[:8]
    return (
        _cache_root()
        / "gpuplan"
        / f"{host}-{tag}"
        / repo_id.replace("/", "--")
        / f"{safe_rev}-{rev_tag}"
        / "config.json"
    )


def _read_cache(path: Path, repo_id: str) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # a damaged copy is ignored rather than trusted
    return value if isinstance(value, dict) else None


def _write_cache(path: Path, body: bytes) -> None:
    # Best effort: a read-only cache folder must not fail a fetch that succeeded.
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _at(revision: str) -> str:
    return "" if revision == DEFAULT_REVISION else f" at revision '{revision}'"


# --- HTTP ---------------------------------------------------------------------------------------------


def _get(url: str, *, endpoint: str, repo_id: str, revision: str, token: str | None, timeout: float) -> bytes:
    headers = {"Accept": "application/json, */*"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
        headers["Cookie"] = f"m_session_id={token}"

    def unreachable(exc: BaseException) -> HubUnavailableError:
        return http.unreachable_error(endpoint, exc, endpoint_variable=ENDPOINT_ENV, fallback="pass a local path")

    try:
        body = http.get(url, timeout=timeout, max_bytes=MAX_CONFIG_BYTES, headers=headers, on_unreachable=unreachable)
    except http.HttpStatusError as exc:
        raise _http_error(exc, endpoint, repo_id, revision) from exc
    if len(body) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config.json of '{repo_id}' on {endpoint} is over {MAX_CONFIG_BYTES:,} bytes: not a config file"
        )
    return body


def _http_error(exc: http.HttpStatusError, endpoint: str, repo_id: str, revision: str) -> Exception:
    status = exc.status
    message = exc.server_message()
    detail = f"HTTP {status}" + (f": {message}" if message else "")
    page = f"{endpoint}/models/{repo_id}"
    if status == 404:
        return ModelNotFoundError(
            f"no config.json for '{repo_id}'{_at(revision)} on {endpoint} ({detail})",
            hint=f"check the id and revision on {page}; a private repository needs {TOKEN_ENV}",
        )
    if status in (401, 403):
        return GatedRepoError(
            f"access to '{repo_id}' on {endpoint} was refused ({detail})",
            hint=f"set {TOKEN_ENV} to a ModelScope access token that may read this model",
        )
    return http.status_error(status, detail, endpoint=endpoint, what=f"'{repo_id}'")


def _parse(body: bytes, repo_id: str, endpoint: str, revision: str) -> dict[str, Any]:
    label = f"config.json of '{repo_id}' on {endpoint}"
    if not body.strip():
        raise ConfigError(f"{label} is empty")
    try:
        value = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{label} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{label}: expected a JSON object at the top level, got {type(value).__name__}")
    # ModelScope answers some failures with HTTP 200 and its API envelope instead of the file
    # (modelscope/hub/errors.py: is_ok checks Code == 200 and Success).
    if value.get("Success") is False and "Code" in value and "model_type" not in value:
        message = value.get("Message")
        raise ModelNotFoundError(
            f"ModelScope refused config.json of '{repo_id}'{_at(revision)}"
            + (f": {message}" if isinstance(message, str) and message else f" (Code {value.get('Code')})"),
            hint=f"check the id and revision on {endpoint}/models/{repo_id}",
        )
    return value
