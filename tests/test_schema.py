"""The JSON contract changes only with a schema_version bump."""

from __future__ import annotations

import json
from pathlib import Path

from gpuplan.results import SCHEMA_VERSION, EstimateResult

SNAPSHOTS = Path(__file__).parent / "fixtures" / "schema"


def test_estimate_schema_matches_its_version_snapshot():
    snapshot = SNAPSHOTS / f"estimate-{SCHEMA_VERSION}.json"
    current = EstimateResult.model_json_schema()
    assert snapshot.exists(), f"no snapshot for schema {SCHEMA_VERSION}: run python benchmarks/update_schema.py"
    assert json.loads(snapshot.read_text()) == current, (
        "the estimate JSON schema changed: bump SCHEMA_VERSION in gpuplan/results.py (minor for added fields, "
        "major for removed or changed ones), then run python benchmarks/update_schema.py"
    )


def test_required_contract_keys_are_integers():
    props = EstimateResult.model_json_schema()["properties"]
    for key in ("parameters", "weights_bytes", "kv_cache_bytes", "activation_bytes", "overhead_bytes",
                "peak_allocated_bytes", "total_bytes"):
        assert props[key]["type"] == "integer"
