"""Write the JSON Schema snapshots of the current schema_version (tests/fixtures/schema/), one per output."""

from __future__ import annotations

import json
from pathlib import Path

from gpuplan.results import OUTPUTS, SCHEMA_VERSION, output_schema

folder = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "schema"
for name in OUTPUTS:
    target = folder / f"{name}-{SCHEMA_VERSION}.json"
    target.write_text(json.dumps(output_schema(name), indent=2, sort_keys=True) + "\n")
    print(f"wrote {target}")
