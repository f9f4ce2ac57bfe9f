"""Replay the vLLM / SGLang startup logs of tests/fixtures/serving_logs.yaml through gpuplan's engine models
and print the comparison tables used in docs/serving.md.

Run from the repository root:  python benchmarks/serving_report.py
The replay itself (inputs per case, defaults, skips) lives in tests/test_engines_serving.py, so the table
and the test suite cannot drift apart.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _replay_module():
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = REPO / "tests" / "test_engines_serving.py"
    spec = importlib.util.spec_from_file_location("serving_replay", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def main() -> None:
    replay = _replay_module()
    results = replay.replay_all()
    print("## Per release era (each log read at its own release)\n")
    print(replay.format_eras(results))
    print("\n## KV capacity: logged vs predicted\n")
    print(replay.format_table([r for r in results if not r.held_out]))
    print("\n## Held out (collected after the release model was fixed)\n")
    print(replay.format_table([r for r in results if r.held_out]))
    print("\n## Components (GiB per GPU), where the log prints them\n")
    print(replay.format_components(results))
    print("\n## Not replayed\n")
    for case_id, reason in replay.NOT_REPLAYED.items():
        print(f"- `{case_id}`: {reason}")
    print("\n## Known misses\n")
    for case_id, reason in replay.KNOWN_MISSES.items():
        print(f"- `{case_id}`: {reason}")


if __name__ == "__main__":
    main()
