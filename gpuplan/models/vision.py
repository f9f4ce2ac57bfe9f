"""Vision (and audio) towers of multimodal checkpoints: their parameters, from the config's ``vision_config``.

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


# transformers/models/git/configuration_git.py GitVisionConfig defaults.
GIT_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_channels": 3, "image_size": 224, "patch_size": 16}


def clip_vision_parameters(vision: dict[str, Any], *, patch_bias: bool) -> int:
    """A CLIP-style vision transformer (modeling_clip.py CLIPVisionTransformer, modeling_git.py
    GitVisionTransformer): class_embedding, a Conv2d patch embedding, one position embedding per patch plus
    the class token, pre_layrnorm, encoder layers, post_layernorm."""
    v = ConfigReader(vision, label="vision_config")
    h, i = v.int("hidden_size"), v.int("intermediate_size")
    patch, image, channels = v.int("patch_size"), v.int("image_size"), v.int("num_channels")
    embeddings = h + channels * patch * patch * h + (h if patch_bias else 0) + ((image // patch) ** 2 + 1) * h
    return embeddings + 2 * h + _vit_layers(h, i, v.int("num_hidden_layers")) + 2 * h


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


def fuyu_patch_parameters(raw: dict[str, Any], text_hidden: int) -> int:
    """Fuyu has no vision tower: image patches go through one Linear with bias into the language model
    (modeling_fuyu.py: vision_embed_tokens = nn.Linear(patch_size ** 2 * num_channels, hidden_size))."""
    c = ConfigReader({"patch_size": 30, "num_channels": 3, **raw}, label="fuyu config")  # FuyuConfig defaults
    patch_inputs = c.int("patch_size") ** 2 * c.int("num_channels")
    return patch_inputs * text_hidden + text_hidden


# transformers/models/got_ocr2/configuration_got_ocr2.py GotOcr2VisionConfig defaults.
_GOT_OCR2_VISION_DEFAULTS = {"hidden_size": 768, "output_channels": 256, "num_hidden_layers": 12,
                             "num_attention_heads": 12, "num_channels": 3, "image_size": 1024, "patch_size": 16,
                             "mlp_dim": 3072, "qkv_bias": True, "use_abs_pos": True, "use_rel_pos": True,
                             "window_size": 14, "global_attn_indexes": [2, 5, 8, 11]}


def got_ocr2_parameters(vision: dict[str, Any], text_hidden: int) -> int:
    """GOT-OCR2's SAM-style ViT and projector (modeling_got_ocr2.py): a Conv2d patch embedding with bias, an
    absolute position embedding per patch (use_abs_pos), layers of qkv (qkv_bias) / proj / two LayerNorms /
    lin1 / lin2, with relative position tables rel_pos_h and rel_pos_w of 2 x span - 1 rows of head_dim
    (span: window_size, or the patch grid on the global_attn_indexes layers); a neck (1x1 and 3x3 convolutions
    without bias, two channel LayerNorms); the projector's two strided 3x3 convolutions without bias and a
    Linear with bias."""
    v = ConfigReader({**_GOT_OCR2_VISION_DEFAULTS, **vision}, label="vision_config")
    h, mlp, out = v.int("hidden_size"), v.int("mlp_dim"), v.int("output_channels")
    layers, grid = v.int("num_hidden_layers"), v.int("image_size") // v.int("patch_size")
    head_dim = h // v.int("num_attention_heads")
    patch = v.int("patch_size")
    total = v.int("num_channels") * patch * patch * h + h
    if v.bool("use_abs_pos", default=True):
        total += grid * grid * h
    per_layer = 2 * 2 * h + 3 * h * h + (3 * h if v.bool("qkv_bias", default=True) else 0) + h * h + h
    per_layer += h * mlp + mlp + mlp * h + h
    total += layers * per_layer
    if v.bool("use_rel_pos", default=True):
        global_layers = set(v.list("global_attn_indexes") or [])
        window = v.int("window_size", minimum=0)
        for i in range(layers):
            span = grid if i in global_layers or window == 0 else window
            total += 2 * (2 * span - 1) * head_dim
    total += out * h + 2 * out + out * out * 9 + 2 * out
    total += 2 * out * out * 9 + text_hidden * 2 * out * 9 + text_hidden * text_hidden + text_hidden
    return total


# transformers/models/phi4_multimodal/configuration_phi4_multimodal.py defaults of the vision and audio configs.
_PHI4MM_VISION_DEFAULTS = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                           "num_channels": 3, "image_size": 448, "patch_size": 14}
_PHI4MM_AUDIO_DEFAULTS = {"hidden_size": 1024, "intermediate_size": 1536, "num_blocks": 24, "num_attention_heads": 16,
                          "ext_pw_out_channel": 1024, "depthwise_separable_out_channel": 1024,
                          "depthwise_multiplier": 1, "kernel_size": 3, "input_size": 80, "time_reduction": 8,
                          "bias_max_distance": 1000, "bias_symmetric": False, "nemo_conv_channels": 1024,
                          "downsample_rate": 1}


def _phi4mm_image_parameters(vision: dict[str, Any], text_hidden: int) -> int:
    """modeling_phi4_multimodal.py Phi4MultimodalImageEmbedding: a SigLIP tower (patch Conv2d with bias, one
    position per patch, encoder, post_layernorm, and the attention-pooling head: probe, nn.MultiheadAttention,
    LayerNorm, MLP), the global/sub image feature separators, img_projection_up and img_projection_down."""
    v = ConfigReader({**_PHI4MM_VISION_DEFAULTS, **vision}, label="vision_config")
    h, i = v.int("hidden_size"), v.int("intermediate_size")
    patch, image, channels = v.int("patch_size"), v.int("image_size"), v.int("num_channels")
    tower = channels * patch * patch * h + h + (image // patch) ** 2 * h + _vit_layers(h, i, v.int("num_hidden_layers"))
    tower += 2 * h  # post_layernorm
    tower += h + (3 * h * h + 3 * h) + (h * h + h) + 2 * h + (h * i + i) + (i * h + h)  # pooling head
    return tower + 2 * h + (h * text_hidden + text_hidden) + (text_hidden * text_hidden + text_hidden)


def _phi4mm_audio_parameters(audio: dict[str, Any], text_hidden: int) -> int:
    """modeling_phi4_multimodal.py Phi4MultimodalAudioEmbedding: the conformer encoder (NeMo subsampling:
    a Conv2d from one channel, then per further halving a depthwise and a pointwise Conv2d, and a Linear from
    channels x the reduced feature size; a relative attention bias table; blocks of two GLU feed-forwards,
    attention with biases, a convolution module and two LayerNorms) and the speech / vision-speech
    up and down projections."""
    a = ConfigReader({**_PHI4MM_AUDIO_DEFAULTS, **audio}, label="audio_config")
    h, i, channels = a.int("hidden_size"), a.int("intermediate_size"), a.int("nemo_conv_channels")
    halvings = a.int("time_reduction").bit_length() - 1  # int(math.log2(time_reduction))
    final = a.int("input_size")
    for _ in range(halvings):
        final = (final - 1) // 2 + 1  # configuration_phi4_multimodal.py nemo_final_size
    embed = channels * 9 + channels + (halvings - 1) * (channels * 9 + channels + channels * channels + channels)
    embed += channels * final * h + h
    buckets = a.int("bias_max_distance") * (1 if a.bool("bias_symmetric", default=False) else 2)
    rel_bias = buckets * a.int("num_attention_heads")
    ext, dsep = a.int("ext_pw_out_channel"), a.int("depthwise_separable_out_channel")
    dw = h * a.int("depthwise_multiplier")
    kernel = a.int("kernel_size")
    feed_forward = 2 * h + (2 * i * h + 2 * i) + (i * h + h)
    conv_module = (2 * h + (2 * ext * h + 2 * ext) + 2 * ext + (dw * kernel + dw) + (dsep * dw + dsep)
                   + (ext * h + ext))
    block = 2 * feed_forward + 4 * (h * h + h) + conv_module + 2 * 2 * h
    speech_in = h * a.int("downsample_rate")
    projections = 2 * ((speech_in * text_hidden + text_hidden) + (text_hidden * text_hidden + text_hidden))
    return embed + rel_bias + a.int("num_blocks") * block + projections


def phi4_multimodal_parameters(raw: dict[str, Any], text_hidden: int) -> int:
    """The image and audio towers of Phi-4-multimodal (Phi4MultimodalFeatureEmbedding)."""
    vision = raw.get("vision_config") if isinstance(raw.get("vision_config"), dict) else {}
    audio = raw.get("audio_config") if isinstance(raw.get("audio_config"), dict) else {}
    return _phi4mm_image_parameters(vision, text_hidden) + _phi4mm_audio_parameters(audio, text_hidden)


def vision_parameters(wrapper_type: str, raw: dict[str, Any], text_hidden: int) -> int | None:
    """Parameters of the vision tower and projector, or None when gpuplan does not know this tower."""
    if wrapper_type == "fuyu":
        return fuyu_patch_parameters(raw, text_hidden)
    vision = raw.get("vision_config")
    if not isinstance(vision, dict):
        return None
    if wrapper_type == "got_ocr2":
        return got_ocr2_parameters(vision, text_hidden)
    if wrapper_type == "gemma3" and vision.get("model_type", "siglip_vision_model") == "siglip_vision_model":
        return siglip_gemma3_parameters(vision, text_hidden)
    return None
