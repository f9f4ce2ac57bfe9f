"""The JSON contract changes only with a schema_version bump, and docs/json.md describes every field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuplan.cli.app import app
from gpuplan.results import OUTPUTS, SCHEMA_VERSION, EstimateResult, output_schema

SNAPSHOTS = Path(__file__).parent / "fixtures" / "schema"
JSON_DOC = Path(__file__).resolve().parent.parent / "docs" / "json.md"


@pytest.mark.parametrize("name", OUTPUTS)
def test_schema_matches_its_version_snapshot(name):
    snapshot = SNAPSHOTS / f"{name}-{SCHEMA_VERSION}.json"
    current = output_schema(name)
    assert snapshot.exists(), f"no snapshot for schema {SCHEMA_VERSION}: run python benchmarks/update_schema.py"
    assert json.loads(snapshot.read_text()) == current, (
        f"the {name} JSON schema changed: bump SCHEMA_VERSION in gpuplan/results_base.py (minor for added fields, "
        "major for removed or changed ones), then run python benchmarks/update_schema.py"
    )


def test_required_contract_keys_are_integers():
    props = EstimateResult.model_json_schema()["properties"]
    for key in ("parameters", "weights_bytes", "kv_cache_bytes", "activation_bytes", "overhead_bytes",
                "peak_allocated_bytes", "total_bytes"):
        assert props[key]["type"] == "integer"


def _fields(schema: dict) -> set[str]:
    names = set(schema.get("properties", {}))
    for sub in schema.get("$defs", {}).values():
        names |= set(sub.get("properties", {}))
    return names


@pytest.mark.parametrize("name", OUTPUTS)
def test_every_field_is_documented(name):
    doc = JSON_DOC.read_text(encoding="utf-8")
    undocumented = sorted(f for f in _fields(output_schema(name)) if f"`{f}`" not in doc)
    assert undocumented == [], f"docs/json.md does not describe: {undocumented}"


@pytest.mark.parametrize("name", OUTPUTS)
def test_schema_command_and_schema_version(name):
    result = CliRunner().invoke(app, ["schema", "--output", name])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema == output_schema(name)
    assert schema["properties"]["schema_version"]["default"] == SCHEMA_VERSION


def test_schema_defaults_to_estimate_and_rejects_unknown_outputs():
    assert json.loads(CliRunner().invoke(app, ["schema"]).stdout) == output_schema("estimate")
    assert CliRunner().invoke(app, ["schema", "--output", "verify"]).exit_code == 2
