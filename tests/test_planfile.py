"""Plan files and `gpuplan check`: every bad key named with its file and line, verdicts per deployment,
exit codes, GitHub annotations and JUnit XML."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

import gpuplan
from gpuplan.cli.app import app
from gpuplan.cli.report import escape_data, escape_property, workflow_command
from gpuplan.errors import InputError, ModelNotFoundError
from gpuplan.planfile import PlanFileError, check
from gpuplan.results import SCHEMA_VERSION
from gpuplan.units import GiB

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gpuplan.yaml"

GOOD = """\
defaults:
  engine: vllm
  gpu: H100
deployments:
  - name: chat
    model: meta-llama/Llama-3.1-8B-Instruct
    max_model_len: 32k
    min_concurrency: 8
  - name: long
    model: meta-llama/Llama-3.1-70B-Instruct
    gpus: 4
    max_model_len: 128k
    min_concurrency: 4
"""


def write(tmp_path: Path, text: str, name: str = "gpuplan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def issues_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(PlanFileError) as info:
        check(path)
    return [f"{i.line}: {i.message}" + (f" ({i.hint})" if i.hint else "") for i in info.value.issues]


# ---- the example and the verdicts ---------------------------------------------------------------------


def test_the_example_plan_file_passes():
    result = check(EXAMPLE)
    assert result.passed, [(d.name, d.reasons) for d in result.deployments]
    assert [d.engine for d in result.deployments] == ["vllm", "vllm", "sglang", "transformers"]
    assert result.deployments[1].gpus == 4 and result.deployments[1].tensor_parallel == 4


def test_serving_verdicts_and_reasons(tmp_path):
    result = check(write(tmp_path, GOOD))
    chat, long = result.deployments
    assert (chat.passed, long.passed) == (True, False)
    assert result.failed == ["long"] and not result.passed
    assert chat.line == 5 and long.line == 9
    assert chat.max_model_len == 32768 and chat.max_concurrency >= 8 and chat.min_concurrency == 8
    assert long.reasons == [f"the KV cache holds {long.max_concurrency:.2f} requests of 131,072 tokens, "
                            "min_concurrency is 4"]
    assert long.estimate.tensor_parallel == 4


def test_one_request_that_does_not_fit(tmp_path):
    result = check(write(tmp_path, """\
        deployments:
          - {name: tiny, model: meta-llama/Llama-3.1-8B-Instruct, engine: vllm, gpu: L4, max_model_len: 128k}
        """))
    (d,) = result.deployments
    assert not d.passed and d.reasons[0].startswith("one request of 131,072 tokens does not fit")


def test_max_model_len_auto_passes_with_the_longest_that_fits(tmp_path):
    # The same L4 as above: --max-model-len auto shortens the 131,072 tokens to what one request can hold.
    result = check(write(tmp_path, """\
        deployments:
          - {name: tiny, model: meta-llama/Llama-3.1-8B-Instruct, engine: vllm, gpu: L4, max_model_len: auto}
        """))
    (d,) = result.deployments
    assert d.passed and 0 < d.max_model_len < 131072
    assert d.max_model_len == d.estimate.serving.max_model_len_that_fits


def test_transformers_total_and_headroom(tmp_path):
    result = check(write(tmp_path, """\
        defaults: {engine: transformers, model: llama-2-7b, dtype: fp16, seq: 4k}
        deployments:
          - {name: fits, gpu: H100, headroom: 10%}
          - {name: too-big, gpu: L4, batch: 4}
          - {name: no-room, gpu: RTX 4090, headroom: 10GiB}
        """))
    fits, too_big, no_room = result.deployments
    assert fits.passed and fits.required_free_bytes == int(fits.gpu_memory_bytes * 0.10)
    assert fits.free_bytes == fits.gpu_memory_bytes - fits.total_bytes
    assert too_big.reasons == [f"needs {too_big.total_bytes / GiB:,.2f} GiB per GPU, the GPU has "
                               f"{too_big.gpu_memory_bytes / GiB:,.2f} GiB"]
    assert no_room.total_bytes < no_room.gpu_memory_bytes  # it fits, but not with 10 GiB to spare
    assert no_room.reasons[0].startswith("leaves ") and "headroom 10GiB asks for 10.00 GiB" in no_room.reasons[0]


def test_min_concurrency_defaults_to_batch(tmp_path):
    result = check(write(tmp_path, """\
        deployments:
          - {name: a, model: llama-3.1-8b, engine: vllm, gpu: L4, max_model_len: 8k, batch: 8}
        """))
    assert result.deployments[0].min_concurrency == 8 and not result.deployments[0].passed


def test_gpus_tensor_and_pipeline_sizes(tmp_path):
    result = check(write(tmp_path, """\
        defaults: {engine: vllm, gpu: H100, model: llama-3.1-70b, max_model_len: 8k}
        deployments:
          - {name: tp, gpus: 4}
          - {name: pp, gpus: 4, pipeline_parallel: 2}
          - {name: both, tensor_parallel: 2, pipeline_parallel: 2}
        """))
    assert [(d.tensor_parallel, d.pipeline_parallel) for d in result.deployments] == [(4, 1), (2, 2), (2, 2)]


def test_keys_of_another_engine_from_defaults_are_ignored(tmp_path):
    result = check(write(tmp_path, """\
        defaults: {gpu: H100, min_concurrency: 2, headroom: 5%}
        deployments:
          - {name: hf, model: llama-2-7b, engine: transformers, seq: 2k}
          - {name: sg, model: llama-3.1-8b, engine: sglang, max_model_len: 8k}
        """))
    hf, sg = result.deployments
    assert hf.min_concurrency is None and hf.required_free_bytes > 0
    assert sg.required_free_bytes == 0 and sg.passed


def test_dict_plans_and_relative_model_paths(tmp_path, write_config):
    result = gpuplan.check({"deployments": [{"name": "a", "model": "gpt2", "gpu": "L4", "seq": "1k"}]})
    assert result.file is None and result.deployments[0].line is None and result.passed
    write_config({"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 2048},
                 name="models/tiny")
    (tmp_path / "plans").mkdir()
    plan = write(tmp_path / "plans", "deployments:\n  - {name: local, model: ../models/tiny, gpu: L4, seq: 1k}\n")
    assert check(plan).deployments[0].model == str((tmp_path / "models" / "tiny").resolve())


def test_yaml_anchors_merge_keys_and_x_keys(tmp_path):
    result = check(write(tmp_path, """\
        x-base: &base {engine: vllm, gpu: H100, max_model_len: 8k}
        deployments:
          - {<<: *base, name: a, model: llama-3.1-8b}
          - <<: *base
            name: b
            model: llama-3.1-8b
            max_model_len: 4k
        """))
    assert [d.max_model_len for d in result.deployments] == [8192, 4096]
    assert [d.line for d in result.deployments] == [3, 4]


# ---- bad files: the file, the line, the key -----------------------------------------------------


def test_misspelled_key_names_file_line_and_key(tmp_path):
    path = write(tmp_path, GOOD.replace("    min_concurrency: 8\n", "    min_concurency: 8\n"))
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: {path}:8: deployment 'chat': unknown key 'min_concurency'")
    assert "hint: did you mean 'min_concurrency'?" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.output


BAD = [
    ("deployments:\n  - {name: a, model: m, gpu: H100, batch: eight}\n",
     ["2: deployment 'a': batch expects a whole number, got 'eight'"]),
    ("deployments:\n  - name: a\n    model: m\n    gpu: H100\n    batch: true\n",
     ["5: deployment 'a': batch expects a whole number, got True"]),
    ("deployments:\n  - name: a\n    model: m\n    gpu: H100\n    seq: lots\n",
     ["5: deployment 'a': seq expects a whole number of tokens such as 4096 or 4k, got 'lots'"]),
    ("deployments:\n  - name: a\n    model: m\n    gpu: H100\n    engine: tgi\n",
     ["5: deployment 'a': engine expects one of transformers, vllm, sglang, llama.cpp, got 'tgi'"]),
    ("deployments:\n  - name: a\n    model: m\n    gpu: H100\n    headroom: lots\n",
     ["5: deployment 'a': headroom expects a percentage such as 10% or a size such as 4GiB, got 'lots'"]),
    ("deployments:\n  - name: a\n    model: m\n    gpu: H100\n    gpus: 0\n",
     ["5: deployment 'a': gpus must be at least 1, got 0"]),
    ("deployments:\n  - name: a\n    gpu: H100\n", ["2: deployment 'a': missing required key 'model'"]),
    ("deployments:\n  - {name: a, model: m}\n",
     ["2: deployment 'a': names no GPU (add gpu: (a name from `gpuplan gpus`) or gpu_memory: 79.2GiB)"]),
    ("deployments:\n  - name: a\n    model: m\n    gpu: H1000\n",
     ["4: deployment 'a': unknown GPU 'H1000' (did you mean H100-SXM-80GB, V100-SXM2-32GB, H800-SXM-80GB?)"]),
    ("deployments:\n  - name: a\n    model: m\n    gpu: H100\n    gpus: 4\n    tensor_parallel: 2\n"
     "    pipeline_parallel: 1\n",
     ["5: deployment 'a': gpus 4 is not tensor_parallel 2 x pipeline_parallel 1 (give gpus, or the two sizes)"]),
    ("deployments:\n  - name: a\n    model: m\n    engine: transformers\n    gpu: H100\n    min_concurrency: 2\n",
     ["6: deployment 'a': min_concurrency applies to vllm and sglang, not transformers"]),
    ("defaults:\n  gpu: H100\n  sqe: 4k\ndeployments:\n  - {name: a, model: m}\n",
     ["3: defaults: unknown key 'sqe' (did you mean 'seq'?)"]),
    ("deployment:\n  - {name: a, model: m, gpu: H100}\n",
     ["1: unknown top-level key 'deployment' (did you mean 'deployments'?)", "1: missing required key 'deployments' "
      "(list the deployments to check under deployments: (see docs/ci.md))"]),
    ("deployments:\n  - {name: a, model: m, gpu: H100}\n  - {name: a, model: m, gpu: H100}\n",
     ["3: deployment name 'a' is used twice (first by deployment #1)"]),
    ("deployments:\n  - name: a\n    model: m\n    gpu: H100\n    gpu: L4\n",
     ["5: key 'gpu' is given twice (first on line 4)"]),
    ("deployments: []\n", ["1: deployments expects a non-empty list of deployments"]),
    ("version: 2\ndeployments:\n  - {name: a, model: m, gpu: H100}\n",
     ["1: version 2 is not supported (this gpuplan reads version 1)"]),
    ("- a\n- b\n", ["1: a plan file is a mapping with a deployments: list (see docs/ci.md for an example)"]),
    ("deployments:\n  - {name: a, model: m\n", ["3: not valid YAML: expected ',' or '}', but got '<stream end>'"]),
    ("", ["None: the plan file is empty (it needs a deployments: list (see docs/ci.md))"]),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[e[0][:48] for _, e in BAD])
def test_bad_plan_files(tmp_path, text, expected):
    assert issues_of(tmp_path, text) == expected


def test_several_problems_are_listed_in_line_order(tmp_path):
    path = write(tmp_path, "defaults:\n  gpu: H1000\ndeployments:\n  - {name: a, model: m, sqe: 1}\n"
                           "  - {name: b, model: m, batch: x}\n")
    with pytest.raises(PlanFileError) as info:
        check(path)
    message = str(info.value)
    assert message.startswith("3 problems in the plan file:\n")
    assert [i.line for i in info.value.issues] == [2, 4, 5]
    assert f"  {path}:4: deployment 'a': unknown key 'sqe' (did you mean 'seq'?)" in message


def test_missing_file_and_folder(tmp_path):
    for target, message in ((tmp_path / "nope.yaml", "no such file"), (tmp_path, "is a folder")):
        result = runner.invoke(app, ["check", str(target)])
        assert result.exit_code == 2 and message in result.stderr


def test_unknown_model_names_the_deployment_and_keeps_exit_3(tmp_path):
    path = write(tmp_path, "deployments:\n  - {name: a, model: llama-2-7b, gpu: L4}\n"
                           "  - {name: typo, model: no-such-model-anywhere, gpu: L4}\n")
    with pytest.raises(ModelNotFoundError) as info:
        check(path, offline=True)
    assert info.value.message.startswith(f"{path}:3: deployment 'typo': ")
    result = runner.invoke(app, ["check", str(path), "--offline"])
    assert result.exit_code == 3 and "deployment 'typo'" in result.stderr


def test_estimate_errors_name_the_deployment(tmp_path):
    path = write(tmp_path, "deployments:\n  - {name: tp, model: llama-2-7b, gpu: L4, gpus: 2}\n")
    with pytest.raises(InputError, match=r":2: deployment 'tp': transformers does not shard layers over GPUs"):
        check(path)


# ---- the command: formats, exit codes, reports ----------------------------------------------------------


def test_check_table_and_exit_codes(tmp_path):
    failing = runner.invoke(app, ["check", str(write(tmp_path, GOOD))])
    assert failing.exit_code == 1, failing.output
    assert "FAIL" in failing.stdout and "long: the KV cache holds" in failing.stdout
    assert "1 of 2 deployments pass." in failing.stdout
    passing = runner.invoke(app, ["check", str(EXAMPLE)])
    assert passing.exit_code == 0, passing.output
    assert "4 of 4 deployments pass." in passing.stdout


def test_check_json(tmp_path):
    result = runner.invoke(app, ["check", str(write(tmp_path, GOOD)), "--format", "json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["schema_version"] == SCHEMA_VERSION and data["passed"] is False and data["failed"] == ["long"]
    long = data["deployments"][1]
    assert long["reasons"] and long["line"] == 9 and long["estimate"]["schema_version"] == SCHEMA_VERSION


def test_github_annotations_and_step_summary(tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    path = write(tmp_path, GOOD)
    result = runner.invoke(app, ["check", str(path), "--format", "github"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("::error file=gpuplan.yaml,line=9,title=gpuplan check%3A long::deployment 'long' "
                               "does not fit: the KV cache holds ")
    assert "PASS chat: " in result.stdout and "FAIL long: " in result.stdout
    assert "| long | meta-llama/Llama-3.1-70B-Instruct | 4 x H100-SXM-80GB |" in summary.read_text()


def test_github_annotations_for_a_bad_file(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    path = write(tmp_path, "deployments:\n  - name: a\n    model: m\n    gpu: H100\n    sqe: 10%\n")
    result = runner.invoke(app, ["check", str(path), "-f", "github"])
    assert result.exit_code == 2
    assert result.stdout == (f"::error file={path},line=5,title=gpuplan check::deployment 'a': unknown key 'sqe' "
                             "(did you mean 'seq'?)\n")


def test_workflow_command_escaping():
    assert escape_data("50%\nnext\r") == "50%25%0Anext%0D"
    assert escape_property("a: b, c") == "a%3A b%2C c"
    assert workflow_command("warning", "m", title="t") == "::warning title=t::m"


def test_junit_report(tmp_path):
    report = tmp_path / "out" / "junit.xml"
    report.parent.mkdir()
    result = runner.invoke(app, ["check", str(write(tmp_path, GOOD)), "--junit", str(report)])
    assert result.exit_code == 1
    root = ET.parse(report).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "2" and root.get("failures") == "1"
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == ["chat", "long"]
    assert cases[0].find("failure") is None and cases[1].get("line") == "9"
    assert cases[1].find("failure").get("message").startswith("the KV cache holds")
    assert cases[0].get("classname") == "gpuplan.check.gpuplan"


def test_junit_report_for_a_bad_file(tmp_path):
    report = tmp_path / "junit.xml"
    result = runner.invoke(app, ["check", str(write(tmp_path, "deployments: 3\n")), "--junit", str(report)])
    assert result.exit_code == 2
    root = ET.parse(report).getroot()
    assert root.get("errors") == "1"
    assert "deployments expects a non-empty list" in root.find("./testsuite/testcase/error").get("message")


def test_cli_start_up_does_not_load_the_plan_file_machinery():
    code = ("import sys, gpuplan.cli.app; print(sorted(m for m in ('gpuplan.planfile', 'gpuplan.sweep', "
            "'yaml', 'matplotlib', 'gpuplan.api', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_ci_docs_quote_the_reasons_the_check_prints():
    """docs/ci.md's example reasons are what `gpuplan check` says for those deployments today."""
    doc = " ".join((Path(__file__).resolve().parents[1] / "docs" / "ci.md").read_text().split())
    result = gpuplan.check({"version": 1, "deployments": [
        {"name": "long", "model": "meta-llama/Llama-3.1-70B-Instruct", "engine": "vllm", "gpu": "H100", "gpus": 4,
         "max_model_len": 131072, "min_concurrency": 4},
        {"name": "l4", "model": "meta-llama/Llama-2-7b-hf", "engine": "transformers", "dtype": "fp16", "gpu": "L4",
         "batch": 4, "seq": 4096}]})
    for deployment in result.deployments:
        assert not deployment.passed
        assert f'"{deployment.reasons[0]}"' in doc, deployment.reasons


def test_a_bare_number_of_gpu_memory_needs_a_unit(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("deployments:\n  - {name: a, model: llama-2-7b, gpu_memory: 80}\n")
    with pytest.raises(PlanFileError) as exc:
        check(path)
    assert exc.value.issues[0].line == 2
    assert "gpu_memory needs a unit: write 80GiB" in exc.value.issues[0].message
