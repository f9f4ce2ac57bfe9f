"""Parameter counts equal the published ones, exactly."""

from __future__ import annotations

import pytest

from gpuplan.models.catalog import load_catalog
from gpuplan.models.sources import parse_config, read_json_file

CATALOG = load_catalog()
PUBLISHED = [e for e in CATALOG.entries if e.parameters is not None]

# Hugging Face safetensors totals (the Hub API's safetensors.total) of the models in the users'
# deployment guide, as collected in the project's reference notes. Each must match exactly.
GUIDE_COUNTS = {
    "meta-llama/Llama-2-7b-hf": 6_738_415_616,
    "meta-llama/Llama-2-7b": 6_738_415_616,
    "meta-llama/Llama-2-13b-hf": 13_015_864_320,
    "meta-llama/Llama-2-70b-hf": 68_976_648_192,
    "mistralai/Mistral-7B-v0.1": 7_241_732_096,
    "mistralai/Mixtral-8x7B-v0.1": 46_702_792_704,
    "meta-llama/Meta-Llama-3-8B-Instruct": 8_030_261_248,
    "meta-llama/Llama-3.1-70B": 70_553_706_496,
    "Qwen/Qwen2.5-72B-Instruct": 72_706_203_648,
    "Qwen/Qwen-7B": 7_721_324_544,
    "THUDM/chatglm3-6b": 6_243_584_000,
    "facebook/opt-6.7b": 6_658_473_984,
    "openai-community/gpt2": 124_439_808,
}


def spec_of(model_id: str):
    entry = CATALOG.get(model_id)
    assert entry is not None, f"{model_id} is not in the bundled catalog"
    return parse_config(read_json_file(entry.path), label=model_id)


@pytest.mark.parametrize("model_id,expected", sorted(GUIDE_COUNTS.items()))
def test_guide_models_match_published_counts(model_id, expected):
    assert spec_of(model_id).parameters == expected


@pytest.mark.parametrize("entry", PUBLISHED, ids=[e.id for e in PUBLISHED])
def test_catalog_counts_match_published(entry):
    assert spec_of(entry.id).parameters == entry.parameters


def test_enough_published_counts_are_checked():
    assert len(PUBLISHED) >= 20


def test_every_catalog_entry_parses():
    for entry in CATALOG.entries:
        spec = spec_of(entry.id)
        assert spec.parameters > 0


def test_catalog_ids_and_aliases_are_unique():
    names = [n.lower() for e in CATALOG.entries for n in (e.id, *e.aliases)]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("alias,model_id", [
    ("llama-2-7b", "meta-llama/Llama-2-7b"),
    ("gpt3-175b", "openai/gpt3-175b"),
    ("chatglm3-6b", "THUDM/chatglm3-6b"),
    ("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1"),
    ("META-LLAMA/LLAMA-2-7B-HF", "meta-llama/Llama-2-7b-hf"),
])
def test_aliases_resolve(alias, model_id):
    assert CATALOG.get(alias).id == model_id


def test_moe_active_parameters_mixtral():
    # Mixtral-8x7B: 12.9B active parameters per token (Mistral AI's announcement, "Mixtral of experts").
    spec = spec_of("mistralai/Mixtral-8x7B-v0.1")
    assert 12.8e9 < spec.active_parameters < 13.0e9


def test_deepseek_r1_stored_elements_match_the_hub_total():
    # Hub API safetensors.total for deepseek-ai/DeepSeek-R1 (recorded in BudEcosystem/simulator,
    # BudSimulator/model_finder/data/hf_models.json): weights + FP8 block scales + the MTP layer.
    from gpuplan.calc.weights import stored_elements

    assert stored_elements(spec_of("deepseek-ai/DeepSeek-R1")) == 684_531_386_000


def test_deepseek_mtp_layer_is_in_the_checkpoint_but_not_loaded():
    spec = spec_of("deepseek-ai/DeepSeek-R1")
    # DeepSeek-V3 technical report (arXiv:2412.19437): 671B main model + 14B MTP module = 685B.
    assert round(spec.loaded_parameters / 1e9) == 671
    assert round((spec.parameters - spec.loaded_parameters) / 1e9) == 13


@pytest.mark.parametrize("model_id,expected", [
    # Hub safetensors totals of the multimodal checkpoints (Gemma3ForConditionalGeneration: text model,
    # SigLIP tower and projector), as recorded in a public registry script that copies the Hub API's
    # safetensors.total (kvfit scripts/build_registry.py) and in tests that load the model and sum numel().
    ("google/gemma-3-4b-it", 4_300_079_472),
    ("google/gemma-3-27b-it", 27_432_406_640),
])
def test_multimodal_checkpoints_count_their_vision_tower(model_id, expected):
    spec = spec_of(model_id)
    assert spec.parameters == expected
    assert spec.vision_parameters > 0
