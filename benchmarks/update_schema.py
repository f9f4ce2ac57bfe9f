"""Write the JSON Schema snapshot of the current schema_version (tests/fixtures/schema/)."""

from __future__ import annotations

import json
from pathlib import Path

from gpuplan.results import SCHEMA_VERSION, EstimateResult

target = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "schema" / f"estimate-{SCHEMA_VERSION}.json"
target.write_text(json.dumps(EstimateResult.model_json_schema(), indent=2, sort_keys=True) + "\n")
print(f"wrote {target}")
