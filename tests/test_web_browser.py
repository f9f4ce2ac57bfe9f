"""The page in a real browser: headless chromium opens a shared link served by a real uvicorn on 127.0.0.1, and
the rendered page shows the CLI's numbers for it.

Chromium comes from Debian (`apt-get install chromium`; .ci/run installs it). Without it the test is skipped,
unless GPUPLAN_REQUIRE_BROWSER=1 (set by .ci/run) makes a missing browser a failure.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuplan.cli.app import app as cli_app
from gpuplan.cli.output import fmt_gib, fmt_int

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("web_page", ROOT / "benchmarks" / "web_page.py")
web_page = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(web_page)  # type: ignore[union-attr]

if web_page.find_chromium() is None and os.environ.get("GPUPLAN_REQUIRE_BROWSER") != "1":
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow


def cell(dom: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert found, f"no #{element_id} in the rendered page"
    return html.unescape(found.group(1))


def cli_json(*args: str) -> dict:
    result = CliRunner().invoke(cli_app, [*args, "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def base_url():
    with web_page.running_server() as url:
        yield url


@pytest.mark.parametrize(("link", "args"), [
    ("/?model=meta-llama/Llama-2-7b&dtype=fp16&seq=4096",
     ["meta-llama/Llama-2-7b", "--dtype", "fp16", "--seq", "4096"]),
    ("/?model=meta-llama/Llama-3.1-8B-Instruct&engine=vllm&gpu=L4&max_model_len=16384",
     ["meta-llama/Llama-3.1-8B-Instruct", "--engine", "vllm", "--gpu", "L4", "--max-model-len", "16384"]),
])
def test_a_shared_link_shows_the_clis_total(base_url, link, args):
    dom = web_page.dump_dom(base_url + link)
    assert 'data-state="done"' in dom, dom[:2000]
    expected = cli_json("estimate", *args)
    assert cell(dom, "total-bytes") == fmt_int(expected["total_bytes"])
    assert cell(dom, "total-gib") == fmt_gib(expected["total_bytes"])
    assert cell(dom, "headline").startswith(expected["model"])
    # The form shows the link's values, and the plan and the sweep chart were drawn.
    assert 'id="plan" hidden' not in dom and 'id="sweep" hidden' not in dom
    assert "<svg" in dom


def test_a_bad_link_shows_the_clis_error(base_url):
    dom = web_page.dump_dom(base_url + "/?model=llama-2-7b&dtype=fp7")
    assert 'data-state="done"' in dom
    stderr = CliRunner().invoke(cli_app, ["estimate", "llama-2-7b", "--dtype", "fp7"]).stderr
    assert cell(dom, "error-message") in stderr
    assert cell(dom, "error-hint") == "hint: use one of: auto, fp32, fp16, bf16, fp8, int8, int4, nf4"
