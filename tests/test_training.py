"""Training memory (gpuplan train, gpuplan verify --train): the H200 measurements replayed, and the formulas.

The measurements are tests/fixtures/measurements/training-h200.jsonl (README beside it); docs/training.md
has the formulas and their sources. No torch needed.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuplan.api import load_model, train
from gpuplan.calc.training import (
    BNB_OPTIMIZER_BLOCK,
    DS_MAX_LIVE_PARAMETERS,
    DS_REDUCE_BUCKET_ELEMENTS,
    DS_SUB_GROUP_ELEMENTS,
    TrainingSetup,
    estimate_training,
    largest_module_parameters,
    lora_parameters,
    optimizer_state_bytes,
    trainable_parameters,
)
from gpuplan.cli.app import app
from gpuplan.errors import InputError
from gpuplan.verify.train_measure import compare_training, estimate_for_row, replay

FIXTURE = Path(__file__).parent / "fixtures" / "measurements" / "training-h200.jsonl"
ROWS = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
GiB = 2**30


def _id(row: dict) -> str:
    return row["case_id"]


@pytest.fixture(scope="module")
def replayed() -> list[dict]:
    return [replay(row) for row in ROWS]


# ---- the recorded measurements -----------------------------------------------------------------------

def test_fixture_covers_the_calibration_matrix():
    assert len(ROWS) >= 70
    assert len({r["model_type"] for r in ROWS}) >= 4
    assert {r["method"] for r in ROWS} == {"full", "lora"}
    assert {r["precision"] for r in ROWS} == {"bf16", "mixed"}
    assert {r["grad_checkpointing"] for r in ROWS} == {True, False}
    assert {r["optimizer"] for r in ROWS} >= {"adamw", "sgd", "sgd-momentum", "adafactor"}
    assert all(not r["oom"] for r in ROWS)
    assert {r["versions"]["gpu_name"] for r in ROWS} == {"NVIDIA H200"}


def test_peak_accuracy_targets(replayed):
    errors = [abs(c["error"]) for c in replayed]
    within_10 = sum(e <= 0.10 for e in errors) / len(errors)
    assert within_10 >= 0.90
    assert statistics.median(errors) <= 0.05
    # Tighter than the targets: every case within 5%, so that a drift in any term shows up here.
    worst = max(replayed, key=lambda c: abs(c["error"]))
    assert abs(worst["error"]) <= 0.05, worst["case_id"]


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_each_phase_and_state(row):
    comparison = replay(row)
    parts = {c["component"]: c for c in comparison["components"]}
    # Gradients and optimizer states are exact tensor sizes.
    for name in ("gradients", "optimizer states"):
        assert parts[name]["estimated_bytes"] == parts[name]["measured_bytes"], name
    for name in ("weights", "forward peak", "backward peak", "optimizer step peak"):
        est, meas = parts[name]["estimated_bytes"], parts[name]["measured_bytes"]
        assert abs(est - meas) / meas <= 0.05, (name, est / GiB, meas / GiB)


@pytest.mark.parametrize("row", [r for r in ROWS if r["method"] == "lora"], ids=_id)
def test_lora_trainable_parameters_match_peft(row):
    # peft_trainable is peft's own count (get_nb_trainable_parameters) from the device run, target_modules
    # "all-linear", rank 16.
    assert estimate_for_row(row).trainable_parameters == row["peft_trainable"]


def test_the_peak_phase_moves_with_the_workload(replayed):
    by_id = {c["case_id"]: c for c in replayed}
    small = by_id["meta-llama/Llama-3.2-1B|full|bf16|adamw|b2|s512|gc0|ga1"]["estimate"]
    large = by_id["meta-llama/Llama-3.2-1B|full|bf16|adamw|b4|s2048|gc0|ga1"]["estimate"]
    assert small["peak_phase"] == "optimizer step"
    assert large["peak_phase"] == "backward"


def test_compare_training_reports_an_oom_row():
    est = estimate_for_row(ROWS[0]).model_dump()
    out = compare_training({"case_id": "x", "oom": True, "oom_max_allocated": 5}, est)
    assert out["oom"] and out["oom_allocated_bytes"] == 5 and out["components"] == []


# ---- the formulas ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama8b():
    return load_model("meta-llama/Llama-3.1-8B", offline=True).spec


def test_adamw_keeps_two_states_in_the_parameter_dtype(llama8b):
    p = llama8b.loaded_parameters
    assert optimizer_state_bytes(llama8b, TrainingSetup(precision="bf16")) == 2 * 2 * p
    assert optimizer_state_bytes(llama8b, TrainingSetup(precision="mixed")) == 2 * 4 * p
    assert optimizer_state_bytes(llama8b, TrainingSetup(optimizer="sgd-momentum")) == 2 * p
    assert optimizer_state_bytes(llama8b, TrainingSetup(optimizer="sgd")) == 0


def test_eight_bit_adam_is_about_two_bytes_per_parameter(llama8b):
    per_param = optimizer_state_bytes(llama8b, TrainingSetup(optimizer="adamw-8bit")) / llama8b.loaded_parameters
    # Two uint8 states plus two fp32 absmax per 256-element block: 2 + 8/256 bytes, and fp32 states for the
    # tensors under 4096 elements (the norms).
    assert 2 + 8 / BNB_OPTIMIZER_BLOCK <= per_param < 2.04


def test_adafactor_states_are_factored(llama8b):
    adam = optimizer_state_bytes(llama8b, TrainingSetup(precision="mixed"))
    factored = optimizer_state_bytes(llama8b, TrainingSetup(optimizer="adafactor"))
    assert factored < adam / 1000


def test_zero_model_states_as_measured(llama8b):
    """DeepSpeed's estimators (stage_1_and_2.py: 2P + 18P/N; stage3.py: 18P/N + 4 x largest layer) count an
    fp32 gradient partition (4P/N) that in bf16 exists only for the optimizer step (measured on two H200s,
    tests/fixtures/measurements/distributed-zero*-h200.jsonl): at rest stage 2 holds 2P + 2P/N + 12P/N."""
    p = llama8b.loaded_parameters
    n = 8

    def run(**kw):
        return estimate_training(llama8b, TrainingSetup(gpus=n, **kw))

    def states(r) -> int:
        return r.weights_bytes + r.gradient_bytes + r.optimizer_bytes

    r2 = run(zero=2)
    assert states(r2) == pytest.approx(2 * p + 2 * p / n + 12 * p / n, abs=16)
    assert r2.components["sharding_step_buffers"] == pytest.approx(4 * p / n, abs=16)
    r3 = run(zero=3)
    assert states(r3) == pytest.approx(16 * p / n, abs=16)
    # the reduce bucket (5e8 bf16 elements) and up to stage3_max_live_parameters (1e9) gathered in bf16
    assert r3.components["sharding_forward_buffers"] == DS_REDUCE_BUCKET_ELEMENTS * 2 + DS_MAX_LIVE_PARAMETERS * 2
    # the step runs one sub-group (1e9 elements plus one parameter's partition at most) at a time: over two
    # GPUs the 4e9-element partition is stepped in pieces
    two = estimate_training(llama8b, TrainingSetup(gpus=2, zero=3))
    sub_group = DS_SUB_GROUP_ELEMENTS + largest_module_parameters(llama8b) // 2
    assert two.components["sharding_step_buffers"] == DS_REDUCE_BUCKET_ELEMENTS * 2 + 4 * sub_group
    assert sub_group < p // 2
    # offloaded optimizer: 2P on the GPU (stage 2), as DeepSpeed's estimator says
    assert states(run(zero=2, offload_optimizer=True)) == 2 * p


def test_zero3_divides_model_states_by_the_gpu_count(llama8b):
    s2 = estimate_training(llama8b, TrainingSetup(gpus=2, zero=3))
    s8 = estimate_training(llama8b, TrainingSetup(gpus=8, zero=3))
    assert s8.optimizer_bytes == pytest.approx(s2.optimizer_bytes / 4, rel=1e-6)
    assert s8.weights_bytes == pytest.approx(s2.weights_bytes / 4, rel=1e-6)
    fsdp2 = estimate_training(llama8b, TrainingSetup(gpus=2, fsdp=True))
    fsdp8 = estimate_training(llama8b, TrainingSetup(gpus=8, fsdp=True))
    assert fsdp8.optimizer_bytes == pytest.approx(fsdp2.optimizer_bytes / 4, rel=1e-6)


def test_qlora_below_lora_below_full(llama8b):
    peaks = {m: estimate_training(llama8b, TrainingSetup(method=m, batch=1, seq=1024)).peak_allocated_bytes
             for m in ("full", "lora", "qlora")}
    assert peaks["qlora"] < peaks["lora"] < peaks["full"]


def test_lora_parameter_count_and_targets():
    llama2 = load_model("meta-llama/Llama-2-7b-hf", offline=True).spec
    # r x (in + out) per adapted weight: q_proj and v_proj are 4096 x 4096 in 32 layers.
    assert lora_parameters(llama2, 8, ("q_proj", "v_proj")) == 32 * 2 * 8 * (4096 + 4096)
    with pytest.raises(InputError):
        lora_parameters(llama2, 8, ("nope",))
    full = trainable_parameters(llama2, TrainingSetup())
    assert full == llama2.loaded_parameters


def test_checkpointing_and_accumulation(llama8b):
    base = TrainingSetup(batch=4, seq=4096)
    plain = estimate_training(llama8b, base)
    ckpt = estimate_training(llama8b, base.model_copy(update={"grad_checkpointing": True}))
    assert ckpt.peak_allocated_bytes < plain.peak_allocated_bytes
    acc = estimate_training(llama8b, base.model_copy(update={"grad_accumulation": 4}))
    assert acc.forward_peak_bytes - plain.forward_peak_bytes == plain.gradient_bytes


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "lora", "lora_rank": 0}, "--lora-rank must be positive"),
    ({"zero": 2}, "needs --gpus 2 or more"),
    ({"fsdp": True}, "needs --gpus 2 or more"),
    ({"method": "qlora", "precision": "fp32"}, "QLoRA computes in 16-bit"),
    ({"optimizer": "lion"}, "unknown --optimizer"),
    ({"method": "dora"}, "unknown --method"),
    ({"precision": "fp8"}, "unknown --precision"),
    ({"lora_rank": 8}, "apply to --method lora or qlora"),
    ({"offload_optimizer": True}, "--offload-optimizer"),
    ({"zero": 2, "fsdp": True, "gpus": 4}, "not both"),
])
def test_bad_input_is_an_input_error(kwargs, message):
    with pytest.raises(InputError, match=message.replace("-", r"\-").replace("+", r"\+")):
        train("meta-llama/Llama-3.2-1B", offline=True, **kwargs)


# ---- the command line --------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_train_json_contract():
    result = runner.invoke(app, ["train", "meta-llama/Llama-3.2-1B", "--method", "lora", "--batch", "4",
                                 "--seq", "2048", "--gpu", "H100", "--format", "json", "--offline"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("schema_version", "weights_bytes", "gradient_bytes", "optimizer_bytes", "activation_bytes",
                "peak_allocated_bytes", "total_bytes", "trainable_parameters", "method", "precision", "optimizer",
                "lora_rank", "grad_checkpointing", "batch", "seq", "grad_accumulation", "zero", "gpus"):
        assert key in data, key
    for key in ("weights_bytes", "gradient_bytes", "optimizer_bytes", "activation_bytes", "peak_allocated_bytes",
                "total_bytes", "trainable_parameters"):
        assert isinstance(data[key], int)
    assert data["trainable_parameters"] == 11_272_192  # peft's count in the fixture (Llama-3.2-1B, r=16)
    assert data["fits"] is True


def test_cli_train_table_and_does_not_fit_exit_code():
    result = runner.invoke(app, ["train", "meta-llama/Llama-3.1-70B", "--precision", "mixed", "--gpu", "H100",
                                 "--offline"])
    assert result.exit_code == 1, result.output
    assert "does not fit" in result.stdout and "optimizer states" in result.stdout


@pytest.mark.parametrize("args", [
    ["--method", "lora", "--lora-rank", "-1"],
    ["--zero", "3"],
    ["--method", "qlora", "--precision", "fp32"],
    ["--optimizer", "lion"],
    ["--method", "lora", "--prepare-kbit"],
])
def test_cli_train_bad_input_exits_2(args):
    result = runner.invoke(app, ["train", "meta-llama/Llama-3.2-1B", "--offline", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_cli_train_prepare_kbit_json():
    """A prepared QLoRA base: float32 embeddings and activations, said in the JSON and its notes."""
    def run(*extra):
        result = runner.invoke(app, ["train", "meta-llama/Llama-3.2-1B", "--method", "qlora", "--batch", "4",
                                     "--seq", "2048", "--format", "json", "--offline", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    plain, prepared = run("--no-grad-checkpointing"), run("--prepare-kbit", "--no-grad-checkpointing")
    assert prepared["prepare_kbit"] is True and plain["prepare_kbit"] is False
    # the tied 128,256 x 2,048 embedding goes from 2 to 4 bytes (the norms add 2 x 33 x 2,048 x 2 bytes)
    assert prepared["weights_bytes"] - plain["weights_bytes"] == 128_256 * 2_048 * 2 + 33 * 2_048 * 2
    assert prepared["peak_allocated_bytes"] > 2 * plain["peak_allocated_bytes"]
    assert any("--prepare-kbit" in note for note in plain["notes"])
    assert any("math SDPA" in note for note in prepared["notes"])
    # peft's prepare_model_for_kbit_training turns gradient checkpointing on unless told not to.
    default = run("--prepare-kbit")
    assert default["grad_checkpointing"] is True and not plain["grad_checkpointing"]
    assert default["peak_allocated_bytes"] < prepared["peak_allocated_bytes"] / 2
    assert any("use_gradient_checkpointing=True" in note for note in default["notes"])
    assert run()["grad_checkpointing"] is False  # without --prepare-kbit the default stays off


def test_lora_targets_are_the_models_linear_modules():
    result = runner.invoke(app, ["train", "meta-llama/Llama-3.2-1B", "--method", "lora", "--offline",
                                 "--lora-targets", "q_proj,foo_proj"])
    assert result.exit_code == 2, result.output
    assert "--lora-targets foo_proj is not a linear module of this model" in result.stderr
    assert "q_proj" in result.stderr and "down_proj" in result.stderr and "Traceback" not in result.output
    ok = runner.invoke(app, ["train", "meta-llama/Llama-3.2-1B", "--method", "lora", "--offline",
                             "--lora-targets", "q_proj,v_proj", "--format", "json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["lora_targets"] == ["q_proj", "v_proj"]


def test_cli_verify_gpus_needs_one_or_more_and_no_train():
    for args in (["--gpus", "0"], ["--gpus", "2", "--train"]):
        result = runner.invoke(app, ["verify", "Qwen/Qwen3-0.6B", "--random-weights", "--offline", *args])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output


def test_cli_verify_train_without_torch():
    import importlib.util

    result = runner.invoke(app, ["verify", "Qwen/Qwen3-0.6B", "--train", "--method", "lora", "--random-weights",
                                 "--seq", "512", "--offline"])
    if importlib.util.find_spec("torch") is None:
        assert result.exit_code == 2
        assert "gpuplan verify needs torch" in result.stderr
    else:
        assert result.exit_code in (0, 1, 2)
    assert "Traceback" not in result.output


def test_the_cli_does_not_import_the_training_model_until_asked():
    code = "import sys, gpuplan.cli.app; print('gpuplan.calc.training' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- held out: `gpuplan verify --train` on the H200 for models and shapes the calibration never saw ----

HELD_OUT = [json.loads(line) for line in (FIXTURE.parent / "training-heldout-h200.jsonl").read_text().splitlines()
            if line.strip()]


@pytest.mark.parametrize("entry", HELD_OUT, ids=[e["case_id"] for e in HELD_OUT])
def test_held_out_training_runs_replay_within_tolerance(entry):
    import gpuplan

    e = entry["estimate"]
    replay = gpuplan.train(e["model"], method=e["method"], precision=e["precision"], optimizer=e["optimizer"],
                           batch=e["batch"], seq=e["seq"], grad_checkpointing=e["grad_checkpointing"],
                           grad_accumulation=e["grad_accumulation"], lora_rank=e["lora_rank"],
                           prepare_kbit=e.get("prepare_kbit", False))
    measured = next(c["measured_bytes"] for c in entry["components"] if c["component"] == "peak allocated (torch)")
    assert entry["exit_code"] == 0 and entry["within_tolerance"]
    assert replay.peak_allocated_bytes == e["peak_allocated_bytes"]
    assert abs(replay.peak_allocated_bytes - measured) / measured <= 0.05
