"""The JSON twins of the bundled YAML files (data/compiled/) hold the YAML's data, and a stale twin is ignored."""

from __future__ import annotations

import json

import yaml

from gpuplan.data_files import COMPILED_SOURCES, compiled_path, compiled_text, data_dir, read_compiled


def test_every_twin_matches_its_yaml():
    for relative in COMPILED_SOURCES:
        written = compiled_path(relative).read_text(encoding="utf-8")
        assert written == compiled_text(relative), f"{relative} changed: run python -m gpuplan.data_files"


def test_a_twin_gives_the_yaml_data():
    for relative in COMPILED_SOURCES:
        path = data_dir() / relative
        text = path.read_text(encoding="utf-8")
        assert read_compiled(path, text) == yaml.safe_load(text)


def test_a_twin_of_another_text_or_a_user_file_is_not_used(tmp_path):
    path = data_dir() / "gpus.yaml"
    assert read_compiled(path, path.read_text(encoding="utf-8") + "\n# edited\n") is None
    user = tmp_path / "gpus.yaml"
    user.write_text("gpus: []\n")
    assert read_compiled(user, user.read_text()) is None
    assert json.loads(compiled_path("gpus.yaml").read_text())["source"] == "gpus.yaml"
