"""Record, for every decoder-only causal-LM family of the installed transformers, what transformers builds.

For each family (``model_type`` of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, encoder and encoder-decoder
models left out):

* **parameters**: the family's default config, the model built on the meta device, its exact parameter
  count and the count per parameter name (layer indices folded into ``*``);
* **cache**: a small version of the same config (few layers, small widths, the same pattern of layer kinds),
  built on the CPU in float32, a forward of ``PROMPT_TOKENS`` tokens with ``use_cache=True``, then one
  decode step: the bytes each cache layer holds after each (tensor storage, counted once per storage).

Each family is written to tests/fixtures/architectures/<model_type>.json with the transformers version;
tests/test_architectures.py replays them against gpuplan without transformers.

Run it in a separate environment (it needs torch and transformers; gpuplan does not):

    python3 -m venv /tmp/venv-rec && . /tmp/venv-rec/bin/activate
    pip install torch transformers
    python benchmarks/record_architectures.py [--only qwen3_next,jamba] [--out tests/fixtures/architectures]

CPU time is bounded: the small models have at most ``MAX_SMALL_LAYERS`` layers, widths of a few hundred,
``SMALL_EXPERTS`` experts, and each family gets ``FAMILY_TIMEOUT_S`` seconds.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import re
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

PROMPT_TOKENS = 300
MAX_SMALL_LAYERS = 8
SMALL_HIDDEN = 256
SMALL_HEADS = 4
SMALL_VOCAB = 1024
SMALL_EXPERTS = 8
SMALL_TOPK = 2
SMALL_INTERMEDIATE = 256
SMALL_EXPERT_INTERMEDIATE = 64
FAMILY_TIMEOUT_S = 180
# Address-space cap of the recording process: a family whose small model still needs more fails with a
# MemoryError (recorded) instead of bringing the machine's out-of-memory killer on (xlstm's default
# config did, at 24 GB).
MEMORY_LIMIT_BYTES = 8 << 30

# Families whose default config is Mamba on every layer: transformers 5.25 cannot run a forward of such a
# model (masking_utils asks the cache for an attention layer's mask sizes), so their small version makes
# the last layer attention, as the released checkpoints of these families have some attention layers.
SMALL_OVERRIDES: dict[str, dict] = {
    "bamba": {"attn_layer_indices": [3]},
    "granitemoehybrid": {"layer_types": ["linear_attention"] * 3 + ["full_attention"]},
}


def _short_conv_pattern(config) -> None:
    """LFM2's default config is attention on every layer (lfm2) or has no layer_types at all (lfm2_moe,
    whose model then cannot be built); the released checkpoints mix short-convolution and attention
    layers, so the recorded config does too: attention on layers 2, 5, 8, 10, 12, 14 (the pattern of the
    LFM2-1.2B checkpoint's full_attn_idxs), short convolutions elsewhere."""
    attention = {2, 5, 8, 10, 12, 14}
    config.layer_types = ["full_attention" if i in attention else "conv" for i in range(config.num_hidden_layers)]
    if hasattr(config, "full_attn_idxs"):
        config.full_attn_idxs = sorted(i for i in attention if i < config.num_hidden_layers)


# Changes to a family's default config before anything is recorded, each with its reason.
DEFAULT_OVERRIDES = {"lfm2": _short_conv_pattern, "lfm2_moe": _short_conv_pattern}

OUT_DEFAULT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "architectures"

_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_EXPERT_KEYS = ("num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts", "num_routed_experts")
_TOPK_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_k", "top_k")
_INTERMEDIATE_KEYS = ("intermediate_size", "ffn_hidden_size", "n_inner", "ffn_dim", "dense_intermediate_size")
_EXPERT_WIDTH_KEYS = ("moe_intermediate_size", "expert_intermediate_size", "shared_expert_intermediate_size",
                      "moe_shared_expert_intermediate_size")


class FamilyTimeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise FamilyTimeout(f"over {FAMILY_TIMEOUT_S} s")


def decoder_families() -> tuple[list[str], dict[str, str]]:
    """Model types to record, and those left out with the reason."""
    from transformers.models.auto import modeling_auto as ma

    causal = ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    masked = set(ma.MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    seq2seq = set(ma.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
    keep, skipped = [], {}
    for model_type in sorted(causal):
        if model_type in masked:
            skipped[model_type] = "encoder model that can run as a decoder (also a masked-LM family)"
        elif model_type in seq2seq:
            skipped[model_type] = "encoder-decoder model"
        elif f"{model_type}_text" in causal:
            skipped[model_type] = f"multimodal wrapper: its language model is recorded as {model_type}_text"
        else:
            keep.append(model_type)
    return keep, skipped


# ---- parameters of the default config ------------------------------------------------------------------

def _fold(name: str) -> str:
    return re.sub(r"\.\d+\.", ".*.", re.sub(r"\.\d+\.", ".*.", name))


def parameter_table(model) -> tuple[int, dict[str, list]]:
    """Total (tied tensors once, as model.parameters() yields them) and {folded name: [shape, count]}."""
    total = 0
    table: dict[str, list] = {}
    for name, p in model.named_parameters():
        total += p.numel()
        key = _fold(name)
        if key in table and table[key][0] == list(p.shape):
            table[key][1] += 1
        else:
            table[key if key not in table else name] = [list(p.shape), 1]
    return total, table


def record_parameters(model_type: str) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type)
    if model_type in DEFAULT_OVERRIDES:
        DEFAULT_OVERRIDES[model_type](config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total, table = parameter_table(model)
    return {"config": config.to_dict(), "model_class": type(model).__name__, "parameters": total,
            "parameter_table": table}


# ---- the small config ---------------------------------------------------------------------------------

def _layers_key(d: dict) -> str | None:
    return next((k for k in _LAYER_KEYS if isinstance(d.get(k), int)), None)


def _kind_cover(d: dict, n_layers: int) -> int:
    """Fewest leading layers that contain every kind of layer the config lists (at least 4 where possible)."""
    need = min(n_layers, 4)
    for key, value in d.items():
        # a pattern given as a period and an offset (Jamba: attn_layer_period / attn_layer_offset)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SMALL_LAYERS:
            if key.endswith("_period"):
                need = max(need, value)
            elif key.endswith("_offset"):
                need = max(need, value + 1)
        # layers named by index (Bamba: attn_layer_indices): the first one must be among the kept layers
        if (isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                and key.endswith(("layers", "layer_ids", "idxs", "indices", "layer_idx")) and min(value) >= 0):
            need = max(need, min(value) + 1)
        seq = value if isinstance(value, (list, str)) else None
        if seq is not None and len(seq) == n_layers and len(set(seq)) > 1:
            kinds = set(seq)
            seen = set()
            for i, kind in enumerate(seq):
                seen.add(kind)
                if seen == kinds:
                    need = max(need, i + 1)
                    break
    return need


def _slice_per_layer(d: dict, n_old: int, n_new: int) -> None:
    """Cut every per-layer list/string to ``n_new`` entries and every list of layer indices to those below."""
    for key, value in list(d.items()):
        if key in ("architectures",):
            continue
        if key == "per_layer_config" and isinstance(value, dict):
            # per-layer overrides keyed by layer index (Gemma 4: {"05": {"head_dim": 512}, ...})
            d[key] = {k: v for k, v in value.items() if str(k).isdigit() and int(k) < n_new} or None
            continue
        if isinstance(value, (list, str)) and len(value) == n_old and n_old > 1 and key != "model_type":
            d[key] = value[:n_new]
        elif (isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                        for v in value) and max(value) < n_old + 1
              and key.endswith(("layers", "layer_ids", "idxs", "indices", "layer_idx"))):
            d[key] = [v for v in value if v < n_new]


def _scale_heads(d: dict) -> None:
    heads = d.get("num_attention_heads")
    if not isinstance(heads, int) or heads <= SMALL_HEADS:
        return
    kv = d.get("num_key_value_heads")
    d["num_attention_heads"] = SMALL_HEADS
    if isinstance(kv, int):
        d["num_key_value_heads"] = SMALL_HEADS if kv == heads else 1 if kv == 1 else max(1, SMALL_HEADS // 2)


def small_config_dict(default: dict, *, shrink_widths: bool) -> dict:
    d = copy.deepcopy(default)
    key = _layers_key(d)
    if key is not None:
        n_old = d[key]
        n_new = min(n_old, max(_kind_cover(d, n_old), 4), MAX_SMALL_LAYERS)
        d[key] = n_new
        _slice_per_layer(d, n_old, n_new)
    if isinstance(d.get("vocab_size"), int):
        d["vocab_size"] = SMALL_VOCAB
        for tok in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "image_token_id"):
            v = d.get(tok)
            if isinstance(v, int) and v >= SMALL_VOCAB:
                d[tok] = SMALL_VOCAB - 1 - ("pad", "bos", "eos", "sep", "ima").index(tok[:3])
            elif isinstance(v, list):
                d[tok] = [t for t in v if t < SMALL_VOCAB] or None
    for k in _EXPERT_KEYS:
        if isinstance(d.get(k), int) and d[k] > SMALL_EXPERTS:
            d[k] = SMALL_EXPERTS
    for k in _TOPK_KEYS:
        if isinstance(d.get(k), int) and d[k] > SMALL_TOPK:
            d[k] = SMALL_TOPK
    for k in ("n_group", "topk_group", "num_expert_group"):
        if isinstance(d.get(k), int) and d[k] > 1 and d.get("topk_group") is not None:
            d[k] = 1
    for k in _INTERMEDIATE_KEYS:
        if isinstance(d.get(k), int) and d[k] > SMALL_INTERMEDIATE:
            d[k] = SMALL_INTERMEDIATE
    for k in _EXPERT_WIDTH_KEYS:
        if isinstance(d.get(k), int) and d[k] > SMALL_EXPERT_INTERMEDIATE:
            d[k] = SMALL_EXPERT_INTERMEDIATE
    if shrink_widths:
        hidden = d.get("hidden_size")
        if isinstance(hidden, int) and hidden > SMALL_HIDDEN:
            heads = d.get("num_attention_heads")
            explicit = d.get("head_dim")
            _scale_heads(d)
            if not explicit and isinstance(heads, int):
                d["head_dim"] = hidden // heads
            d["hidden_size"] = SMALL_HIDDEN if explicit or not isinstance(heads, int) else \
                d["num_attention_heads"] * (hidden // heads)
            if all(isinstance(d.get(k), int) for k in ("mamba_n_heads", "mamba_d_head", "mamba_expand")):
                # Mamba-2 configs check mamba_n_heads x mamba_d_head == mamba_expand x hidden_size
                d["mamba_d_head"] = d["mamba_expand"] * d["hidden_size"] // d["mamba_n_heads"]
    return d


# ---- the cache after a forward ---------------------------------------------------------------------------

def _tensors(obj, prefix: str, depth: int = 0):
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif depth < 3 and isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}[{k}]", depth + 1)
    elif depth < 3 and isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]", depth + 1)


def cache_snapshot(cache) -> dict:
    """Per cache layer: its class and every tensor it holds (shape, dtype, bytes of the view and of its storage).

    A storage is counted once over the whole cache (``storage_bytes``), where it is first met; 0-d tensors
    (a layer's length or window counters) are listed apart as ``scalar_bytes``.
    """
    seen: set[int] = set()
    layers = getattr(cache, "layers", None)
    if layers is None:
        layers = [cache]
    # per-layer attributes: the layer's own tensors, plus the i-th item of the cache's own per-layer lists
    # (MiniMaxCache keeps its linear-attention states in cache.linear_cache, outside cache.layers)
    per_layer: list[tuple[str, list]] = [(type(layer).__name__, sorted(vars(layer).items())) for layer in layers]
    if getattr(cache, "layers", None) is not None:
        for attr, value in sorted(vars(cache).items()):
            if attr == "layers" or not isinstance(value, list):
                continue
            for i, item in enumerate(value):
                while len(per_layer) <= i:
                    per_layer.append((f"{type(cache).__name__}.{attr}", []))
                per_layer[i][1].append((f"cache.{attr}", item))
    out = []
    for class_name, attrs in per_layer:
        entry = {"class": class_name, "tensors": {}, "storage_bytes": 0, "scalar_bytes": 0}
        for attr, value in attrs:
            for name, t in _tensors(value, attr):
                if t.device.type == "meta":
                    continue
                storage = t.untyped_storage()
                nbytes = storage.nbytes()
                ptr = storage.data_ptr()
                if t.dim() == 0:
                    entry["scalar_bytes"] += nbytes if ptr not in seen else 0
                    seen.add(ptr)
                    continue
                entry["tensors"][name] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                                          "bytes": t.numel() * t.element_size(), "storage_bytes": nbytes}
                if ptr not in seen and nbytes:
                    entry["storage_bytes"] += nbytes
                    seen.add(ptr)
        out.append(entry)
    return {"cache_class": type(cache).__name__, "layers": out,
            "storage_bytes": sum(e["storage_bytes"] for e in out)}


def record_cache(model_type: str, default: dict, shrink_widths: bool) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    small = small_config_dict(default, shrink_widths=shrink_widths)
    small.update(SMALL_OVERRIDES.get(model_type, {}))
    small.pop("model_type", None)
    for k in ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype"):
        small.pop(k, None)
    config = AutoConfig.for_model(model_type, **small)
    config._attn_implementation = "eager" if getattr(config, "_attn_implementation", None) is None else \
        config._attn_implementation
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    small_params, _ = parameter_table(model)
    vocab = config.get_text_config(decoder=True).vocab_size
    ids = torch.randint(4, min(vocab, SMALL_VOCAB) - 8, (1, PROMPT_TOKENS))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
        if cache is None:
            raise RuntimeError("the forward returned no cache")
        prefill = cache_snapshot(cache)
        nxt = out.logits[:, -1:].argmax(-1)
        # Most families take the cache as ``past_key_values``; a few (ergo) name the argument ``cache``, as
        # generate() passes it to them: a cache handed over under the other name is silently ignored.
        cache_arg = "past_key_values" if "past_key_values" in inspect.signature(model.forward).parameters else "cache"
        out2 = model(input_ids=nxt, use_cache=True, **{cache_arg: cache})
        cache2 = getattr(out2, "past_key_values", None) or getattr(out2, "cache", None)
        decode = cache_snapshot(cache2 if cache2 is not None else cache)
    return {"small_config": config.to_dict(), "small_parameters": small_params, "prompt_tokens": PROMPT_TOKENS,
            "batch": 1, "dtype": "float32", "widths_shrunk": shrink_widths,
            "cache_after_prompt": prefill, "cache_after_one_decode_step": decode}


def record_family(model_type: str) -> dict:
    import torch
    import transformers

    torch.set_num_threads(1)
    rec: dict = {"model_type": model_type, "transformers_version": transformers.__version__,
                 "torch_version": torch.__version__}
    t0 = time.time()
    rec.update(record_parameters(model_type))
    if model_type in DEFAULT_OVERRIDES:
        rec["default_config_changed"] = " ".join(DEFAULT_OVERRIDES[model_type].__doc__.split())
    errors = []
    composite = [k for k, v in rec["config"].items() if isinstance(v, dict) and "model_type" in v]
    if composite:
        rec["cache_error"] = [f"not recorded: a composite config (sub-configs {composite})"]
        rec["record_seconds"] = round(time.time() - t0, 1)
        return rec
    for shrink in (True, False):
        try:
            rec.update(record_cache(model_type, rec["config"], shrink))
            break
        except FamilyTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, the other shrink is tried
            errors.append(f"{'shrunk' if shrink else 'layers only'}: {type(exc).__name__}: {exc}"[:600])
    if "cache_after_prompt" not in rec:
        rec["cache_error"] = errors
    elif errors:
        rec["cache_note"] = errors
    rec["record_seconds"] = round(time.time() - t0, 1)
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated model types")
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    ap.add_argument("--skip-existing", action="store_true")
    args = ap.parse_args(argv)
    families, skipped = decoder_families()
    if args.only:
        families = [f for f in args.only.split(",") if f]
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGALRM, _alarm)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    for model_type in families:
        path = args.out / f"{model_type}.json"
        if args.skip_existing and path.exists():
            continue
        signal.alarm(FAMILY_TIMEOUT_S)
        try:
            rec = record_family(model_type)
        except Exception as exc:  # noqa: BLE001 - one family's failure is recorded, the others go on
            import transformers

            rec = {"model_type": model_type, "transformers_version": transformers.__version__,
                   "error": f"{type(exc).__name__}: {exc}"[:600],
                   "trace": traceback.format_exc(limit=3)[-1500:]}
        finally:
            signal.alarm(0)
        path.write_text(json.dumps(rec, indent=1, sort_keys=True, default=str) + "\n")
        status = rec.get("error") or rec.get("cache_error") or "ok"
        print(f"{model_type:28s} {rec.get('parameters', '-')!s:>14} {rec.get('record_seconds', '-')}s {status}"[:300],
              flush=True)
    if not args.only:
        (args.out / "_skipped.json").write_text(json.dumps(skipped, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
