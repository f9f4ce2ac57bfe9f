"""The per-stage weight bytes the layouts use equal what each stage's own tensor list weighs."""

from __future__ import annotations

import pytest

from gpuplan.calc.precision import resolve_precision
from gpuplan.calc.weights import weights_bytes
from gpuplan.engines.tp import parallel_layout, stage_spec, stage_weights_bytes, valid_tp_sizes
from gpuplan.models.catalog import load_catalog
from gpuplan.models.sources import resolve_model

MODEL_IDS = [e.id for e in load_catalog().entries]


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_stage_weights_match_the_stage_specs(model_id):
    spec = resolve_model(model_id).spec
    layers = spec.num_hidden_layers
    tps = [t for t in valid_tp_sizes(spec) if t in (1, 2, 4, 8)]
    # Uneven splits (3, 7 stages) give middle stages their extra layer; one stage per layer is the extreme.
    pps = sorted({1, 2, 3, min(7, layers)})
    cases = [("auto", 1, pp) for pp in pps] + [("int4", tps[-1], pp) for pp in pps] + [("auto", tps[-1], layers)]
    for dtype, tp, pp in cases:
        precision = resolve_precision(spec, dtype)
        slow = [weights_bytes(stage_spec(spec, tp, pp, stage), precision) for stage in range(pp)]
        assert stage_weights_bytes(spec, precision, tp, pp) == slow, (dtype, tp, pp)


def test_layouts_are_reused_for_the_same_model_and_computed_for_a_new_one():
    spec = resolve_model("meta-llama/Llama-2-70b-hf").spec
    precision = resolve_precision(spec, "fp16")
    first = parallel_layout(spec, precision, 4, 2)
    assert parallel_layout(spec, precision, 4, 2) is first
    other = resolve_model("meta-llama/Llama-2-7b-hf").spec
    assert parallel_layout(other, resolve_precision(other, "fp16"), 4, 2).weights_bytes < first.weights_bytes
