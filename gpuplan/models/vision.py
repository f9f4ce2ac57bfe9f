"""Vision towers of multimodal checkpoints: their parameters, from the config's ``vision_config``.

gpuplan estimates the language model's KV cache and activations; a vision tower's weights still take
GPU memory (transformers and vLLM load them with the text model), so they are counted as one tensor group.
"""

from __future__ import annotations

from typing import Any

from gpuplan.models.config_reader import ConfigReader

# transformers/models/siglip/configuration_siglip.py SiglipVisionConfig defaults, for keys a
# checkpoint's vision_config leaves out.
_SIGLIP_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                    "num_channels": 3, "image_size": 224, "patch_size": 16}


def _vit_layers(h: int, i: int, layers: int) -> int:
    # Per encoder layer: two LayerNorms (weight + bias), q/k/v/out projections with bias, fc1 and fc2 with
    # bias (modeling_siglip.py SiglipEncoderLayer; modeling_clip.py CLIPEncoderLayer has the same shapes).
    return layers * (2 * 2 * h + 4 * (h * h + h) + (h * i + i) + (i * h + h))


def siglip_gemma3_parameters(vision: dict[str, Any], text_hidden: int) -> int:
    """SigLIP tower + Gemma 3 projector (modeling_siglip.py SiglipVisionTransformer: Conv2d patch embedding
    with bias, one position embedding per patch, encoder, post_layernorm; modeling_gemma3.py
    Gemma3MultiModalProjector: mm_input_projection_weight [vision_hidden, text_hidden] and an RMSNorm)."""
    v = ConfigReader({**_SIGLIP_DEFAULTS, **vision}, label="vision_config")
    h, i = v.int("hidden_size"), v.int("intermediate_size")
    patch, image, channels = v.int("patch_size"), v.int("image_size"), v.int("num_channels")
    embeddings = channels * patch * patch * h + h + (image // patch) ** 2 * h
    post_layernorm = 2 * h
    projector = h * text_hidden + h
    return embeddings + _vit_layers(h, i, v.int("num_hidden_layers")) + post_layernorm + projector


def vision_parameters(wrapper_type: str, raw: dict[str, Any], text_hidden: int) -> int | None:
    """Parameters of the vision tower and projector, or None when gpuplan does not know this tower."""
    vision = raw.get("vision_config")
    if not isinstance(vision, dict):
        return None
    if wrapper_type == "gemma3" and vision.get("model_type", "siglip_vision_model") == "siglip_vision_model":
        return siglip_gemma3_parameters(vision, text_hidden)
    return None
