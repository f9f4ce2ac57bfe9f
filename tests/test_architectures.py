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
from gpuplan.errors import GpuplanError
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

# model_type -> what gpuplan lacks for it. Kept in step with the code: an entry that starts passing fails.
KNOWN_GAPS: dict[str, str] = {}


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


def _gap(model_type: str):
    reason = KNOWN_GAPS.get(model_type)
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


@pytest.mark.parametrize("rec", [pytest.param(r, id=r["model_type"], marks=_gap(r["model_type"]))
                                 for r in RECORDED])
def test_parameters_match_what_transformers_builds(rec):
    assert abs(parameter_error(rec)) <= PARAMETER_TOLERANCE


@pytest.mark.parametrize("rec", [pytest.param(r, id=r["model_type"], marks=_gap(r["model_type"]))
                                 for r in WITH_CACHE])
def test_cache_bytes_match_what_transformers_holds(rec):
    prompt_err, step_err = cache_errors(rec)
    assert abs(prompt_err) <= CACHE_TOLERANCE and abs(step_err) <= CACHE_TOLERANCE, (prompt_err, step_err)


def test_fixtures_cover_the_release():
    versions = {r["transformers_version"] for r in RECORDS}
    assert len(versions) == 1
    assert len(RECORDED) >= 100
    assert len(WITH_CACHE) >= 0.9 * len(RECORDED)


def test_known_gaps_name_recorded_families():
    assert set(KNOWN_GAPS) <= {r["model_type"] for r in RECORDED}


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
