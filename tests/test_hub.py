"""gpuplan.models.hub against a fake Hub served over real HTTP (tests/hubserver.py).

huggingface_hub is not mocked: every request goes through its HTTP client to 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubserver import FakeHub, safetensors_bytes

from gpuplan.errors import ConfigError, GatedRepoError, HubUnavailableError, InputError, ModelNotFoundError
from gpuplan.models.hub import HubModel, fetch_model

TINY_CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 128}
TINY_WEIGHTS = safetensors_bytes(
    {
        "model.embed_tokens.weight": ("BF16", [128, 64]),
        "model.norm.weight": ("F32", [64]),
        "lm_head.weight": ("BF16", [128, 64]),
    },
    metadata={"format": "pt"},
)
TINY_COUNTS = {"BF16": 2 * 128 * 64, "F32": 64}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A started fake Hub, with HF_ENDPOINT pointing at it and the HF cache in a temporary folder."""
    with FakeHub(slow_s=5.0) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_TOKEN", "")
        for name in (
            "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE",
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "GPUPLAN_HUB_TIMEOUT",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_OIDC_RESOURCE",
        ):
            monkeypatch.delenv(name, raising=False)
        # huggingface_hub reads these once, at import: keep a developer's saved login and offline
        # setting out of the tests.
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"), raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False, raising=False)
        yield server
    assert server.errors == []


def _weight_reads(hub: FakeHub) -> list:
    """The GET requests for the bytes of a safetensors file (served from /cdn/, as the Hub's LFS files are)."""
    return [r for r in hub.requests if r.path.startswith("/cdn/") and r.method == "GET"]


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- success paths ---------------------------------------------------------------------------------


def test_fetches_config_commit_and_safetensors_counts(hub: FakeHub, tmp_path: Path) -> None:
    hub.add("acme/tiny", {"config.json": TINY_CONFIG, "model.safetensors": TINY_WEIGHTS})

    model = fetch_model("acme/tiny")

    assert model == HubModel(
        repo_id="acme/tiny",
        revision=None,
        commit=hub.commit("acme/tiny"),
        endpoint=hub.url,
        filename="config.json",
        config=TINY_CONFIG,
        safetensors_parameters=TINY_COUNTS,
        from_cache=False,
    )
    cached = tmp_path / "hf" / "hub" / "models--acme--tiny" / "snapshots" / hub.commit("acme/tiny")
    assert json.loads((cached / "config.json").read_text()) == TINY_CONFIG
    assert not (cached / "model.safetensors").exists()  # only the header was read, never downloaded
    assert _weight_reads(hub) and all(r.range for r in _weight_reads(hub))


def test_model_is_frozen(hub: FakeHub) -> None:
    hub.add("acme/tiny", {"config.json": TINY_CONFIG})
    model = fetch_model("acme/tiny", with_safetensors=False)
    with pytest.raises(ValueError):
        model.repo_id = "other"  # type: ignore[misc]


def test_revision_resolves_to_its_commit(hub: FakeHub) -> None:
    v1_config = {**TINY_CONFIG, "num_hidden_layers": 1}
    pr_config = {**TINY_CONFIG, "num_hidden_layers": 3}
    hub.add(
        "acme/tiny",
        {"config.json": TINY_CONFIG},
        revisions={
            "v1.0": {"config.json": v1_config, "model.safetensors": TINY_WEIGHTS},
            "refs/pr/1": {"config.json": pr_config},
        },
    )

    tagged = fetch_model("acme/tiny", revision="v1.0")
    v1_commit = hub.commit("acme/tiny", "v1.0")
    assert (tagged.revision, tagged.commit, tagged.config) == ("v1.0", v1_commit, v1_config)
    assert tagged.safetensors_parameters == TINY_COUNTS  # read at the same commit as the config

    pull_request = fetch_model("acme/tiny", revision="refs/pr/1", with_safetensors=False)
    assert (pull_request.commit, pull_request.config) == (hub.commit("acme/tiny", "refs/pr/1"), pr_config)

    main_sha = hub.commit("acme/tiny")
    pinned = fetch_model("acme/tiny", revision=main_sha, with_safetensors=False)
    assert (pinned.revision, pinned.commit, pinned.config) == (main_sha, main_sha, TINY_CONFIG)


def test_params_json_when_there_is_no_config_json(hub: FakeHub) -> None:
    # Meta's original repos have params.json and no config.json; this is the params.json of
    # meta-llama/Llama-2-7b (https://huggingface.co/meta-llama/Llama-2-7b/blob/main/params.json).
    params = {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05}
    params["vocab_size"] = -1
    hub.add("meta-llama/Llama-2-7b", {"params.json": params})

    model = fetch_model("meta-llama/Llama-2-7b")

    assert (model.filename, model.config, model.safetensors_parameters) == ("params.json", params, None)


def test_sharded_safetensors_are_summed_across_shards(hub: FakeHub) -> None:
    shard1 = safetensors_bytes({"a.weight": ("BF16", [16, 8]), "a.scales": ("F32", [16])})
    # A header larger than the first 100 kB read, so a second range request fetches the rest.
    shard2 = safetensors_bytes({"b.qweight": ("I32", [4, 8]), "b.bias": ("BF16", [8])}, pad_to=150_000)
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    index = {
        "metadata": {"total_size": 0},
        "weight_map": {"a.weight": first, "a.scales": first, "b.qweight": second, "b.bias": second},
    }
    hub.add(
        "acme/sharded",
        {
            "config.json": TINY_CONFIG,
            "model.safetensors.index.json": index,
            first: shard1,
            second: shard2,
        },
    )

    model = fetch_model("acme/sharded")

    assert model.safetensors_parameters == {"BF16": 16 * 8 + 8, "F32": 16, "I32": 4 * 8}
    # Both shards were read, each by range requests only, never whole.
    assert len({r.path for r in _weight_reads(hub)}) == 2
    assert all(r.range for r in _weight_reads(hub))


def test_safetensors_problems_do_not_fail_the_config(hub: FakeHub) -> None:
    hub.add("acme/bin-only", {"config.json": TINY_CONFIG, "pytorch_model.bin": b"\0" * 16})
    hub.add("acme/broken-weights", {"config.json": TINY_CONFIG, "model.safetensors": b"\xff" * 64})
    hub.add("acme/bad-index", {"config.json": TINY_CONFIG, "model.safetensors.index.json": b"{not json"})

    for repo_id in ("acme/bin-only", "acme/broken-weights", "acme/bad-index"):
        model = fetch_model(repo_id)
        assert (model.config, model.safetensors_parameters) == (TINY_CONFIG, None), repo_id


def test_without_safetensors_no_weight_file_is_touched(hub: FakeHub) -> None:
    hub.add("acme/tiny", {"config.json": TINY_CONFIG, "model.safetensors": TINY_WEIGHTS})

    model = fetch_model("acme/tiny", with_safetensors=False)

    assert model.safetensors_parameters is None
    assert {Path(r.path).name for r in hub.requests} == {"config.json"}


def test_endpoint_with_trailing_slash_and_renamed_repo(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url + "/")
    hub.add("acme/new-name", {"config.json": TINY_CONFIG})
    hub.add("acme/old-name", renamed_to="acme/new-name")

    model = fetch_model("acme/old-name", with_safetensors=False)

    assert (model.repo_id, model.endpoint, model.config) == ("acme/old-name", hub.url, TINY_CONFIG)
    assert model.commit == hub.commit("acme/new-name")


# --- tokens, gated and private repositories -----------------------------------------------------------


def test_gated_repo_without_token(hub: FakeHub) -> None:
    hub.add("meta/gated", {"config.json": TINY_CONFIG}, mode="gated", token="hf_granted")

    with pytest.raises(GatedRepoError) as caught:
        fetch_model("meta/gated")

    assert caught.value.message.startswith(f"model 'meta/gated' on {hub.url} is gated")
    assert caught.value.hint == (
        f"accept the licence on {hub.url}/meta/gated, then set HF_TOKEN or run `hf auth login`"
    )
    assert type(caught.value.__cause__).__name__ == "GatedRepoError"  # huggingface_hub's, chained
    assert caught.value.exit_code == 3


def test_gated_repo_with_a_token_lacking_access(hub: FakeHub) -> None:
    hub.add("meta/gated", {"config.json": TINY_CONFIG}, mode="gated", token="hf_granted")
    hub.valid_tokens.add("hf_someone_else")

    with pytest.raises(GatedRepoError, match="is gated.*HTTP 403"):
        fetch_model("meta/gated", token="hf_someone_else")


@pytest.mark.parametrize("how", ["argument", "HF_TOKEN"])
def test_gated_repo_with_the_right_token(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    hub.add(
        "meta/gated",
        {"config.json": TINY_CONFIG, "model.safetensors": TINY_WEIGHTS},
        mode="gated",
        token="hf_granted",
    )
    if how == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", "hf_granted")

    model = fetch_model("meta/gated", token="hf_granted" if how == "argument" else None)

    assert (model.config, model.safetensors_parameters) == (TINY_CONFIG, TINY_COUNTS)
    assert {r.authorization for r in hub.requests if r.path.startswith("/meta/")} == {"Bearer hf_granted"}


def test_private_repo_needs_its_token(hub: FakeHub) -> None:
    hub.add("acme/private", {"config.json": TINY_CONFIG}, mode="private", token="hf_owner")

    with pytest.raises(ModelNotFoundError, match=f"^no model 'acme/private' on {hub.url}; check the id"):
        fetch_model("acme/private")
    assert fetch_model("acme/private", token="hf_owner", with_safetensors=False).config == TINY_CONFIG


def test_rejected_token(hub: FakeHub) -> None:
    hub.add("acme/tiny", {"config.json": TINY_CONFIG})

    with pytest.raises(GatedRepoError) as caught:
        fetch_model("acme/tiny", token="hf_revoked")

    assert caught.value.message == (
        f"access to model 'acme/tiny' on {hub.url} was refused"
        " (HTTP 401: Invalid credentials in Authorization header)"
    )
    assert "HF_TOKEN" in (caught.value.hint or "")


# --- not found ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "hf_valid"], ids=["anonymous-401", "authenticated-404"])
def test_unknown_repo(hub: FakeHub, token: str | None) -> None:
    hub.valid_tokens.add("hf_valid")

    with pytest.raises(ModelNotFoundError) as caught:
        fetch_model("acme/missing", token=token)

    assert str(caught.value) == (
        f"no model 'acme/missing' on {hub.url}; check the id"
        " (if the repository is private, set HF_TOKEN or run `hf auth login`)"
    )
    assert caught.value.__cause__ is not None


def test_unknown_revision(hub: FakeHub) -> None:
    hub.add("acme/tiny", {"config.json": TINY_CONFIG})

    with pytest.raises(ModelNotFoundError) as caught:
        fetch_model("acme/tiny", revision="v9")

    assert caught.value.message == f"model 'acme/tiny' on {hub.url} has no revision 'v9'"
    assert caught.value.hint == f"check the branch, tag or commit on {hub.url}/acme/tiny"


def test_invalid_id_is_refused_before_any_request(hub: FakeHub) -> None:
    with pytest.raises(ModelNotFoundError, match="^'not/a/valid id' is not a valid Hugging Face model id"):
        fetch_model("not/a/valid id")
    assert hub.requests == []


def test_repo_without_any_config(hub: FakeHub) -> None:
    hub.add("acme/gguf-only", {"model.gguf": b"GGUF"})

    with pytest.raises(ModelNotFoundError, match="has neither config.json nor params.json"):
        fetch_model("acme/gguf-only")


def test_malformed_config(hub: FakeHub) -> None:
    hub.add("acme/broken", {"config.json": b'{"hidden_size": 64,'})

    with pytest.raises(ConfigError) as caught:
        fetch_model("acme/broken")

    assert caught.value.message.startswith("config.json of 'acme/broken' is not valid JSON:")
    assert isinstance(caught.value.__cause__, json.JSONDecodeError)


# --- unavailable Hub ------------------------------------------------------------------------------------


def test_server_error_fails_fast(hub: FakeHub) -> None:
    hub.add("acme/down", {"config.json": TINY_CONFIG}, mode="error")

    started = time.monotonic()
    expected = f"^server error at {hub.url} \\(HTTP 500: Internal Error\\) while fetching 'acme/down'$"
    with pytest.raises(HubUnavailableError) as caught:
        fetch_model("acme/down")

    assert re.match(expected, caught.value.message)
    assert time.monotonic() - started < 3  # no retries with back-off
    assert len(hub.requests_for("acme/down")) == 1


def test_slow_server_times_out(hub: FakeHub) -> None:
    hub.add("acme/slow", {"config.json": TINY_CONFIG}, mode="slow")

    started = time.monotonic()
    with pytest.raises(HubUnavailableError, match=f"^cannot reach {hub.url} \\(timed out\\) "):
        fetch_model("acme/slow", timeout_s=0.5)

    assert time.monotonic() - started < 2.5


def test_download_failing_after_the_head_is_one_line(
    hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    hub.add("acme/flaky", {"config.json": TINY_CONFIG}, mode="error-download")

    started = time.monotonic()
    expected = f"^server error at {hub.url} \\(HTTP 500: Internal Error\\) while fetching 'acme/flaky'$"
    with pytest.raises(HubUnavailableError) as caught:
        fetch_model("acme/flaky")
    assert re.match(expected, caught.value.message)
    assert time.monotonic() - started < 3  # a 500 is not retried
    assert [r.getMessage() for r in caplog.records if r.name.startswith("huggingface_hub")] == []



def test_download_is_bounded_by_huggingface_hub_not_by_the_hub_timeout(hub: FakeHub) -> None:
    # The HEAD requests carry gpuplan's timeout; the GET of the config itself is hf_hub_download's, bounded
    # by huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT (10 s unless set): a download slower than the timeout
    # but within that bound completes.
    hub.slow_s = 1.0
    hub.add("acme/slow", {"config.json": TINY_CONFIG}, mode="slow-download")

    model = fetch_model("acme/slow", timeout_s=0.5, with_safetensors=False)

    assert (model.config, model.from_cache) == (TINY_CONFIG, False)
    assert [r.method for r in hub.requests_for("acme/slow")] == ["HEAD", "HEAD", "GET"]


def test_timeout_from_environment(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add("acme/slow", {"config.json": TINY_CONFIG}, mode="slow")
    monkeypatch.setenv("GPUPLAN_HUB_TIMEOUT", "0.3")

    started = time.monotonic()
    with pytest.raises(HubUnavailableError, match="timed out"):
        fetch_model("acme/slow")
    assert time.monotonic() - started < 2.5

    monkeypatch.setenv("GPUPLAN_HUB_TIMEOUT", "soon")
    with pytest.raises(InputError, match="GPUPLAN_HUB_TIMEOUT must be a number of seconds, got 'soon'"):
        fetch_model("acme/slow")
    with pytest.raises(InputError, match="positive"):
        fetch_model("acme/slow", timeout_s=0)


def test_connection_refused(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{_unused_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)

    expected = f"^cannot reach {endpoint} \\(connection refused\\) "
    with pytest.raises(HubUnavailableError, match=expected) as caught:
        fetch_model("acme/tiny", timeout_s=2)

    assert caught.value.__cause__ is not None


def test_unknown_host(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    # .invalid never resolves (RFC 2606).
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.gpuplan-test.invalid")

    expected = "^cannot reach http://hub.gpuplan-test.invalid \\(host name not resolved\\) "
    with pytest.raises(HubUnavailableError, match=expected):
        fetch_model("acme/tiny", timeout_s=2)


# --- offline and the local cache ------------------------------------------------------------------------


def test_offline_serves_the_cache_after_a_first_fetch(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add(
        "acme/tiny",
        {"config.json": TINY_CONFIG, "model.safetensors": TINY_WEIGHTS},
        revisions={"v1.0": {"config.json": {**TINY_CONFIG, "num_hidden_layers": 1}}},
    )
    online = fetch_model("acme/tiny")
    tagged = fetch_model("acme/tiny", revision="v1.0", with_safetensors=False)
    asked = len(hub.requests)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = fetch_model("acme/tiny")
    offline_tagged = fetch_model("acme/tiny", revision="v1.0")

    assert len(hub.requests) == asked  # nothing was asked of the server
    assert offline == online.model_copy(update={"from_cache": True, "safetensors_parameters": None})
    assert (offline_tagged.commit, offline_tagged.config, offline_tagged.from_cache) == (
        tagged.commit,
        tagged.config,
        True,
    )


def test_offline_argument_without_cache(hub: FakeHub) -> None:
    hub.add("acme/tiny", {"config.json": TINY_CONFIG})

    with pytest.raises(HubUnavailableError) as caught:
        fetch_model("acme/tiny", offline=True)

    assert caught.value.message == (
        "'acme/tiny' is not in the local Hugging Face cache and the Hub is off-limits (offline mode)"
    )
    assert caught.value.hint == (
        "unset HF_HUB_OFFLINE to download it, use a bundled model id, or pass a local path to a config.json"
    )
    assert hub.requests == []


def test_unreachable_hub_falls_back_to_the_cache(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add("acme/tiny", {"config.json": TINY_CONFIG})
    online = fetch_model("acme/tiny", with_safetensors=False)

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_unused_port()}")
    fallback = fetch_model("acme/tiny", timeout_s=2)

    assert (fallback.config, fallback.commit, fallback.from_cache) == (online.config, online.commit, True)


def test_params_json_from_the_cache(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add("meta/original", {"params.json": {"dim": 4096}})
    fetch_model("meta/original")

    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    model = fetch_model("meta/original")

    assert (model.filename, model.config, model.from_cache) == ("params.json", {"dim": 4096}, True)


# --- through the resolver and the estimate -------------------------------------------------------


def test_unbundled_id_is_fetched_and_weights_come_from_safetensors(hub: FakeHub) -> None:
    import gpuplan
    from gpuplan.models.sources import resolve_model

    config = {**TINY_CONFIG, "num_attention_heads": 4, "intermediate_size": 128, "tie_word_embeddings": False,
              "torch_dtype": "bfloat16"}
    hub.add("acme/tiny-llama", {"config.json": config, "model.safetensors": TINY_WEIGHTS})
    resolved = resolve_model("acme/tiny-llama")
    assert resolved.source == "hub"
    result = gpuplan.estimate(resolved, seq=16)
    # exactly the stored bytes: two bf16 matrices and one fp32 vector
    assert result.weights_bytes == 2 * 128 * 64 * 2 + 64 * 4
    assert any("safetensors headers" in note for note in result.notes)


def test_bundled_id_falls_back_to_the_catalog_when_the_hub_fails(hub: FakeHub) -> None:
    from gpuplan.models.sources import resolve_model

    hub.add("meta-llama/Llama-2-7b-hf", {"config.json": {}}, mode="error")
    resolved = resolve_model("meta-llama/Llama-2-7b-hf", source="hub")
    assert resolved.source == "catalog"
    assert any("could not be reached" in n for n in resolved.notices)


def test_huggingface_hub_offline_since_its_import_is_one_line(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    # HF_HUB_OFFLINE was set when huggingface_hub was first imported, and unset since (gpuplan reads it per call).
    from huggingface_hub import constants

    hub.add("acme/tiny", {"config.json": TINY_CONFIG})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    with pytest.raises(HubUnavailableError) as caught:
        fetch_model("acme/tiny")

    assert caught.value.message == (
        f"huggingface_hub is in offline mode, so 'acme/tiny' cannot be fetched from {hub.url}"
    )
    assert "HF_HUB_OFFLINE" in (caught.value.hint or "")
    assert hub.requests == []


def test_a_cache_folder_that_cannot_be_written_is_one_line(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add("acme/tiny", {"config.json": TINY_CONFIG})
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("HF_HUB_CACHE", str(blocker / "hub"))

    with pytest.raises(HubUnavailableError) as caught:
        fetch_model("acme/tiny")

    assert caught.value.message.startswith(f"fetching 'acme/tiny' from {hub.url} failed: ")
    assert caught.value.__cause__ is not None
