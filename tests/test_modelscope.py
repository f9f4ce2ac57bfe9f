"""gpuplan.models.modelscope against a fake ModelScope served over real HTTP (tests/modelscope_server.py)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from modelscope_server import FakeModelScope

from gpuplan.errors import ConfigError, GatedRepoError, HubUnavailableError, InputError, ModelNotFoundError
from gpuplan.models.modelscope import DEFAULT_ENDPOINT, fetch_modelscope_config

CONFIG = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 128}


@pytest.fixture
def ms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeModelScope]:
    """A started fake ModelScope, MODELSCOPE_ENDPOINT pointing at it, the cache in a temporary folder."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("MODELSCOPE_API_TOKEN", raising=False)
    monkeypatch.delenv("MODELSCOPE_DOMAIN", raising=False)
    monkeypatch.delenv("GPUPLAN_HUB_TIMEOUT", raising=False)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    with FakeModelScope(slow_s=5.0) as server:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", server.url)
        yield server
    assert server.errors == []


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_fetches_the_config(ms: FakeModelScope) -> None:
    ms.add("Qwen/Qwen2.5-7B", {"config.json": CONFIG})

    config, info = fetch_modelscope_config("Qwen/Qwen2.5-7B")

    assert config == CONFIG
    assert (info.repo_id, info.revision, info.endpoint, info.from_cache) == (
        "Qwen/Qwen2.5-7B",
        "master",
        ms.url,
        False,
    )
    [request] = ms.requests
    assert request.path == "/api/v1/models/Qwen/Qwen2.5-7B/repo"
    assert request.query == {"Revision": ["master"], "FilePath": ["config.json"]}
    assert request.authorization is None
    assert Path(info.cache_path or "").is_file()


def test_revision_is_sent(ms: FakeModelScope) -> None:
    ms.add(
        "acme/tiny",
        {"config.json": CONFIG},
        revisions={"v1.0": {"config.json": {**CONFIG, "hidden_size": 32}}},
    )

    config, info = fetch_modelscope_config("acme/tiny", revision="v1.0")

    assert config["hidden_size"] == 32
    assert info.revision == "v1.0"
    assert ms.requests[0].query["Revision"] == ["v1.0"]


def test_default_endpoint_and_domain_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gpuplan.models import modelscope

    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    monkeypatch.delenv("MODELSCOPE_DOMAIN", raising=False)
    assert modelscope._endpoint() == DEFAULT_ENDPOINT == "https://modelscope.cn"
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "www.modelscope.ai")
    assert modelscope._endpoint() == "https://www.modelscope.ai"
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "http://mirror.example/")
    assert modelscope._endpoint() == "http://mirror.example"
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "https://ms.internal/")
    assert modelscope._endpoint() == "https://ms.internal"


def test_domain_variable_reaches_the_server(ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSCOPE_ENDPOINT")
    monkeypatch.setenv("MODELSCOPE_DOMAIN", ms.url)
    ms.add("acme/tiny", {"config.json": CONFIG})

    assert fetch_modelscope_config("acme/tiny")[0] == CONFIG


# --- errors ----------------------------------------------------------------------------------------------


def test_unknown_repo_is_not_found(ms: FakeModelScope) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        fetch_modelscope_config("acme/missing")

    assert caught.value.message == (
        f"no config.json for 'acme/missing' on {ms.url}"
        " (HTTP 404: The request model: acme/missing does not exist!)"
    )
    assert "MODELSCOPE_API_TOKEN" in (caught.value.hint or "")
    assert caught.value.exit_code == 3


def test_missing_file_is_not_found(ms: FakeModelScope) -> None:
    ms.add("acme/gguf-only", {"model.gguf": b"GGUF"})

    with pytest.raises(ModelNotFoundError, match="HTTP 404: file config.json not found at master"):
        fetch_modelscope_config("acme/gguf-only")


def test_private_repo_needs_its_token(ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch) -> None:
    ms.add("acme/private", {"config.json": CONFIG}, mode="private", token="ms-secret")

    with pytest.raises(ModelNotFoundError):
        fetch_modelscope_config("acme/private")
    with pytest.raises(GatedRepoError) as caught:
        fetch_modelscope_config("acme/private", token="ms-wrong")
    assert (
        caught.value.message
        == f"access to 'acme/private' on {ms.url} was refused (HTTP 401: Invalid access token)"
    )

    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "ms-secret")
    config, _ = fetch_modelscope_config("acme/private")

    assert config == CONFIG
    assert ms.requests[-1].authorization == "Bearer ms-secret"
    assert ms.requests[-1].cookie == "m_session_id=ms-secret"


def test_forbidden_is_gated(ms: FakeModelScope) -> None:
    ms.add("acme/licensed", {"config.json": CONFIG}, mode="forbidden")

    with pytest.raises(GatedRepoError, match=r"HTTP 403: You do not have permission"):
        fetch_modelscope_config("acme/licensed", token="ms-someone")


def test_server_error_fails_fast_without_retries(ms: FakeModelScope) -> None:
    ms.add("acme/down", {"config.json": CONFIG}, mode="error")

    started = time.monotonic()
    with pytest.raises(HubUnavailableError) as caught:
        fetch_modelscope_config("acme/down")

    assert caught.value.message == (
        f"server error at {ms.url} (HTTP 500: Internal Server Error) while fetching 'acme/down'"
    )
    assert time.monotonic() - started < 3
    assert len(ms.requests) == 1


def test_slow_server_times_out(ms: FakeModelScope) -> None:
    ms.add("acme/slow", {"config.json": CONFIG}, mode="slow")

    started = time.monotonic()
    with pytest.raises(HubUnavailableError, match=f"^cannot reach {ms.url} \\(timed out\\)"):
        fetch_modelscope_config("acme/slow", timeout_s=0.3)

    assert time.monotonic() - started < 2.5


def test_timeout_from_environment(ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch) -> None:
    ms.add("acme/slow", {"config.json": CONFIG}, mode="slow")
    monkeypatch.setenv("GPUPLAN_HUB_TIMEOUT", "0.3")

    started = time.monotonic()
    with pytest.raises(HubUnavailableError, match="timed out"):
        fetch_modelscope_config("acme/slow")
    assert time.monotonic() - started < 2.5

    monkeypatch.setenv("GPUPLAN_HUB_TIMEOUT", "soon")
    with pytest.raises(InputError, match="GPUPLAN_HUB_TIMEOUT must be a number of seconds, got 'soon'"):
        fetch_modelscope_config("acme/slow")
    with pytest.raises(InputError, match="positive"):
        fetch_modelscope_config("acme/slow", timeout_s=0)


def test_connection_refused(ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{_unused_port()}"
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", endpoint)

    with pytest.raises(
        HubUnavailableError, match=f"^cannot reach {endpoint} \\(connection refused\\)"
    ) as caught:
        fetch_modelscope_config("acme/tiny", timeout_s=2)
    assert caught.value.__cause__ is not None


def test_bad_json_is_a_config_error(ms: FakeModelScope) -> None:
    ms.add("acme/broken", {"config.json": b'{"hidden_size": 64,'})

    with pytest.raises(ConfigError) as caught:
        fetch_modelscope_config("acme/broken")

    assert caught.value.message.startswith(f"config.json of 'acme/broken' on {ms.url} is not valid JSON:")
    assert isinstance(caught.value.__cause__, json.JSONDecodeError)


def test_not_an_object_and_empty(ms: FakeModelScope) -> None:
    ms.add("acme/list", {"config.json": b"[1, 2]"})
    ms.add("acme/empty", {"config.json": b"  "})

    with pytest.raises(ConfigError, match="expected a JSON object at the top level, got list"):
        fetch_modelscope_config("acme/list")
    with pytest.raises(ConfigError, match="is empty"):
        fetch_modelscope_config("acme/empty")


def test_failure_envelope_with_status_200(ms: FakeModelScope) -> None:
    ms.add("acme/tiny", {"config.json": CONFIG}, mode="envelope")

    with pytest.raises(
        ModelNotFoundError,
        match="ModelScope refused config.json of 'acme/tiny' at revision 'v9': Revision v9 does not exist",
    ):
        fetch_modelscope_config("acme/tiny", revision="v9")


def test_invalid_ids_are_refused_before_any_request(ms: FakeModelScope) -> None:
    for bad in ("no-owner", "a/b/c", "acme/bad name", "../etc"):
        with pytest.raises(ModelNotFoundError, match="is not a valid ModelScope model id"):
            fetch_modelscope_config(bad)
    assert ms.requests == []


# --- redirects and tokens -------------------------------------------------------------------------------


def test_redirect_to_storage_drops_the_token(ms: FakeModelScope) -> None:
    ms.add("acme/big", {"config.json": CONFIG}, mode="redirect")

    config, _ = fetch_modelscope_config("acme/big", token="ms-secret")

    assert config == CONFIG
    first, second = ms.requests
    assert (first.authorization, first.cookie) == ("Bearer ms-secret", "m_session_id=ms-secret")
    assert second.path == "/oss/acme/big/master/config.json"
    assert second.host is not None and second.host.startswith("localhost")
    assert (second.authorization, second.cookie) == (None, None)


# --- offline and the cache ------------------------------------------------------------------------------


def test_offline_serves_the_cache_after_a_first_fetch(
    ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    ms.add(
        "acme/tiny", {"config.json": CONFIG}, revisions={"v1": {"config.json": {**CONFIG, "hidden_size": 8}}}
    )
    online, _ = fetch_modelscope_config("acme/tiny")
    tagged, _ = fetch_modelscope_config("acme/tiny", revision="v1")
    asked = len(ms.requests)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline, info = fetch_modelscope_config("acme/tiny")
    offline_tagged, _ = fetch_modelscope_config("acme/tiny", revision="v1")

    assert len(ms.requests) == asked
    assert (offline, info.from_cache) == (online, True)
    assert offline_tagged == tagged != online


def test_offline_without_cache(ms: FakeModelScope) -> None:
    ms.add("acme/tiny", {"config.json": CONFIG})

    with pytest.raises(HubUnavailableError) as caught:
        fetch_modelscope_config("acme/tiny", offline=True)

    assert caught.value.message == (
        "'acme/tiny' is not in the local ModelScope cache and the network is off-limits (offline mode)"
    )
    assert ms.requests == []


def test_cache_is_per_endpoint(ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch) -> None:
    ms.add("acme/tiny", {"config.json": CONFIG})
    fetch_modelscope_config("acme/tiny")

    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")  # another endpoint: nothing cached for it
    with pytest.raises(HubUnavailableError, match="not in the local ModelScope cache"):
        fetch_modelscope_config("acme/tiny", offline=True)


def test_unreachable_server_falls_back_to_the_cache(ms: FakeModelScope) -> None:
    ms.add("acme/tiny", {"config.json": CONFIG})
    ms.add("acme/down", {"config.json": CONFIG})
    fetch_modelscope_config("acme/down")
    ms.repos["acme/down"].mode = "error"

    config, info = fetch_modelscope_config("acme/down")

    assert (config, info.from_cache) == (CONFIG, True)


def test_damaged_cache_copy_is_not_trusted(ms: FakeModelScope) -> None:
    ms.add("acme/tiny", {"config.json": CONFIG})
    _, info = fetch_modelscope_config("acme/tiny")
    Path(info.cache_path or "").write_bytes(b"{not json")

    with pytest.raises(HubUnavailableError, match="not in the local ModelScope cache"):
        fetch_modelscope_config("acme/tiny", offline=True)


def test_unwritable_cache_does_not_fail_the_fetch(
    ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(blocker))
    ms.add("acme/tiny", {"config.json": CONFIG})

    assert fetch_modelscope_config("acme/tiny")[0] == CONFIG
