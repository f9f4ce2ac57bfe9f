"""generate() of small Qwen3-Next, Nemotron-H and DeepSeek-V3.2 models measured on an H100 (torch 2.11,
transformers 5.17; benchmarks/measure_hybrid_generate.py, tests/fixtures/measurements/hybrid-generate-h100.jsonl),
held out: the allocation sequence of the state and attention layers was written from cache_utils.py before these
lines were recorded.

The cache each run returned is what cache_bytes counts, byte for byte, for the gated DeltaNet and Mamba-2 hybrids
(float32 recurrent states included). DeepSeek-V3.2 differs on purpose: gpuplan follows transformers 5.25, which
caches MLA's latent and rotary key; 5.17, measured here, cached the per-head keys and values
(modeling_deepseek_v32.py of that release: "Sparse-attention models cache the expanded K/V").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuplan.engines.transformers import cache_bytes
from gpuplan.models.families import config_to_spec

ROWS = [json.loads(line) for line in
        (Path(__file__).parent / "fixtures" / "measurements" / "hybrid-generate-h100.jsonl").read_text().splitlines()
        if line.strip()]
RUNS = [r for r in ROWS if "peak_allocated" in r and r.get("cache")]
BF16 = 2


def _cached(row: dict) -> int:
    spec = config_to_spec(dict(row["config"]))
    return cache_bytes(spec, row["batch"], row["prompt_tokens"] + row["new_tokens"] - 1, BF16, decoded=True)


@pytest.mark.parametrize("row", [r for r in RUNS if r["model_type"] != "deepseek_v32"], ids=lambda r: r["case_id"])
def test_state_and_attention_caches_match_the_measured_cache(row):
    assert _cached(row) == row["cache"]["storage_bytes"]


@pytest.mark.parametrize("row", [r for r in RUNS if r["model_type"] == "deepseek_v32"], ids=lambda r: r["case_id"])
def test_deepseek_v32_on_transformers_5_17_caches_per_head_keys_and_values(row):
    layer = row["cache"]["layers"][0]["tensors"]
    config = row["config"]
    heads = config["num_attention_heads"]
    assert layer["keys"]["shape"][1] == heads  # not the one-head latent of 5.25
    tokens = row["prompt_tokens"] + row["new_tokens"] - 1
    per_head = heads * (config["qk_nope_head_dim"] + config["qk_rope_head_dim"] + config["v_head_dim"])
    layers = config["num_hidden_layers"]
    measured = row["batch"] * tokens * (per_head + config["index_head_dim"]) * BF16 * layers
    assert row["cache"]["storage_bytes"] == measured
    assert _cached(row) < measured  # the 5.25 latent: what gpuplan estimates
