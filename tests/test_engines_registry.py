"""The engine registry: one list of engines, one Options class each, one place that validates options, and every
front end (estimate, plan, sweep, plan files, the CLI) reaching every option."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from test_gguf import llama3_8b
from typer.testing import CliRunner

import gpuplan
from gpuplan.cli.app import app
from gpuplan.engines import (
    ENGINE_NAMES,
    SERVING_ENGINES,
    engine_module,
    engine_name,
    make_options,
    option_owners,
    options_class,
)
from gpuplan.engines.base import EngineOptions
from gpuplan.errors import InputError
from gpuplan.planfile import PlanFileError, check

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_every_engine_module_declares_what_the_registry_needs(name):
    module = engine_module(name)
    assert module.NAME == name and module.SUMMARY
    assert module.SERVING == (name in SERVING_ENGINES)
    assert issubclass(module.Options, EngineOptions) and module.Options.model_config["extra"] == "forbid"
    assert callable(module.estimate)
    for field in module.Options.model_fields.values():
        assert field.description, f"{name}: an option without a description has no CLI help"


def test_engine_names_are_read_in_any_case_and_unknown_ones_are_named():
    assert engine_name("VLLM") == "vllm" and engine_name(" llamacpp ") == "llama.cpp"
    with pytest.raises(InputError, match="unknown engine 'vlm'") as exc:
        engine_name("vlm")
    assert "did you mean vllm?" in str(exc.value.hint)


def test_an_option_of_another_engine_is_named_once_in_the_callers_spelling():
    with pytest.raises(InputError) as keyword:
        make_options("vllm", {"ctx_size": 4096, "ubatch_size": 256})
    assert keyword.value.message == "ctx_size, ubatch_size apply to the llama.cpp engine only, not vllm"
    with pytest.raises(InputError) as flag:
        make_options("transformers", {"max_model_len": "8k"}, spelling="flag")
    assert flag.value.message == "--max-model-len applies to vllm and sglang, not transformers"
    with pytest.raises(InputError) as equivalent:
        make_options("sglang", {"gpu_memory_utilization": 0.8})
    assert equivalent.value.hint == "sglang takes mem_fraction_static"


def test_unknown_options_and_bad_values():
    with pytest.raises(InputError, match="unknown option 'gpu_memory_utilisation'") as exc:
        make_options("vllm", {"gpu_memory_utilisation": 0.8})
    assert exc.value.hint == "did you mean 'gpu_memory_utilization'?"
    with pytest.raises(InputError, match=r"--block-size must be at least 1, got '0'"):
        make_options("vllm", {"block_size": "0"}, spelling="flag")
    with pytest.raises(InputError, match="flash_attn expects one of 'auto', 'on' or 'off', got 'yes'"):
        make_options("llama.cpp", {"flash_attn": "yes"})
    with pytest.raises(InputError, match="kv_cache_memory: cannot read 'lots'"):
        make_options("vllm", {"kv_cache_memory": "lots"})


def test_options_parse_the_texts_the_cli_and_plan_files_give():
    o = make_options("vllm", {"max_model_len": "32k", "kv_cache_memory": "40GiB", "gpu_memory_utilization": "0.8"})
    assert (o.max_model_len, o.kv_cache_memory, o.gpu_memory_utilization) == (32768, 40 * 2**30, 0.8)
    ll = make_options("llama.cpp", {"n_gpu_layers": "-1", "parallel": "AUTO", "cache_type_k": "Q8_0"})
    assert (ll.n_gpu_layers, ll.parallel, ll.cache_type_k) == ("all", "auto", "q8_0")
    assert make_options("vllm", {"max_num_seqs": None}).model_fields_set == set()  # None: not given


def test_an_options_object_or_keywords_but_not_both():
    vllm = engine_module("vllm")
    r = gpuplan.estimate(MODEL, engine="vllm", gpu="L4", options=vllm.Options(max_model_len=16384))
    assert r.serving.max_model_len == 16384
    with pytest.raises(InputError, match="not both"):
        gpuplan.estimate(MODEL, engine="vllm", gpu="L4", options=vllm.Options(), block_size=32)
    with pytest.raises(InputError, match="is not for the sglang engine"):
        gpuplan.estimate(MODEL, engine="sglang", gpu="L4", options=vllm.Options())


def test_option_owners_list_every_field_once_per_engine():
    owners = option_owners()
    assert owners["max_model_len"] == ["vllm", "sglang"]
    assert all(name in options_class(e).model_fields for name, engines in owners.items() for e in engines)


def test_serving_seq_is_max_model_len_and_the_two_must_agree():
    a = gpuplan.estimate(MODEL, engine="vllm", gpu="H100", seq=8192)
    b = gpuplan.estimate(MODEL, engine="vllm", gpu="H100", max_model_len=8192)
    assert a.serving == b.serving
    with pytest.raises(InputError, match="seq 4,096 and max_model_len 8,192 disagree"):
        gpuplan.estimate(MODEL, engine="vllm", gpu="H100", seq=4096, max_model_len=8192)


def test_llamacpp_batch_is_parallel_slots_of_seq_tokens(tmp_path: Path):
    path = str(llama3_8b(tmp_path))
    r = gpuplan.estimate(path, batch=4, seq=4096)
    assert (r.batch, r.seq, r.llamacpp.n_ctx) == (4, 4096, 16384)
    assert r.kv_cache_bytes == gpuplan.estimate(path, seq=16384).kv_cache_bytes
    with pytest.raises(InputError, match="batch 4 and --parallel 2 disagree"):
        gpuplan.estimate(path, batch=4, seq=4096, parallel=2)


def test_plan_reaches_every_engine_option():
    base = gpuplan.plan(MODEL, gpus=["H100"], seq=8192)
    pinned = gpuplan.plan(MODEL, gpus=["H100"], seq=8192, kv_cache_memory="10GiB", block_size=32)
    assert pinned.best.kv_cache_tokens < base.best.kv_cache_tokens
    assert pinned.best.kv_cache_bytes == 10 * 2**30 // (32 * 131072) * 32 * 131072  # whole 32-token blocks
    with pytest.raises(InputError, match="ubatch_size applies to the llama.cpp engine only, not vllm"):
        gpuplan.plan(MODEL, gpus=["H100"], ubatch_size=256)


def test_sweep_reaches_llamacpp_options(tmp_path: Path):
    path = str(llama3_8b(tmp_path))
    small = gpuplan.sweep(path, seq="4k", ubatch_size=256)
    large = gpuplan.sweep(path, seq="4k", ubatch_size=2048)
    assert small.points[0].activation_bytes < large.points[0].activation_bytes


def _plan(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gpuplan.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_plan_files_take_engine_options_as_a_mapping_or_as_keys(tmp_path: Path):
    path = _plan(tmp_path, """
        defaults: {engine: vllm, gpu: H100, engine_options: {gpu_memory_utilization: 0.8}}
        deployments:
          - {name: nested, model: llama-3.1-8b, engine_options: {max_model_len: 16k, block_size: 32}}
          - {name: flat, model: llama-3.1-8b, max_model_len: 16k, block_size: 32}
    """)
    nested, flat = check(path).deployments
    assert nested.estimate.serving == flat.estimate.serving
    assert nested.estimate.serving.memory_fraction == 0.8 and nested.max_model_len == 16384


def test_plan_file_engine_options_are_checked_with_their_lines(tmp_path: Path):
    path = _plan(tmp_path, """
        defaults: {gpu: H100, ctx_size: 4096}
        deployments:
          - name: a
            model: llama-3.1-8b
            engine: vllm
            engine_options:
              block_size: 0
          - name: b
            model: llama-3.1-8b
            engine: vllm
            ubatch_size: 512
    """)
    with pytest.raises(PlanFileError) as exc:
        check(path)
    lines = [(i.line, i.message) for i in exc.value.issues]
    assert lines == [(8, "deployment 'a': block_size must be at least 1, got 0"),
                     (12, "deployment 'b': ubatch_size applies to the llama.cpp engine only, not vllm")]


def test_the_cli_groups_engine_flags_in_panels_and_names_a_misapplied_one():
    text = run("estimate", "--help").output
    for panel in ("transformers options:", "vLLM options:", "vLLM and SGLang options:", "SGLang options:",
                  "llama.cpp options:"):
        assert panel in text
    result = run("estimate", "llama-2-7b", "--engine", "VLLM", "--gpu", "H100", "-ngl", "3")
    assert result.exit_code == 2
    assert "--n-gpu-layers applies to the llama.cpp engine only, not vllm" in result.stderr
    ok = run("estimate", "llama-2-7b", "--engine", "VLLM", "--gpu", "H100", "--max-model-len", "2k,4k",
             "--format", "json")
    assert ok.exit_code == 0, ok.output
    assert [d["serving"]["max_model_len"] for d in json.loads(ok.stdout)] == [2048, 4096]
