"""Shared test set-up: no test reaches a real network, and outputs render at a fixed width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    # Tests never talk to huggingface.co: offline unless a test starts its own local Hub server.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("GPUPLAN_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "dumb")


@pytest.fixture
def write_config(tmp_path):
    """Write a config dict (or raw text/bytes) to tmp_path/<name>/config.json and return the folder."""

    def write(content, name: str = "model", filename: str = "config.json") -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / filename
        if isinstance(content, bytes):
            target.write_bytes(content)
        elif isinstance(content, str):
            target.write_text(content)
        else:
            target.write_text(json.dumps(content))
        return folder

    return write
