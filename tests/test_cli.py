"""The command line: exact output, exit codes, one clear line per bad input and never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gpuplan.cli.app import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_quick_start_example_table():
    result = run("estimate", "meta-llama/Llama-2-7b", "--dtype", "fp16", "--seq", "4096")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "meta-llama/Llama-2-7b (llama, MHA, 6.74B parameters)"
    assert lines[1] == "fp16 weights · fp16 KV cache · batch 1 x seq 4,096 (4,096 prompt + 0 generated)"
    table = "\n".join(lines[2:])
    assert " parameters     │       │  6,738,415,616 │  6.74B" in table
    assert " weights        │ 12.55 │ 13,476,831,232 │" in table
    assert " KV cache       │  2.00 │  2,147,483,648 │" in table


def test_json_output_contract():
    result = run("estimate", "llama-2-7b", "--dtype", "fp16", "--seq", "4096", "--format", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    for key in ("schema_version", "parameters", "weights_bytes", "kv_cache_bytes", "activation_bytes",
                "overhead_bytes", "peak_allocated_bytes", "total_bytes", "model", "source", "dtype", "batch",
                "seq"):
        assert key in data
    assert data["peak_allocated_bytes"] == data["weights_bytes"] + data["kv_cache_bytes"] + data["activation_bytes"]
    assert data["total_bytes"] == data["peak_allocated_bytes"] + data["overhead_bytes"]
    assert data["source"] == "catalog"
    optional = ("gpu_", "headroom")  # only set when a GPU is named
    assert all(isinstance(data[k], int) for k in data if k.endswith("_bytes") and not k.startswith(optional))
    assert data["fits"] is None and data["gpu"] is None  # no GPU named: nothing to fit against


def test_sweep_returns_one_object_per_combination():
    result = run("estimate", "Qwen/Qwen2.5-7B-Instruct", "--dtype", "int4", "--kv-dtype", "fp8",
                 "--batch", "1,8,32", "--seq", "2048,8192", "--format", "json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [(d["batch"], d["seq"]) for d in data] == [(b, s) for b in (1, 8, 32) for s in (2048, 8192)]
    assert {d["kv_dtype"] for d in data} == {"fp8"}


def test_sweep_table_has_a_row_per_combination():
    result = run("estimate", "llama-2-7b-hf", "--batch", "1,8", "--seq", "1k,2k")
    assert result.exit_code == 0
    rows = [line for line in result.stdout.splitlines() if "│" in line]
    assert len(rows) == 4


def test_seq_beyond_context_warns_on_stderr():
    result = run("estimate", "meta-llama/Llama-2-7b-hf", "--seq", "8192")
    assert result.exit_code == 0
    assert "exceeds the model's context length of 4096" in result.stderr


def test_models_lists_and_filters():
    result = run("models", "gemma", "--format", "json")
    ids = [e["id"] for e in json.loads(result.stdout)]
    assert ids and all("gemma" in i.lower() for i in ids)


def test_schema_is_valid_json_schema():
    result = run("schema")
    schema = json.loads(result.stdout)
    assert schema["type"] == "object"
    assert "total_bytes" in schema["properties"]


# ---- bad input: exit code, one clear message, no traceback -----------------------------------------

BAD = [
    (["estimate", "llama-2-7b", "--dtype", "fp64"], 2, "unknown --dtype 'fp64'"),
    (["estimate", "llama-2-7b", "--kv-dtype", "int3"], 2, "unknown --kv-dtype 'int3'"),
    (["estimate", "llama-2-7b", "--batch", "eight"], 2, "--batch expects whole numbers"),
    (["estimate", "llama-2-7b", "--batch", "0"], 2, "--batch must be at least 1"),
    (["estimate", "llama-2-7b", "--seq", "-5"], 2, "--seq expects whole numbers"),
    (["estimate", "llama-2-7b", "--seq", "1,,2"], 2, "has an empty item"),
    (["estimate", "llama-2-7b", "--batch", "99999999999"], 2, "batch"),
    (["estimate", "llama-2-7b", "--seq", "16", "--new-tokens", "16"], 2, "must be smaller than seq"),
    (["estimate", "llama-2-7b", "--attn", "magic"], 2, "--attn expects one of"),
    (["estimate", "llama-2-7b", "--engine", "tgi"], 2, "unknown engine"),
    (["estimate", "no-such-model-anywhere"], 3, "is not in the bundled catalog"),
    (["estimate", "lama-2-7b"], 3, "did you mean llama-2-7b"),
    (["estimate", "./missing/config.json"], 3, "no such file or directory"),
]


@pytest.mark.parametrize("args,code,message", BAD, ids=[" ".join(b[0][1:]) for b in BAD])
def test_bad_input(args, code, message):
    result = run(*args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


CONFIG_PROBLEMS = [
    (b"", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "not a text file"),
    (b'{"model_type": "llama", "hidden_size": 4096', "truncated"),
    (b'{"model_type": "llama",, }', "not valid JSON"),
    (b"[1, 2, 3]", "expected a JSON object"),
    (b'{"hidden_size": 4096}', "no 'model_type' key"),
    (b'{"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": -2, "num_attention_heads": 32,'
     b' "intermediate_size": 11008, "vocab_size": 32000}', "'num_hidden_layers' must be at least 1, got -2"),
    (b'{"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 0,'
     b' "intermediate_size": 11008, "vocab_size": 32000}', "'num_attention_heads' must be at least 1, got 0"),
    (b'{"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,'
     b' "num_key_value_heads": 5, "intermediate_size": 11008, "vocab_size": 32000}', "cannot be grouped"),
    (b'{"model_type": "llama", "hidden_size": "big", "num_hidden_layers": 32, "num_attention_heads": 32,'
     b' "intermediate_size": 11008, "vocab_size": 32000}', "'hidden_size' must be a whole number"),
    (b'{"model_type": "llama", "num_hidden_layers": 32}', "missing 'hidden_size'"),
    (b'{"model_type": "t5", "d_model": 512}', "model_type 't5' is not supported"),
]


@pytest.mark.parametrize("content,message", CONFIG_PROBLEMS, ids=[m for _, m in CONFIG_PROBLEMS])
def test_bad_config_files(write_config, content, message):
    folder = write_config(content)
    result = run("estimate", str(folder))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_folder_without_config(tmp_path):
    result = run("estimate", str(tmp_path))
    assert result.exit_code == 3
    assert "neither config.json nor params.json" in result.stderr


def test_debug_env_shows_the_traceback(write_config, monkeypatch):
    folder = write_config(b"{")
    monkeypatch.setenv("GPUPLAN_DEBUG", "1")
    result = run("estimate", str(folder))
    assert result.exit_code != 0
    assert result.exception is not None


def test_python_dash_m_and_exit_codes_in_a_real_process(write_config):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([sys.executable, "-m", "gpuplan", "estimate", "gpt2", "--seq", "512", "--format", "json"],
                        capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["parameters"] == 124_439_808
    bad = subprocess.run([sys.executable, "-m", "gpuplan", "estimate", str(write_config(b"{"))],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.startswith("Error: ")
    assert "Traceback" not in bad.stderr
    assert bad.stdout == ""


def test_gpus_json_lists_catalog_with_sources():
    result = run("gpus", "--format", "json")
    assert result.exit_code == 0
    gpus = json.loads(result.stdout)
    assert len(gpus) >= 45
    assert all(isinstance(g["memory_bytes"], int) and g["name"] and g["source"] for g in gpus)


def test_gpus_filter_table():
    result = run("gpus", "4090")
    assert result.exit_code == 0
    assert "RTX-4090" in result.stdout


def test_gpus_probe_without_driver_is_one_clear_line():
    result = run("gpus", "--probe")
    # This machine (and CI) has no NVIDIA driver; where one exists the probe succeeds instead.
    assert result.exit_code in (0, 2)
    if result.exit_code == 2:
        assert result.stderr.startswith("Error: cannot probe GPUs")
        assert "Traceback" not in result.output


# ---- GPUs and serving engines ---------------------------------------------------------------------


def test_vllm_budget_on_l4():
    result = run("estimate", "meta-llama/Llama-3.1-8B-Instruct", "--engine", "vllm", "--gpu", "L4",
                 "--gpu-memory-utilization", "0.9", "--max-model-len", "32768", "--engine-version", "0.19.0",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    serving = data["serving"]
    assert serving["engine"] == "vllm" and serving["max_model_len"] == 32768
    assert serving["kv_cache_tokens"] > 32768 and serving["fits_one_request"] is True
    assert any(line.startswith("GPU KV cache size:") for line in serving["log_lines"])
    assert data["peak_allocated_bytes"] == data["weights_bytes"] + data["kv_cache_bytes"] + data["activation_bytes"]


@pytest.mark.parametrize("auto", ["-1", "auto"])
def test_vllm_max_model_len_auto_fits_the_longest_context(auto):
    # vLLM 0.34.0 reads --max-model-len -1 or auto as -1 (utils/argparse_utils.py human_readable_int_or_auto) and
    # shortens the model's 131,072 tokens to the longest one request that fits on an L4.
    result = run("estimate", "meta-llama/Llama-3.1-8B-Instruct", "--engine", "vllm", "--gpu", "L4",
                 "--max-model-len", auto, "--engine-version", "0.34.0", "--format", "json")
    assert result.exit_code == 0, result.output
    serving = json.loads(result.stdout)["serving"]
    fitted = serving["max_model_len"]
    assert 0 < fitted < 131072 and fitted == serving["max_model_len_auto"] == serving["max_model_len_that_fits"]
    assert serving["fits_one_request"] is True
    assert f"Auto-fit max_model_len: reduced from 131072 to {fitted} " in " ".join(serving["log_lines"])


@pytest.mark.parametrize(("value", "message"), [
    ("0", "at least 1, or auto (-1)"), ("-2", "cannot read '-2'"), ("soon", "cannot read 'soon'")])
def test_vllm_max_model_len_refuses_other_values_in_one_line(value, message):
    result = run("estimate", "meta-llama/Llama-3.1-8B-Instruct", "--engine", "vllm", "--gpu", "L4",
                 "--max-model-len", value)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_does_not_fit_exits_1_with_the_reason():
    result = run("estimate", "meta-llama/Llama-2-13b-hf", "--dtype", "fp16", "--seq", "4096", "--gpu", "RTX 4090")
    assert result.exit_code == 1
    assert "does not fit" in result.stdout


def test_fits_exits_0():
    result = run("estimate", "meta-llama/Llama-2-7b", "--dtype", "fp16", "--seq", "4096", "--gpu", "rtx-4090")
    assert result.exit_code == 0
    assert "RTX-4090: fits" in result.stdout


SERVING_BAD = [
    (["--engine", "vllm"], "sizes its KV cache from the GPU's memory"),
    (["--engine", "vllm", "--gpu", "H100", "--gpu-memory-utilization", "1.5"], "must be at most 1"),
    (["--engine", "vllm", "--gpu", "H100", "-tp", "3"], "tensor parallel"),
    (["--engine", "vllm", "--gpu", "H1000"], "did you mean"),
    (["--gpu-memory", "lots"], "cannot read 'lots' as a memory size"),
    (["-tp", "2"], "transformers does not shard layers over GPUs"),
]


@pytest.mark.parametrize("args,message", SERVING_BAD, ids=[" ".join(a) for a, _ in SERVING_BAD])
def test_bad_serving_input(args, message):
    result = run("estimate", "meta-llama/Llama-3.1-8B-Instruct", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_verify_without_torch_or_cuda_says_how_to_get_them():
    import importlib.util

    result = run("verify", "gpt2", "--random-weights", "--seq", "128")
    if importlib.util.find_spec("torch") is None:
        assert result.exit_code == 2
        assert "gpuplan verify needs torch" in result.stderr and "pip install 'gpuplan[verify]'" in result.stderr
    else:  # a machine with torch: either a CUDA GPU measures, or the missing GPU is reported
        assert result.exit_code in (0, 1, 2)
    assert "Traceback" not in result.output


@pytest.mark.parametrize("tolerance", ["abc", "0", "150%"])
def test_verify_rejects_bad_tolerance(tolerance):
    result = run("verify", "gpt2", "--tolerance", tolerance)
    assert result.exit_code == 2
    assert "--tolerance" in result.stderr


@pytest.mark.parametrize("argv", [["plan", "--help"], ["estimate", "--help"], ["plan", "--bogus", "x"],
                                  ["plan", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "H100", "--seq", "8k"]])
def test_the_console_script_runs_a_command_alone_as_the_whole_app_does(argv):
    from gpuplan.cli.app import command_app

    alone = command_app(argv)
    assert [c.callback.__name__ for c in alone.registered_commands] == [argv[0]]
    whole, single = runner.invoke(app, argv), runner.invoke(alone, argv)
    assert (single.exit_code, single.output) == (whole.exit_code, whole.output)


@pytest.mark.parametrize("argv", [[], ["--help"], ["--version"], ["plann", "x"]])
def test_anything_but_a_command_name_gets_the_whole_app(argv):
    from gpuplan.cli.app import command_app

    assert command_app(argv) is app
