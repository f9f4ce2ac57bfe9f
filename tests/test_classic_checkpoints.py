"""Published checkpoints of the GPT-2-era families count the parameters their publishers state.

The configs below carry the architecture keys of each checkpoint's config.json, with the sizes its model card
states (the Hub is not reachable from the tests); tests/test_architectures.py checks the module layouts
themselves against transformers 5.25.
"""

from __future__ import annotations

import pytest

from gpuplan.engines.transformers import cache_bytes
from gpuplan.models.families import config_to_spec

CHECKPOINTS = [
    # huggingface.co/bigscience/bloom-560m model card, Technical Specifications: "559,214,592 parameters",
    # 24 layers, 16 attention heads, hidden layers 1024-dimensional, vocabulary of 250,880.
    ("bigscience/bloom-560m", {"model_type": "bloom", "hidden_size": 1024, "n_layer": 24, "n_head": 16,
                               "vocab_size": 250880}, 559_214_592),
    # huggingface.co/bigscience/bloom model card: "176,247,271,424 parameters: 3,596,615,680 embedding
    # parameters, 70 layers, 112 attention heads, hidden layers are 14336-dimensional".
    ("bigscience/bloom", {"model_type": "bloom", "hidden_size": 14336, "n_layer": 70, "n_head": 112,
                          "vocab_size": 250880}, 176_247_271_424),
    # microsoft/phi-2: the Hub API's safetensors.parameters {"F16": 2779683840}; its config: 32 layers of
    # hidden 2560, 32 heads, intermediate 10240, vocabulary 51200, untied lm_head with bias.
    ("microsoft/phi-2", {"model_type": "phi", "hidden_size": 2560, "intermediate_size": 10240,
                         "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 51200,
                         "tie_word_embeddings": False}, 2_779_683_840),
]


@pytest.mark.parametrize("model_id,config,published", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_published_checkpoints_match_their_counts(model_id, config, published):
    assert config_to_spec(config, label=model_id).parameters == published


def test_bloom_embedding_count_matches_the_model_card():
    # The BLOOM model card's "3,596,615,680 embedding parameters" are the word embeddings (vocab x hidden).
    spec = config_to_spec(CHECKPOINTS[1][1])
    assert sum(t.total_numel for t in spec.tensors if t.role.value == "embedding") == 3_596_615_680


def test_whisper_says_the_audio_encoder_is_not_counted():
    spec = config_to_spec({"model_type": "whisper", "d_model": 384, "decoder_layers": 4,
                           "decoder_attention_heads": 6, "decoder_ffn_dim": 1536, "vocab_size": 51865,
                           "max_target_positions": 448, "encoder_layers": 4, "is_encoder_decoder": True})
    assert any("audio encoder" in n for n in spec.notes)
    assert spec.max_position_embeddings == 448


def test_xlnet_mems_are_one_hidden_vector_per_token_and_layer_up_to_mem_len():
    config = {"model_type": "xlnet", "d_model": 64, "n_layer": 3, "n_head": 4, "d_head": 16, "d_inner": 128,
              "vocab_size": 100, "mem_len": 50}
    spec = config_to_spec(config)
    assert cache_bytes(spec, 2, 40, 2, decoded=True) == 2 * 3 * 40 * 64 * 2
    assert cache_bytes(spec, 2, 400, 2, decoded=True) == 2 * 3 * 50 * 64 * 2
