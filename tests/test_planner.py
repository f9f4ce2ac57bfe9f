"""The planner reproduces the users' deployment guide, and does better where the guide is wrong."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gpuplan.api import resolve_gpu
from gpuplan.cli.app import app
from gpuplan.models.sources import resolve_model
from gpuplan.planner import _candidates, plan

runner = CliRunner()

# The guide's table: model, precision, GPU, how many it says.
GUIDE = [
    ("meta-llama/Llama-2-7b", "fp16", "RTX 4090", 1),
    ("meta-llama/Llama-2-13b-hf", "fp16", "A100-40GB", 1),
    ("meta-llama/Llama-2-70b-hf", "fp16", "A100-80GB", 2),
    ("mistralai/Mixtral-8x7B-v0.1", "fp16", "A100-80GB", 2),
]


@pytest.mark.parametrize("model,dtype,gpu,count", GUIDE)
def test_guide_table(model, dtype, gpu, count):
    result = plan(resolve_model(model), gpus=[resolve_gpu(gpu)], dtype=dtype, seq=4096)
    assert result.best is not None
    assert result.best.count == count
    assert result.best.fits


def test_gpt3_175b_needs_more_than_the_guides_four_a100():
    # 175B fp16 weights are 349 GB: they cannot fit in 4 x 80 GB, whatever the guide says.
    result = plan(resolve_model("gpt3-175b"), gpus=[resolve_gpu("A100-80GB")], dtype="fp16", seq=2048)
    best = result.best
    assert best is not None and best.count > 4
    assert best.nodes == 1 and best.tensor_parallel * best.pipeline_parallel == best.count
    assert best.weights_bytes * best.count > 349e9


def test_405b_spans_two_nodes_of_h100():
    result = plan(resolve_model("meta-llama/Llama-3.1-405B"), gpus=[resolve_gpu("H100-80GB")], dtype="bf16",
                  seq=4096)
    best = result.best
    assert (best.count, best.tensor_parallel, best.pipeline_parallel, best.nodes) == (16, 8, 2, 2)
    assert any("--pipeline-parallel-size 2" in line and "ray" in line for line in best.launch)


def test_tensor_parallel_shards_weights():
    one = plan(resolve_model("meta-llama/Llama-2-70b-hf"), gpus=[resolve_gpu("H200")], dtype="fp16", seq=4096,
               gpu_memory_utilization=0.97)
    two = plan(resolve_model("meta-llama/Llama-2-70b-hf"), gpus=[resolve_gpu("A100-80GB")], dtype="fp16", seq=4096)
    assert one.best.count == 1 and two.best.count == 2
    # Norms stay replicated, so TP=2 holds slightly more than half of the TP=1 weights.
    assert 0.5 < two.best.weights_bytes / one.best.weights_bytes < 0.51


def test_candidates_keep_tensor_parallel_inside_a_node():
    pairs = _candidates([1, 2, 4, 8], gpus_per_node=8, num_layers=80, max_gpus=32)
    assert all(tp <= 8 for tp, _ in pairs)
    multi_node = [(tp, pp) for tp, pp in pairs if tp * pp > 8]
    assert multi_node == [(8, 2), (8, 3), (8, 4)]


def test_plan_cli_json_contract():
    result = runner.invoke(app, ["plan", "meta-llama/Llama-2-70b-hf", "--dtype", "fp16", "--seq", "4096",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema_version"]
    option = data["options"][0]
    for key in ("gpu", "count", "tensor_parallel", "pipeline_parallel", "fits", "weights_bytes", "kv_cache_bytes",
                "activation_bytes", "overhead_bytes", "peak_allocated_bytes", "total_bytes"):
        assert key in option
    assert option["fits"] and option["launch"][0].startswith("vllm serve meta-llama/Llama-2-70b-hf")


def test_plan_that_fits_nowhere_exits_1():
    result = runner.invoke(app, ["plan", "gpt3-175b", "--dtype", "fp32", "--gpu", "RTX 3060", "--max-gpus", "4"])
    assert result.exit_code == 1
    assert "does not fit on any GPU type tried" in result.stderr


def test_sglang_launch_line():
    result = plan(resolve_model("meta-llama/Llama-3.1-8B-Instruct"), gpus=[resolve_gpu("H100")], engine="sglang",
                  seq=8192)
    assert result.best.launch[0].startswith("python -m sglang.launch_server --model-path "
                                            "meta-llama/Llama-3.1-8B-Instruct --tp 1")


def test_moe_over_several_gpus_uses_expert_parallel():
    # Mixtral-8x7B: 8 experts over TP 2 -> 4 whole experts per GPU (vLLM --enable-expert-parallel).
    result = plan(resolve_model("mistralai/Mixtral-8x7B-v0.1"), gpus=[resolve_gpu("A100-80GB")], dtype="fp16",
                  seq=4096)
    best = result.best
    assert best.count == 2 and best.expert_parallel
    assert "--enable-expert-parallel" in best.launch[0]


def test_dense_models_do_not_get_expert_parallel():
    result = plan(resolve_model("meta-llama/Llama-2-70b-hf"), gpus=[resolve_gpu("A100-80GB")], dtype="fp16", seq=4096)
    assert not result.best.expert_parallel
    assert "--enable-expert-parallel" not in result.best.launch[0]
