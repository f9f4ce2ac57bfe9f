"""docs/api.md runs as written: its python blocks are executed in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import gpuplan

API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", API_DOC.read_text(encoding="utf-8"), re.S | re.M)


def test_api_md_has_examples():
    assert len(BLOCKS) >= 8


def test_api_md_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the examples write gpuplan.yaml, sweep.csv, sweep.png
    namespace: dict = {"__name__": "api_md"}
    for index, block in enumerate(BLOCKS):
        code = compile(block, f"docs/api.md, python block {index + 1}", "exec")
        try:
            exec(code, namespace)
        except Exception as exc:  # name the block: the traceback points into docs/api.md
            pytest.fail(f"docs/api.md python block {index + 1} failed: {type(exc).__name__}: {exc}")
    assert "fails: the KV cache holds" in capsys.readouterr().out


def test_the_facade_exports():
    for name in ("estimate", "plan", "check", "sweep", "load_model", "make_workload", "__version__"):
        assert name in gpuplan.__all__ and getattr(gpuplan, name) is not None
    with pytest.raises(AttributeError):
        gpuplan.no_such_function  # noqa: B018


def test_plan_takes_names_or_a_single_gpu():
    one = gpuplan.plan("meta-llama/Llama-2-7b", gpus="RTX 4090", dtype="fp16", seq=4096, engine="transformers")
    assert [o.gpu for o in one.options] == ["RTX-4090"] and one.best is not None and one.best.count == 1
