"""Every decoder family of a transformers release, replayed: parameters and cache bytes as transformers has them.

The fixtures (tests/fixtures/architectures/<model_type>.json) are written by benchmarks/record_architectures.py:
the family's default config with the parameter count of the model transformers builds from it on the meta
device, and a small version of the config with the bytes its cache holds after a forward of a prompt on the
CPU (float32) and after one decode step. gpuplan must give the parameters within 0.01% and the cache bytes
within 1%, from the config alone.

Families gpuplan does not model yet are listed in ``KNOWN_GAPS`` with what is missing; they are expected to
fail (strict xfail), so a family that starts to pass must leave the list. Run this file as a script for the
table of every family: ``python tests/test_architectures.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gpuplan.engines.transformers import cache_bytes
from gpuplan.errors import ConfigError, GpuplanError, UnsupportedModelError
from gpuplan.models.families import config_to_spec

FIXTURES = Path(__file__).parent / "fixtures" / "architectures"
PARAMETER_TOLERANCE = 1e-4
CACHE_TOLERANCE = 0.01
FP32 = 4


def _load() -> list[dict]:
    out = []
    for path in sorted(FIXTURES.glob("*.json")):
        if path.name.startswith("_"):
            continue
        out.append(json.loads(path.read_text()))
    return out


RECORDS = _load()
RECORDED = [r for r in RECORDS if "error" not in r]
WITH_CACHE = [r for r in RECORDED if "cache_after_prompt" in r]

# model_type -> how gpuplan falls short of it today: "family not modelled" (no parser, and not readable as a
# Llama-style decoder), "refused: ..." (a clear error instead of a guess), or the error of the estimate
# (mostly families read as Llama-style decoders whose modules differ). Strict: an entry that starts passing fails.
KNOWN_GAPS: dict[str, str] = {
}


def parameter_error(rec: dict) -> float:
    spec = config_to_spec(rec["config"], label=rec["model_type"])
    return spec.loaded_parameters / rec["parameters"] - 1


def cache_errors(rec: dict) -> tuple[float, float]:
    """Relative error of the cache bytes after the prompt and after one decode step."""
    spec = config_to_spec(rec["small_config"], label=f"{rec['model_type']} (small)")
    tokens, batch = rec["prompt_tokens"], rec["batch"]
    after_prompt = cache_bytes(spec, batch, tokens, FP32, decoded=False)
    after_step = cache_bytes(spec, batch, tokens + 1, FP32, decoded=True)
    measured_prompt = rec["cache_after_prompt"]["storage_bytes"]
    measured_step = rec["cache_after_one_decode_step"]["storage_bytes"]
    return after_prompt / measured_prompt - 1, after_step / measured_step - 1


def _gap(model_type: str, part: str):
    """The strict xfail mark of a known gap in ``part`` ("parameters" or "cache") of a family."""
    reason = KNOWN_GAPS.get(model_type)
    if reason is None or not (part in reason or reason.startswith(("family not modelled", "refused"))):
        return []
    return [pytest.mark.xfail(reason=reason, strict=True)]


@pytest.mark.parametrize("rec", [pytest.param(r, id=r["model_type"], marks=_gap(r["model_type"], "parameters"))
                                 for r in RECORDED])
def test_parameters_match_what_transformers_builds(rec):
    assert abs(parameter_error(rec)) <= PARAMETER_TOLERANCE


@pytest.mark.parametrize("rec", [pytest.param(r, id=r["model_type"], marks=_gap(r["model_type"], "cache"))
                                 for r in WITH_CACHE])
def test_cache_bytes_match_what_transformers_holds(rec):
    prompt_err, step_err = cache_errors(rec)
    assert abs(prompt_err) <= CACHE_TOLERANCE and abs(step_err) <= CACHE_TOLERANCE, (prompt_err, step_err)


# The hybrid linear-attention, state-space, chunked, sliding and sparse-attention families of the release:
# each recorded with its cache, and none of them a known gap.
LAYER_KIND_FAMILIES = {
    "qwen3_next", "qwen3_5_text", "qwen3_5_moe_text", "olmo_hybrid", "kimi_linear", "minimax",  # linear attention
    "jamba", "falcon_h1", "nemotron_h", "granitemoehybrid", "bamba", "mamba", "mamba2", "falcon_mamba",  # SSM
    "lfm2", "lfm2_moe",  # short convolutions
    "deepseek_v32", "glm_moe_dsa",  # DeepSeek sparse attention
    "llama4_text", "gemma4_text", "gpt_oss", "mimo_v2_flash",  # chunked / sliding, per-layer heads
    "glm4_moe", "glm4_moe_lite", "ernie4_5_moe",
    "deepseek_v4", "axk2", "hy_v4", "dots3_note_text", "kolibri1_1", "bailing_hybrid", "lara_mini",  # sparse, hybrid
}


def test_fixtures_cover_the_release():
    versions = {r["transformers_version"] for r in RECORDS}
    assert len(versions) == 1
    assert len(RECORDED) >= 150
    assert len(WITH_CACHE) >= 120
    assert LAYER_KIND_FAMILIES <= {r["model_type"] for r in WITH_CACHE}
    assert not LAYER_KIND_FAMILIES & set(KNOWN_GAPS)


def test_known_gaps_name_recorded_families():
    assert set(KNOWN_GAPS) <= {r["model_type"] for r in RECORDED}


def _fixture(model_type: str, key: str = "small_config") -> dict:
    return dict(next(r for r in WITH_CACHE if r["model_type"] == model_type)[key])


def test_unknown_hybrid_family_is_estimated_from_its_layer_types_and_says_so():
    rec = next(r for r in WITH_CACHE if r["model_type"] == "qwen3_next")
    raw = {**rec["small_config"], "model_type": "next_year_hybrid"}
    spec = config_to_spec(raw)
    measured = rec["cache_after_prompt"]["storage_bytes"]
    assert cache_bytes(spec, 1, rec["prompt_tokens"], FP32, decoded=False) == measured
    assert [lc.kind for lc in spec.layer_caches] == ["state", "state", "state", "attention"]
    note = spec.notes[-1]
    assert "not known to gpuplan" in note and "gated DeltaNet" in note and "Llama-style" in note


def test_unknown_layer_kind_is_one_clear_error():
    raw = {**_fixture("qwen3_next"), "model_type": "next_year_hybrid"}
    raw["layer_types"] = ["linear_attention", "retention", "linear_attention", "full_attention"]
    with pytest.raises(ConfigError, match="layer kinds gpuplan does not know: retention"):
        config_to_spec(raw)


def test_unknown_family_with_state_dims_but_no_layer_types_is_refused():
    raw = {**_fixture("falcon_h1"), "model_type": "next_year_ssm"}
    raw.pop("layer_types", None)
    with pytest.raises(UnsupportedModelError, match="state-space layers .* without a layer_types list"):
        config_to_spec(raw)


def test_state_layers_without_state_dims_are_refused():
    raw = {**_fixture("qwen3_next"), "model_type": "next_year_hybrid"}
    for key in [k for k in raw if k.startswith("linear_")]:
        del raw[key]
    with pytest.raises(ConfigError, match="carries none of the state dims"):
        config_to_spec(raw)


def test_state_cache_does_not_grow_with_the_sequence():
    spec = config_to_spec(_fixture("mamba2", "config"))
    assert cache_bytes(spec, 2, 1_000, 2, decoded=True) == cache_bytes(spec, 2, 100_000, 2, decoded=True) > 0


def _row(rec: dict) -> tuple[str, str, str]:
    try:
        p = f"{parameter_error(rec):+.4%}"
    except GpuplanError as exc:
        p = f"error: {exc}"[:60]
    if "cache_after_prompt" not in rec:
        return rec["model_type"], p, "not recorded"
    try:
        a, b = cache_errors(rec)
        c = f"{a:+.2%} / {b:+.2%}"
    except GpuplanError as exc:
        c = f"error: {exc}"[:60]
    return rec["model_type"], p, c


def _exact(p: str, c: str) -> bool:
    def ok(s: str, tol: float) -> bool:
        return not s.startswith(("error", "not")) and all(abs(float(x.strip(" %+"))) / 100 <= tol
                                                         for x in s.split("/"))
    return ok(p, PARAMETER_TOLERANCE) and (c == "not recorded" or ok(c, CACHE_TOLERANCE))


if __name__ == "__main__":
    rows = [_row(r) for r in RECORDED]
    good = 0
    for name, p, c in rows:
        exact = _exact(p, c)
        good += exact
        if "-q" not in sys.argv or not exact:
            print(f"{'ok ' if exact else 'BAD'} {name:28s} params {p:>12s}   cache {c}")
    print(f"{good} of {len(rows)} families exact (parameters within 0.01%, cache within 1%)")
