"""gpuplan.models.http: offline mode read in one place, as huggingface_hub reads it; no HTTP client on the
estimate path of a bundled model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpuplan.errors import HubUnavailableError, InputError
from gpuplan.models.http import network_reason, offline_mode, request_timeout, status_error
from gpuplan.models.sources import resolve_model

# Values of HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, set or not (None).
OFFLINE_CASES = [
    (None, None),
    ("1", None),
    ("0", None),
    ("true", None),
    ("TRUE", None),
    ("yes", None),
    ("On", None),
    ("off", None),
    ("", "1"),
    (None, "yes"),
    ("0", "1"),
    (" 1", None),
    ("2", None),
]


def test_offline_mode_matches_huggingface_hub_for_every_value() -> None:
    # huggingface_hub reads the variables once, at import: a fresh interpreter reloads its constants per case.
    code = (
        "import importlib, json, os, sys\n"
        "import huggingface_hub.constants as c\n"
        "answers = []\n"
        "for hub, transformers in json.loads(sys.argv[1]):\n"
        "    for name, value in (('HF_HUB_OFFLINE', hub), ('TRANSFORMERS_OFFLINE', transformers)):\n"
        "        os.environ.pop(name, None)\n"
        "        if value is not None:\n"
        "            os.environ[name] = value\n"
        "    answers.append(importlib.reload(c).is_offline_mode())\n"
        "print(json.dumps(answers))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, json.dumps(OFFLINE_CASES)], capture_output=True, text=True,
                          timeout=60, check=True)
    theirs = json.loads(done.stdout)

    ours = []
    for hub, transformers in OFFLINE_CASES:
        with pytest.MonkeyPatch.context() as env:
            for name, value in (("HF_HUB_OFFLINE", hub), ("TRANSFORMERS_OFFLINE", transformers)):
                env.delenv(name, raising=False)
                if value is not None:
                    env.setenv(name, value)
            ours.append(offline_mode())

    assert ours == theirs
    assert theirs.count(True) == 7  # the cases are not all alike


def test_an_explicit_offline_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert offline_mode(False) is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert offline_mode(True) is True
    assert offline_mode(None) is False


def test_the_resolver_reads_offline_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "on")
    with pytest.raises(HubUnavailableError, match="the Hub is off-limits \\(offline mode\\)"):
        resolve_model("acme/not-bundled")
    monkeypatch.setenv("HF_HUB_OFFLINE", "off")  # not a true value for huggingface_hub either
    from huggingface_hub import constants  # which read the variable when this process first imported it

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.gpuplan-test.invalid")  # never resolves (RFC 2606)
    with pytest.raises(HubUnavailableError, match="cannot reach http://hub.gpuplan-test.invalid"):
        resolve_model("acme/not-bundled", hub_timeout_s=2)


def test_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUPLAN_HUB_TIMEOUT", raising=False)
    assert request_timeout(None) == 10.0
    assert request_timeout(2.5) == 2.5
    monkeypatch.setenv("GPUPLAN_HUB_TIMEOUT", "0.25")
    assert request_timeout(None) == 0.25
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InputError, match="positive number of seconds"):
            request_timeout(bad)


def test_status_errors_name_the_endpoint_and_the_status() -> None:
    assert status_error(503, "HTTP 503", endpoint="https://x", what="'a/b'").message == (
        "server error at https://x (HTTP 503) while fetching 'a/b'"
    )
    assert status_error(429, "HTTP 429", endpoint="https://x", what="'a/b'").message == (
        "https://x is rate-limiting requests (HTTP 429)"
    )
    assert status_error(418, "HTTP 418", endpoint="https://x", what="'a/b'").message == (
        "unexpected answer from https://x for 'a/b' (HTTP 418)"
    )


def test_network_reason_finds_the_root_cause() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise RuntimeError("request failed") from inner
    except RuntimeError as outer:
        assert network_reason(outer) == "connection refused"
    assert network_reason(ValueError("odd")) == "ValueError: odd"


def test_estimating_a_bundled_model_imports_no_http_client() -> None:
    code = (
        "import sys, gpuplan\n"
        "gpuplan.estimate('meta-llama/Llama-2-7b', dtype='fp16', seq=4096)\n"
        "print(sorted(m for m in ('huggingface_hub', 'httpx', 'httpx2', 'requests', 'urllib.request',"
        " 'gpuplan.models.http') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
