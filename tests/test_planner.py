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
    # Inside one node only tensor parallelism of 1, 2, 4 or 8 GPUs: no pipeline stages within a node.
    assert [p for p in pairs if p[0] * p[1] <= 8] == [(1, 1), (2, 1), (4, 1), (8, 1)]


def test_candidates_fill_a_node_as_tp_x_pp_when_the_model_allows_no_larger_tp():
    # A model whose sizes allow tensor parallel 1, 2 and 4 only fills an 8-GPU node as TP 4 x PP 2, and
    # whole nodes of that beyond.
    pairs = _candidates([1, 2, 4], gpus_per_node=8, num_layers=40, max_gpus=16)
    assert pairs == [(1, 1), (2, 1), (4, 1), (4, 2), (4, 4)]


def test_fewest_gpus_objective_keeps_every_split_inside_a_node():
    pairs = _candidates([1, 2, 4, 8], gpus_per_node=8, num_layers=80, max_gpus=8, objective="fewest-gpus")
    assert (1, 7) in pairs and (2, 3) in pairs and len(pairs) > 4


# What an inference engineer deploys (tensor parallel inside the node): model, dtype, GPU, seq, GPUs, TP.
DEPLOYED = [
    ("gpt3-175b", "fp16", "A100-80GB", 2048, 8, 8),
    ("mistralai/Mixtral-8x7B-v0.1", "fp16", "A100-40GB", None, 4, 4),
    ("meta-llama/Llama-3.1-405B", "fp8", "H100", None, 8, 8),
    ("deepseek-ai/DeepSeek-R1", "auto", "H200", 32768, 8, 8),
]


@pytest.mark.parametrize("model,dtype,gpu,seq,count,tp", DEPLOYED, ids=[c[0] for c in DEPLOYED])
def test_layouts_an_engineer_would_deploy(model, dtype, gpu, seq, count, tp):
    best = plan(resolve_model(model), gpus=[resolve_gpu(gpu)], dtype=dtype, seq=seq).best
    assert (best.count, best.tensor_parallel, best.pipeline_parallel, best.nodes) == (count, tp, 1, 1)


@pytest.mark.parametrize("model,dtype,gpu,seq,fewest", [
    ("gpt3-175b", "fp16", "A100-80GB", 2048, 5),
    ("mistralai/Mixtral-8x7B-v0.1", "fp16", "A100-40GB", None, 3),
])
def test_fewest_gpus_is_an_explicit_objective(model, dtype, gpu, seq, fewest):
    result = plan(resolve_model(model), gpus=[resolve_gpu(gpu)], dtype=dtype, seq=seq, objective="fewest-gpus")
    assert result.best.count == fewest and result.objective == "fewest-gpus"
    assert result.best.pipeline_parallel > 1  # the odd counts need pipeline stages inside the node


def test_rank_by_gpus_then_headroom():
    result = plan(resolve_model("meta-llama/Llama-2-70b-hf"), gpus=[resolve_gpu(g) for g in ("H100", "A100-80GB",
                  "H200", "L40S")], dtype="fp16", seq=4096)
    fitting = [o for o in result.options if o.fits]
    keys = [(o.count, -o.headroom_bytes) for o in fitting]
    assert keys == sorted(keys)
    # The H200 holds it on the fewest GPUs; where counts tie, the option with more headroom per GPU ranks first.
    assert result.best.gpu == "H200-SXM-141GB"
    assert "ranked by GPUs, then headroom" in result.ranking


def test_prices_rank_by_cost_and_unpriced_types_come_last():
    gpus = [resolve_gpu(g) for g in ("H100", "A100-80GB", "H200")]
    result = plan(resolve_model("meta-llama/Llama-2-70b-hf"), gpus=gpus, dtype="fp16", seq=4096,
                  prices={"H100-SXM-80GB": 2.49, "A100-SXM-80GB": 1.29})
    assert [o.gpu for o in result.options] == ["A100-SXM-80GB", "H100-SXM-80GB", "H200-SXM-141GB"]
    assert result.best.cost_per_hour == pytest.approx(2 * 1.29)
    assert result.options[-1].cost_per_hour is None
    assert "cost per hour" in result.ranking
    assert any("no price given for 1 GPU type" in n for n in result.notes)


def test_plan_cli_prices_from_flags_and_file(tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("H100: 2.49\nA100-80GB: 1.29\n")
    result = runner.invoke(app, ["plan", "meta-llama/Llama-2-70b-hf", "--dtype", "fp16", "--seq", "4096",
                                 "--gpu", "H100", "--gpu", "A100-80GB", "--prices", str(prices),
                                 "--price", "A100-80GB=3.10", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(o["gpu"], o["cost_per_hour"]) for o in data["options"]] == [("H100-SXM-80GB", 4.98),
                                                                         ("A100-SXM-80GB", 6.2)]


def test_plan_help_promises_cheapest_only_with_prices():
    text = runner.invoke(app, ["plan", "--help"], terminal_width=200).output
    assert "cheapest" not in text.lower()
    assert "cost per hour when prices are given" in " ".join(text.split())


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


def _launch(model, **kwargs):
    result = plan(resolve_model(model), **kwargs)
    return result.best.launch[0], result.notes


def test_int4_launch_names_a_pre_quantized_checkpoint():
    line, notes = _launch("meta-llama/Llama-2-7b-hf", gpus=[resolve_gpu("RTX 3080")], dtype="int4", seq=4096)
    assert line.startswith("vllm serve <AWQ int4 checkpoint of meta-llama/Llama-2-7b-hf> ")
    assert "--quantization awq" in line
    assert any("--quantization gptq" in n and "loads its fp16 weights" in n for n in notes)
    sglang, _ = _launch("meta-llama/Llama-2-7b-hf", gpus=[resolve_gpu("L4")], engine="sglang", dtype="int4",
                        seq=4096)
    # SGLang reads a pre-quantized checkpoint's method from its config (its docs: add no --quantization).
    assert "<AWQ int4 checkpoint of meta-llama/Llama-2-7b-hf>" in sglang and "--quantization" not in sglang


def test_pre_quantized_checkpoint_is_served_as_it_is():
    line, notes = _launch("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", gpus=[resolve_gpu("L4")], seq=8192)
    assert line.startswith("vllm serve Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4 ") and "--quantization" not in line
    assert not any("pre-quantized" in n for n in notes)


@pytest.mark.parametrize("engine,dtype,flag", [
    ("vllm", "fp8", "--quantization fp8"),
    ("sglang", "fp8", "--quantization fp8"),
    ("vllm", "nf4", "--quantization bitsandbytes"),
    ("sglang", "nf4", "--load-format bitsandbytes"),
])
def test_quantized_on_load(engine, dtype, flag):
    line, _ = _launch("meta-llama/Llama-3.1-8B-Instruct", gpus=[resolve_gpu("H100")], engine=engine, dtype=dtype,
                      seq=8192)
    assert flag in line and "checkpoint of" not in line


def test_fp8_checkpoint_needs_no_quantization_flag():
    line, _ = _launch("Qwen/Qwen3-32B-FP8", gpus=[resolve_gpu("H100")], seq=8192)
    assert "--quantization" not in line


def test_launch_spells_out_every_setting_given():
    line, _ = _launch("meta-llama/Llama-3.1-8B-Instruct", gpus=[resolve_gpu("H100")], kv_dtype="fp8", seq=16384,
                      gpu_memory_utilization=0.85, max_num_seqs=64, max_num_batched_tokens=4096)
    for flag in ("--max-model-len 16384", "--kv-cache-dtype fp8", "--gpu-memory-utilization 0.85",
                 "--max-num-seqs 64", "--max-num-batched-tokens 4096"):
        assert flag in line
    sglang, _ = _launch("meta-llama/Llama-3.1-8B-Instruct", gpus=[resolve_gpu("H100")], engine="sglang",
                        kv_dtype="fp8", dtype="bf16", seq=16384, mem_fraction_static=0.8)
    for flag in ("--context-length 16384", "--kv-cache-dtype fp8_e4m3", "--mem-fraction-static 0.8",
                 "--dtype bfloat16"):
        assert flag in sglang


# Bad input is named, as estimate names it, not hidden behind "no GPU could be evaluated".
PLAN_BAD = [
    (["--engine", "foo"], "unknown engine 'foo'"),
    (["--engine", "llama.cpp"], "plan does not take --engine llama.cpp"),
    (["--dtype", "fp5"], "unknown --dtype 'fp5'"),
    (["--kv-dtype", "int8"], "unknown --kv-dtype 'int8'"),
    (["--batch", "0"], "--batch must be at least 1, got '0'"),
    (["--seq", "0"], "--seq must be at least 1, got '0'"),
    (["--gpu-memory-utilization", "2"], "--gpu-memory-utilization must be at most 1.0, got '2'"),
    (["--objective", "cheapest"], "unknown --objective 'cheapest'"),
    (["--price", "H100"], "--price expects GPU=PRICE"),
    (["--price", "H100=free"], "price of H100 must be a number"),
    (["--price", "H1000=2"], "unknown GPU 'H1000'"),
    (["--prices", "/no/such/prices.yaml"], "prices file not found"),
]


@pytest.mark.parametrize("args,message", PLAN_BAD, ids=[" ".join(a) for a, _ in PLAN_BAD])
def test_plan_names_the_bad_value(args, message):
    result = runner.invoke(app, ["plan", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "H100", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "no GPU could be evaluated" not in result.stderr and "Traceback" not in result.output


def test_plan_takes_lists_like_estimate():
    result = runner.invoke(app, ["plan", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "L4", "--batch", "1,8",
                                 "--seq", "8k,32k", "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    data = json.loads(result.stdout)
    assert [(d["batch"], d["seq"]) for d in data] == [(1, 8192), (1, 32768), (8, 8192), (8, 32768)]


def test_plan_accepts_names_in_any_case():
    result = runner.invoke(app, ["plan", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "H100", "--engine", "VLLM",
                                 "--objective", "Fewest-GPUs", "--format", "JSON", "--seq", "8k", "--dtype", "FP16"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["engine"] == "vllm" and data["objective"] == "fewest-gpus"
    assert "--dtype float16" in data["best"]["launch"][0]


@pytest.mark.parametrize("seq,tokens", [("32,768", 32768), ("1,000", 1000), ("131,072", 131072)])
def test_a_grouped_token_count_is_one_value(seq, tokens):
    result = runner.invoke(app, ["plan", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "H100", "--seq", seq,
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["seq"] == tokens


def _first_fit_by_trying_every_layout(model, gpu, **kw):
    """The reference: every deployable layout in order of GPU count, the first that fits."""
    import gpuplan
    from gpuplan.engines.tp import valid_tp_sizes

    spec = model.spec
    for tp, pp in _candidates(valid_tp_sizes(spec), gpu.gpus_per_node, spec.num_hidden_layers, 512):
        try:
            result = gpuplan.estimate(model, engine="vllm", gpu=gpu, tensor_parallel=tp, pipeline_parallel=pp, **kw)
        except Exception:  # noqa: BLE001 - a layout the model cannot take, as the planner skips it
            continue
        if result.fits:
            return tp * pp
    return None


@pytest.mark.parametrize("model_id,kw", [
    ("deepseek-ai/DeepSeek-R1", {"seq": 32768}),
    ("meta-llama/Llama-3.1-70B-Instruct", {"seq": 8192, "batch": 4}),
    ("mistralai/Mixtral-8x7B-v0.1", {"dtype": "fp16", "seq": 16384}),
])
def test_the_search_finds_the_same_counts_as_trying_every_layout(model_id, kw):
    from gpuplan.gpus.catalog import load_catalog

    model = resolve_model(model_id)
    gpus = list(load_catalog().gpus)
    result = plan(model, gpus=gpus, **kw)
    found = {o.gpu: (o.count if o.fits else None) for o in result.options}
    for gpu in gpus:
        assert found[gpu.name] == _first_fit_by_trying_every_layout(model, gpu, **kw), gpu.name
