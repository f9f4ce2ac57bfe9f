"""gpuplan serve's JSON API: the CLI's JSON for every endpoint, its errors as JSON 4xx, and the safety rules."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hubserver import FakeHub
from typer.testing import CliRunner

from gpuplan.cli.app import app as cli_app
from gpuplan.engines import ENGINE_NAMES, option_owners, options_class
from gpuplan.models.catalog import load_catalog
from gpuplan.results import SCHEMA_VERSION
from gpuplan.web import schemas
from gpuplan.web.app import create_app
from gpuplan.web.service import ServerSettings

ROOT = Path(__file__).resolve().parent.parent
PLAN_FILE = ROOT / "examples" / "gpuplan.yaml"
cli = CliRunner()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(ServerSettings()), raise_server_exceptions=False) as test_client:
        yield test_client


def cli_json(*args: str) -> object:
    result = cli.invoke(cli_app, [*args, "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def both(client: TestClient, path: str, params: dict) -> object:
    """The GET (query parameters) and POST (JSON body) answers, which must be the same."""
    got = client.get(path, params=params)
    posted = client.post(path, json=params)
    assert got.status_code == 200, got.text
    assert posted.status_code == 200, posted.text
    assert got.json() == posted.json()
    return got.json()


# ---- the same JSON as the CLI ---------------------------------------------------------------------


@pytest.mark.parametrize(("params", "args"), [
    ({"model": "meta-llama/Llama-2-7b", "dtype": "fp16", "seq": "4096"},
     ["meta-llama/Llama-2-7b", "--dtype", "fp16", "--seq", "4096"]),
    ({"model": "llama-2-7b", "dtype": "fp16", "seq": "4k", "batch": 8, "new_tokens": 128, "gpu": "L4"},
     ["llama-2-7b", "--dtype", "fp16", "--seq", "4k", "--batch", "8", "--new-tokens", "128", "--gpu", "L4"]),
    ({"model": "meta-llama/Llama-3.1-8B-Instruct", "engine": "vllm", "gpu": "L4", "gpu_memory_utilization": 0.85,
      "max_model_len": 16384},
     ["meta-llama/Llama-3.1-8B-Instruct", "--engine", "vllm", "--gpu", "L4", "--gpu-memory-utilization", "0.85",
      "--max-model-len", "16384"]),
    ({"model": "meta-llama/Llama-3.1-8B-Instruct", "engine": "sglang", "gpu": "H100", "tensor_parallel": 2,
      "kv_dtype": "fp8"},
     ["meta-llama/Llama-3.1-8B-Instruct", "--engine", "sglang", "--gpu", "H100", "-tp", "2", "--kv-dtype", "fp8"]),
    ({"model": "llama-2-7b", "dtype": "fp16", "pipeline_parallel": 2, "expandable_segments": True},
     ["llama-2-7b", "--dtype", "fp16", "-pp", "2", "--expandable-segments"]),
])
def test_estimate_is_the_cli_json(client, params, args):
    data = both(client, "/api/estimate", params)
    assert data == cli_json("estimate", *args)
    assert data["schema_version"] == SCHEMA_VERSION


def test_plan_is_the_cli_json(client):
    data = both(client, "/api/plan", {"model": "meta-llama/Llama-3.1-70B-Instruct", "seq": "32k",
                                      "gpus": ["H100", "A100-80GB"]})
    assert data == cli_json("plan", "meta-llama/Llama-3.1-70B-Instruct", "--seq", "32k", "--gpu", "H100",
                            "--gpu", "A100-80GB")
    assert data["best"]["gpu"] in ("H100-SXM", "A100-SXM-80GB") or data["best"] is not None


def test_plan_takes_a_comma_list_of_gpus_in_a_query(client):
    listed = client.get("/api/plan", params={"model": "llama-2-7b", "gpus": "L4,H100"}).json()
    repeated = client.get("/api/plan", params=[("model", "llama-2-7b"), ("gpus", "L4"), ("gpus", "H100")]).json()
    assert listed == repeated
    assert {o["gpu"] for o in listed["options"]} == {o["gpu"] for o in cli_json(
        "plan", "llama-2-7b", "--gpu", "L4", "--gpu", "H100")["options"]}


def test_sweep_is_the_cli_json(client):
    data = both(client, "/api/sweep", {"model": "meta-llama/Llama-3.1-8B-Instruct", "seq": "1k..8k",
                                       "batch": "1,8", "gpu": ["H100", "L4"]})
    assert data == cli_json("sweep", "meta-llama/Llama-3.1-8B-Instruct", "--seq", "1k..8k", "--batch", "1,8",
                            "--gpu", "H100", "--gpu", "L4")
    assert len(data["points"]) == 4 * 2 * 2


def test_train_is_the_cli_json(client):
    params = {"model": "Qwen/Qwen2.5-7B", "method": "qlora", "lora_rank": 16, "grad_checkpointing": True,
              "batch": 8, "seq": "4k", "gpu": "L4"}
    data = both(client, "/api/train", params)
    assert data == cli_json("train", "Qwen/Qwen2.5-7B", "--method", "qlora", "--lora-rank", "16",
                            "--grad-checkpointing", "--batch", "8", "--seq", "4k", "--gpu", "L4")


def test_check_takes_the_plan_as_yaml_or_json(client):
    text = PLAN_FILE.read_text(encoding="utf-8")
    from_yaml = both(client, "/api/check", {"plan": text})
    import yaml

    from_json = client.post("/api/check", json={"plan": yaml.safe_load(text)})
    assert from_json.status_code == 200
    expected = cli_json("check", str(PLAN_FILE))
    assert expected["file"] == str(PLAN_FILE)
    assert from_yaml == {**expected, "file": None}  # a request has no file name; the lines are the file's
    unlocated = {**expected, "file": None,
                 "deployments": [{**d, "line": None} for d in expected["deployments"]]}
    assert from_json.json() == unlocated  # a JSON object has no lines


@pytest.mark.parametrize(("path", "command", "text"), [
    ("/api/gpus", "gpus", "h100"), ("/api/gpus", "gpus", None),
    ("/api/models", "models", "llama"), ("/api/models", "models", None)])
def test_catalogs_are_the_cli_json(client, path, command, text):
    params = {"filter": text} if text else {}
    assert both(client, path, params) == cli_json(command, *([text] if text else []))


def test_every_engine_option_of_the_registry_is_a_request_field():
    """The request models and the form are generated from the engines' Options classes: nothing to keep in step."""
    owners = option_owners()
    for request_type in (schemas.EstimateRequest, schemas.PlanRequest, schemas.SweepRequest):
        assert set(owners) <= set(request_type.model_fields), request_type.__name__


def test_engines_endpoint_lists_every_engine_and_option(client):
    data = client.get("/api/engines").json()
    assert data["engines"] == list(ENGINE_NAMES)
    owners = option_owners()
    assert {o["name"]: o["engines"] for o in data["options"]} == owners
    for option in data["options"]:
        field = options_class(option["engines"][0]).model_fields[option["name"]]
        assert option["default"] == field.default, option["name"]
        assert option["description"] == field.description


def test_openapi_docs_list_every_endpoint_and_load_nothing_from_a_cdn(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn." not in docs.text and "https://" not in docs.text
    script = re.search(r'src="([^"]*swagger-ui-bundle\.js)"', docs.text).group(1)
    assert client.get(script).status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for name in ("estimate", "plan", "sweep", "train", "check", "gpus", "models"):
        assert set(paths[f"/api/{name}"]) == {"get", "post"}, name
    estimate_params = {p["name"] for p in paths["/api/estimate"]["get"]["parameters"]}
    assert {"model", "dtype", "seq", "gpu_memory_utilization", "ctx_size"} <= estimate_params


# ---- errors: the CLI's message and hint, as JSON 4xx ----------------------------------------------


def cli_error(*args: str) -> tuple[int, str]:
    result = cli.invoke(cli_app, list(args))
    return result.exit_code, result.stderr.strip()


@pytest.mark.parametrize(("params", "status", "args"), [
    ({"model": "llama-2-7b", "dtype": "fp7"}, 400, ["llama-2-7b", "--dtype", "fp7"]),
    ({"model": "lama-2-7b"}, 404, ["lama-2-7b"]),
    ({"model": "llama-2-7b", "tensor_parallel": 2}, 400, ["llama-2-7b", "-tp", "2"]),
    ({"model": "llama-2-7b", "engine": "vllm"}, 400, ["llama-2-7b", "--engine", "vllm"]),
    ({"model": "llama-2-7b", "gpu": "H1000"}, 400, ["llama-2-7b", "--gpu", "H1000"]),
    ({"model": "llama-2-7b", "engine": "tensorrt"}, 400, ["llama-2-7b", "--engine", "tensorrt"]),
])
def test_errors_carry_the_cli_message_and_hint(client, params, status, args):
    exit_code, stderr = cli_error("estimate", *args)
    for response in (client.get("/api/estimate", params=params), client.post("/api/estimate", json=params)):
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["text"] == stderr
        assert error["exit_code"] == exit_code
        assert error["message"] in stderr and (error["hint"] is None or error["hint"] in stderr)


def test_an_unknown_model_suggests_the_bundled_one(client):
    error = client.get("/api/estimate", params={"model": "lama-2-7b"}).json()["error"]
    assert error["type"] == "ModelNotFoundError"
    assert "llama-2-7b" in error["hint"]


def test_a_hub_id_offline_is_not_found_and_says_how_to_allow_the_network(client):
    response = client.get("/api/estimate", params={"model": "acme/not-bundled"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["message"] == "model 'acme/not-bundled' is not bundled and this server does not fetch from the Hub"
    assert "--allow-network" in error["hint"]


BAD_REQUESTS = [
    ("get", "/api/estimate", {}),
    ("get", "/api/estimate", {"model": ""}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "batch": "many"}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "batch": "0"}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "batch": "-3"}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "seq": "4q"}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "seq": "0"}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "seq": "99999999999999"}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "batch": "1000000000"}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "bogus": "1"}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "gpu_memory": "lots"}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "engine": "vllm", "gpu": "L4", "kv_cache_memory": "-1GB"}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "engine": "vllm", "gpu": "L4", "gpu_memory_utilization": "7"}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "engine": "llama.cpp"}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "n_gpu_layers": "many"}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "attn": "magic"}),
    ("get", "/api/estimate", {"model": "modelscope:"}),
    ("get", "/api/estimate", {"model": "x" * 400}),
    ("get", "/api/estimate", {"model": "llama-2-7b", "source": "ftp"}),
    ("post", "/api/estimate", {"model": ["llama-2-7b"]}),
    ("post", "/api/estimate", [1, 2, 3]),
    ("get", "/api/plan", {"model": "llama-2-7b", "gpus": "H1000"}),
    ("get", "/api/plan", {"model": "llama-2-7b", "max_gpus": "100000"}),
    ("get", "/api/plan", {"model": "llama-2-7b", "engine": "llama.cpp"}),
    ("get", "/api/sweep", {"model": "llama-2-7b", "seq": "8k..1k"}),
    ("get", "/api/sweep", {"model": "llama-2-7b", "seq": "1..1m", "batch": "1..1m", "dtype": "fp16,bf16,int4"}),
    ("get", "/api/sweep", {"model": "llama-2-7b", "engine": "vllm"}),
    ("get", "/api/train", {"model": "llama-2-7b", "method": "dora"}),
    ("get", "/api/train", {"model": "llama-2-7b", "zero": "5", "gpus": "2"}),
    ("get", "/api/train", {"model": "llama-2-7b", "lora_rank": "8"}),
    ("get", "/api/check", {}),
    ("get", "/api/check", {"plan": "deployments: [\n  - name: a\n    model: llama-2-7b\n    gpu: H1000\n"}),
    ("get", "/api/check", {"plan": "{{{"}),
    ("get", "/api/check", {"plan": "- just\n- a list\n"}),
    ("post", "/api/check", {"plan": {"deployments": [{"name": "a", "model": "llama-2-7b", "bogus": 1}]}}),
    ("get", "/api/gpus", {"filter": "x" * 300}),
]


@pytest.mark.parametrize(("method", "path", "payload"), BAD_REQUESTS)
def test_bad_input_is_a_json_4xx_never_a_500(client, method, path, payload):
    if method == "get":
        response = client.get(path, params=payload)
    else:
        response = client.post(path, json=payload)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    error = response.json()["error"]
    assert error["message"] and "Traceback" not in response.text
    assert error["text"].startswith("Error: ")


def test_a_yaml_alias_bomb_is_refused_at_once(client):
    levels = ['x-a: &a ["x","x","x","x","x","x","x","x","x"]']
    levels += [f"x-{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    bomb = "\n".join(levels) + "\ndeployments: []\n"
    response = client.post("/api/check", json={"plan": bomb})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the plan expands to more than 32,768 YAML nodes through its aliases"


def test_body_that_is_not_json_and_body_too_large(client):
    bad = client.post("/api/estimate", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "body: not valid JSON"
    large = client.post("/api/check", content=b"x" * (64 * 1024 + 1), headers={"content-type": "application/json"})
    assert large.status_code == 413
    assert "65,536 bytes" in large.json()["error"]["message"]


def test_the_server_keeps_serving_after_bad_requests(client):
    for method, path, payload in BAD_REQUESTS:
        getattr(client, method)(path, **({"params": payload} if method == "get" else {"json": payload}))
    good = client.get("/api/estimate", params={"model": "llama-2-7b", "dtype": "fp16", "seq": "4096"})
    assert good.status_code == 200
    assert good.json()["total_bytes"] == cli_json("estimate", "llama-2-7b", "--dtype", "fp16", "--seq",
                                                  "4096")["total_bytes"]


def test_a_sweep_larger_than_the_server_allows():
    with TestClient(create_app(ServerSettings(max_sweep_points=10))) as small:
        response = small.get("/api/sweep", params={"model": "llama-2-7b", "seq": "1k..32k", "batch": "1,2"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the sweep has 12 points, more than this server's 10"


def test_a_request_past_the_time_limit_is_a_503():
    with TestClient(create_app(ServerSettings(request_timeout_s=1e-6))) as hurried:
        response = hurried.get("/api/sweep", params={"model": "llama-2-7b", "seq": "1k..32k"})
    assert response.status_code == 503
    assert "time limit" in response.json()["error"]["message"] or "limit of" in response.json()["error"]["message"]


def test_a_plan_past_the_time_limit_keeps_its_slot_until_it_ends(monkeypatch):
    """The first plan outlives its request; the next cannot start beside it, and runs once it ended."""
    import threading
    import time

    from gpuplan.web import service

    release, lock = threading.Event(), threading.Lock()
    running, most = [0], [0]

    def slow_plan(request, settings):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            release.wait(10)
            return {"planned": request.model}
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(service, "plan", slow_plan)
    with TestClient(create_app(ServerSettings(request_timeout_s=0.3))) as hurried:
        first = hurried.get("/api/plan", params={"model": "llama-2-7b"})
        second = hurried.get("/api/plan", params={"model": "llama-2-7b"})
        release.set()
        time.sleep(0.1)
        third = hurried.get("/api/plan", params={"model": "llama-2-7b"})
    assert first.status_code == second.status_code == 503
    assert first.json()["error"]["message"] == "the request ran past this server's limit of 0.3 s"
    assert most[0] == 1
    assert third.status_code == 200 and third.json() == {"planned": "llama-2-7b"}


# ---- the path guard -------------------------------------------------------------------------------


@pytest.fixture
def local_model(write_config, tmp_path, monkeypatch) -> Path:
    config = json.loads(load_catalog().get("llama-2-7b").path.read_text())
    folder = write_config(config, name="my-model")
    monkeypatch.chdir(tmp_path)
    return folder


@pytest.mark.parametrize("ref", ["./my-model/", "my-model", "/etc/passwd", "/etc", "~/models/x",
                                 "../secret/config.json", "weights.gguf", "my-model/config.json"])
def test_local_paths_are_refused(client, local_model, ref):
    for response in (client.get("/api/estimate", params={"model": ref}),
                     client.post("/api/train", json={"model": ref}),
                     client.get("/api/plan", params={"model": ref}),
                     client.get("/api/sweep", params={"model": ref})):
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["type"] == "PathRefusedError"
        assert "--allow-local-paths" in error["hint"]


def test_source_local_is_refused(client, local_model):
    response = client.get("/api/estimate", params={"model": "meta-llama/Llama-2-7b", "source": "local"})
    assert response.status_code == 403


def test_a_plan_file_naming_a_local_model_is_refused(client, local_model):
    plan = "deployments:\n  - name: mine\n    model: ./my-model\n    gpu: H100\n"
    response = client.post("/api/check", json={"plan": plan})
    assert response.status_code == 403
    assert "./my-model" in response.json()["error"]["message"]


def test_local_paths_when_the_server_allows_them(local_model):
    with TestClient(create_app(ServerSettings(allow_local_paths=True))) as trusting:
        response = trusting.get("/api/estimate", params={"model": str(local_model), "dtype": "fp16"})
    assert response.status_code == 200
    assert response.json() == cli_json("estimate", str(local_model), "--dtype", "fp16")


# ---- the network ----------------------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub(slow_s=5.0) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"), raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False, raising=False)
        server.add("acme/tiny-llama", {"config.json": json.loads(load_catalog().get("llama-2-7b").path.read_text())})
        server.add("acme/slow", {"config.json": {}}, mode="slow")
        yield server


def test_the_hub_is_not_asked_unless_the_network_is_allowed(hub):
    with TestClient(create_app(ServerSettings())) as offline:
        response = offline.get("/api/estimate", params={"model": "acme/tiny-llama"})
    assert response.status_code == 404
    assert hub.requests == []
    with TestClient(create_app(ServerSettings(allow_network=True))) as online:
        response = online.get("/api/estimate", params={"model": "acme/tiny-llama", "dtype": "fp16"})
    assert response.status_code == 200, response.text
    assert response.json()["source"] == "hub"
    assert hub.requests_for("acme/tiny-llama")


def test_a_slow_hub_is_bounded_by_the_servers_hub_timeout(hub):
    settings = ServerSettings(allow_network=True, hub_timeout_s=0.5)
    with TestClient(create_app(settings)) as online:
        response = online.get("/api/estimate", params={"model": "acme/slow"})
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "HubUnavailableError"


# ---- the page -------------------------------------------------------------------------------------


def test_the_page_and_its_files_load_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    static = ROOT / "gpuplan" / "web" / "static"
    for file in static.iterdir():
        text = file.read_text(encoding="utf-8").replace("http://www.w3.org/2000/svg", "")  # an XML namespace
        assert "://" not in text, f"{file.name} refers to another site"
        assert "//cdn" not in text


def test_a_warmed_up_server_answers_as_a_cold_one(client):
    params = {"model": "llama-2-7b", "dtype": "fp16"}
    with TestClient(create_app(ServerSettings(warm_up=True))) as warm:
        assert warm.get("/api/estimate", params=params).json() == client.get("/api/estimate", params=params).json()


def test_the_server_reports_its_settings(client):
    data = client.get("/api/server").json()
    assert data["allow_local_paths"] is False and data["allow_network"] is False


# ---- the command ----------------------------------------------------------------------------------


def test_serve_without_the_web_extra_is_one_line_and_exit_2(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the extra were not installed
    result = cli.invoke(cli_app, ["serve"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: gpuplan serve needs FastAPI and uvicorn (uvicorn is missing): "
                                     "pip install 'gpuplan[web]'")


def test_serve_refuses_a_bad_port():
    result = cli.invoke(cli_app, ["serve", "--port", "70000"])
    assert result.exit_code == 2
    assert "--port must be between 1 and 65535" in result.stderr


def test_the_cli_does_not_import_the_web_stack():
    code = ("import sys; from gpuplan.cli.app import app; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
