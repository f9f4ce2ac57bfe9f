"""Measure the real GPU memory that ``transformers`` spends on ``generate()``.

Everything here returns plain dicts of integers (bytes) and floats (seconds), so that the results can be
written as JSON lines and compared with gpuplan's estimates. torch, transformers and pynvml are imported
inside the functions: importing this module costs nothing and needs none of them.

The model is built from its config with random weights directly on the GPU. Memory depends on the shapes and
dtypes of the weights, not on their values, so this measures what a real checkpoint would take without
downloading it.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import threading
import time
from collections import Counter
from typing import Any

DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _torch() -> Any:
    import torch

    return torch


def torch_dtype(name: str) -> Any:
    """Map ``fp32`` / ``fp16`` / ``bf16`` (or a torch name such as ``bfloat16``) to a ``torch.dtype``."""
    torch = _torch()
    attr = DTYPE_NAMES.get(name, name)
    dtype = getattr(torch, attr, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPE_NAMES)}")
    return dtype


def _out_of_memory_error() -> type[BaseException]:
    torch = _torch()
    return getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def _clear_cuda() -> None:
    torch = _torch()
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def _meminfo_used() -> int:
    """Bytes in use on the current device, as the driver sees it (what nvidia-smi shows)."""
    free, total = _torch().cuda.mem_get_info()
    return int(total - free)


class Nvml:
    """Thin, optional NVML handle: every method returns None when NVML is not available."""

    def __init__(self, device_index: int = 0) -> None:
        self._nvml: Any = None
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            self._nvml = pynvml
        except Exception:  # NVML missing or no driver: the torch figures still stand on their own.
            self._nvml = None

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def used(self) -> int | None:
        """Device bytes in use, computed as total - free like cudaMemGetInfo does."""
        if self._nvml is None:
            return None
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return int(info.total - info.free)

    def total(self) -> int | None:
        if self._nvml is None:
            return None
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).total)

    def driver_version(self) -> str | None:
        if self._nvml is None:
            return None
        version = self._nvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)


class _PeakSampler:
    """Polls NVML in a thread while a block runs; NVML has no peak counter of its own."""

    def __init__(self, nvml: Nvml | None, interval_s: float = 0.002) -> None:
        self._nvml = nvml if nvml is not None and nvml.available else None
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak: int | None = None
        self.samples = 0

    def _run(self) -> None:
        assert self._nvml is not None
        while not self._stop.is_set():
            used = self._nvml.used()
            if used is not None and (self.peak is None or used > self.peak):
                self.peak = used
            self.samples += 1
            time.sleep(self._interval_s)

    def __enter__(self) -> _PeakSampler:
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            # The sampler can miss the last instant; the caching allocator keeps what it reserved, so a
            # reading taken now still holds the peak reserved memory.
            used = self._nvml.used() if self._nvml is not None else None
            if used is not None and (self.peak is None or used > self.peak):
                self.peak = used


def init_cuda(device_index: int = 0) -> dict[str, Any]:
    """Start CUDA in this process and measure what the context costs before any model exists.

    Call it first, before anything touches the GPU. ``cuda_context_bytes`` is the device memory in use after
    ``torch.cuda.init()`` and one tiny allocation, minus what was in use before, minus the allocator's own
    segment. The cuBLAS handles and workspaces are then created for each dtype (a small matmul), so that they
    exist before any measurement; what they add is reported separately.
    """
    torch = _torch()
    nvml = Nvml(device_index)
    clean = not torch.cuda.is_initialized()
    nvml_before = nvml.used()
    torch.cuda.init()
    torch.cuda.set_device(device_index)
    tiny = torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    nvml_after = nvml.used()
    meminfo_after = _meminfo_used()
    reserved = int(torch.cuda.memory_reserved())
    used_before = nvml_before if nvml_before is not None else 0
    used_after = nvml_after if nvml_after is not None else meminfo_after
    result: dict[str, Any] = {
        "context_measured_before_cuda_init": clean and nvml_before is not None,
        "nvml_used_before_cuda_init": nvml_before,
        "nvml_used_after_cuda_init": nvml_after,
        "meminfo_used_after_cuda_init": meminfo_after,
        "reserved_after_cuda_init": reserved,
        "cuda_context_bytes": int(used_after - used_before - reserved),
    }
    del tiny
    for name in ("fp32", "fp16", "bf16"):
        a = torch.ones((256, 256), dtype=torch_dtype(name), device="cuda")
        b = a @ a
        del a, b
    _clear_cuda()
    result.update(
        {
            "allocated_after_warmup": int(torch.cuda.memory_allocated()),
            "reserved_after_warmup": int(torch.cuda.memory_reserved()),
            "nvml_used_after_warmup": nvml.used(),
            "meminfo_used_after_warmup": _meminfo_used(),
        }
    )
    return result


def environment(device_index: int = 0) -> dict[str, Any]:
    """Versions and device facts that every measurement depends on."""
    import platform

    torch = _torch()
    props = torch.cuda.get_device_properties(device_index)
    nvml = Nvml(device_index)
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "driver": nvml.driver_version(),
        "gpu_name": torch.cuda.get_device_name(device_index),
        "gpu_total_memory": int(props.total_memory),
        "gpu_nvml_total_memory": nvml.total(),
        "compute_capability": f"{props.major}.{props.minor}",
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
    }
    for package in ("transformers", "accelerate"):
        try:
            module = __import__(package)
            env[package] = getattr(module, "__version__", None)
        except ImportError:
            env[package] = None
    return env


def load_config(config_dict: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Turn a raw config.json dict into a transformers config, as ``from_pretrained`` would read it.

    Returns the config (the text part for multimodal configs) and notes on what was changed to load it.
    """
    from transformers import AutoConfig

    raw = dict(config_dict)
    notes: dict[str, Any] = {}
    # auto_map points at remote code that is never run here; the model_type's own class is used instead.
    if raw.pop("auto_map", None) is not None:
        notes["dropped_auto_map"] = True
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as handle:
            json.dump(raw, handle)
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    if text is not config:
        notes["used_text_config"] = True
        config = text
    return config, notes


def _tensor_bytes(tensor: Any) -> int:
    return int(tensor.numel() * tensor.element_size())


def parameter_summary(model: Any) -> dict[str, Any]:
    """Bytes of parameters and of buffers, each counted once even when tied or shared."""
    by_dtype: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    param_count = 0
    for param in model.parameters():  # parameters() yields a tied weight once
        by_dtype[str(param.dtype).replace("torch.", "")] += _tensor_bytes(param)
        devices[param.device.type] += 1
        param_count += int(param.numel())
    buffers: Counter[str] = Counter()
    buffer_dtypes: Counter[str] = Counter()
    for name, buffer in model.named_buffers():
        buffers[name.rsplit(".", 1)[-1]] += _tensor_bytes(buffer)
        buffer_dtypes[str(buffer.dtype).replace("torch.", "")] += _tensor_bytes(buffer)
        devices[buffer.device.type] += 1
    tied = None
    try:
        inputs = model.get_input_embeddings()
        outputs = model.get_output_embeddings()
        if inputs is not None and outputs is not None:
            tied = outputs.weight.data_ptr() == inputs.weight.data_ptr()
    except (AttributeError, NotImplementedError):
        tied = None
    return {
        "param_count": param_count,
        "param_bytes": int(sum(by_dtype.values())),
        "param_bytes_by_dtype": dict(by_dtype),
        "buffer_bytes": int(sum(buffers.values())),
        "buffer_bytes_by_name": dict(buffers),
        "buffer_bytes_by_dtype": dict(buffer_dtypes),
        "tensor_devices": dict(devices),
        "tied_word_embeddings": tied,
    }


def _with_dtype(factory: Any, *args: Any, dtype: str, **kwargs: Any) -> Any:
    """Call a transformers factory with the dtype under the name this version takes."""
    try:
        return factory(*args, dtype=torch_dtype(dtype), **kwargs)
    except TypeError:
        # transformers < 4.56 names the argument torch_dtype.
        return factory(*args, torch_dtype=torch_dtype(dtype), **kwargs)


def _ready(model: Any, started: float) -> float:
    """Put a built or loaded model in inference mode; the seconds since ``started``, CUDA synchronized."""
    # from_config leaves the model in training mode: dropout would then add masks to every forward.
    model.eval()
    model.requires_grad_(False)
    _torch().cuda.synchronize()
    seconds = time.perf_counter() - started
    _clear_cuda()
    return seconds


def build_model(
    config_dict: dict[str, Any],
    dtype: str = "bf16",
    attn_implementation: str = "sdpa",
    device: str = "cuda",
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Build a causal LM from ``config_dict`` with random weights directly on ``device``.

    Returns ``(model, info)``; ``info["weights_allocated"]`` is ``torch.cuda.memory_allocated()`` right after
    the build (after gc and ``empty_cache``), so it also holds whatever was allocated before
    (``info["allocated_before_build"]``).
    """
    torch = _torch()
    from transformers import AutoModelForCausalLM

    config, notes = load_config(config_dict)
    _clear_cuda()
    allocated_before = int(torch.cuda.memory_allocated())
    torch.manual_seed(seed)
    started = time.perf_counter()
    with torch.device(device):
        model = _with_dtype(AutoModelForCausalLM.from_config, config, dtype=dtype,
                            attn_implementation=attn_implementation)
    build_seconds = _ready(model, started)
    info: dict[str, Any] = {
        **model_info(model, config, notes),
        "allocated_before_build": allocated_before,
        "weights_allocated": int(torch.cuda.memory_allocated()),
        "weights_reserved": int(torch.cuda.memory_reserved()),
        "meminfo_used_after_build": _meminfo_used(),
        "build_seconds": round(build_seconds, 3),
        "experts_implementation": getattr(model.config, "_experts_implementation", None),
    }
    info.update(parameter_summary(model))
    return model, info


def model_info(model: Any, config: Any | None = None, notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every build or load records about the model: its classes, attention and context length."""
    config = config if config is not None else model.config
    info: dict[str, Any] = {"model_class": type(model).__name__}
    if notes is not None:
        info.update({"config_class": type(config).__name__, "config_notes": notes})
    info.update({
        "model_type": getattr(config, "model_type", None),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "max_position_embeddings": max_positions(config),
    })
    return info


def max_positions(config: Any) -> int | None:
    """Longest sequence the model's position embeddings cover, where the config says so."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def set_attention(model: Any, attn_implementation: str) -> bool:
    """Switch the attention implementation of a built model; False when transformers refuses."""
    current = getattr(model.config, "_attn_implementation", None)
    if current == attn_implementation:
        return True
    try:
        model.set_attn_implementation(attn_implementation)
    except Exception:  # older transformers or a model that cannot switch: the caller rebuilds instead.
        return False
    return getattr(model.config, "_attn_implementation", None) == attn_implementation


def cache_summary(cache: Any) -> dict[str, Any]:
    """Bytes held by a returned ``past_key_values``.

    ``kv_cache_bytes`` sums every tensor the cache holds, as it sees them (numel x element size);
    ``kv_cache_key_value_bytes`` only its ``keys`` and ``values`` (a sliding layer also holds a scalar).
    ``kv_cache_storage_bytes`` sums the storages behind them, each once: a sliding-window layer keeps a slice
    of a longer tensor, and the whole storage stays allocated until the next step replaces it.
    """
    torch = _torch()
    logical = 0
    key_value = 0
    storage = 0
    storage_by_device: Counter[str] = Counter()
    seen: set[int] = set()
    layer_kinds: Counter[str] = Counter()
    shapes: Counter[str] = Counter()

    def visit(tensor: Any, name: str) -> None:
        nonlocal logical, key_value, storage
        logical += _tensor_bytes(tensor)
        if name in ("keys", "values"):
            key_value += _tensor_bytes(tensor)
        untyped = tensor.untyped_storage()
        pointer = untyped.data_ptr()
        if pointer not in seen:
            seen.add(pointer)
            storage += int(untyped.nbytes())
            storage_by_device[str(tensor.device)] += int(untyped.nbytes())

    def tensors_of(obj: Any) -> list[tuple[str, Any]]:
        found = []
        for key, value in vars(obj).items():
            if isinstance(value, torch.Tensor):
                found.append((key, value))
        return found

    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            kind = type(layer).__name__
            layer_kinds[kind] += 1
            parts = []
            for key, tensor in tensors_of(layer):
                visit(tensor, key)
                parts.append(f"{key}={list(tensor.shape)}:{str(tensor.dtype).replace('torch.', '')}")
            shapes[f"{kind} " + " ".join(parts)] += 1
        for key, tensor in tensors_of(cache):
            visit(tensor, key)
    elif isinstance(cache, (tuple, list)):  # the legacy format: one (key, value) tuple per layer
        for entry in cache:
            layer_kinds["tuple"] += 1
            parts = []
            for position, tensor in enumerate(entry):
                if isinstance(tensor, torch.Tensor):
                    visit(tensor, "keys" if position == 0 else "values" if position == 1 else "other")
                    parts.append(f"{list(tensor.shape)}:{str(tensor.dtype).replace('torch.', '')}")
            shapes["tuple " + " ".join(parts)] += 1
    return {
        "kv_cache_class": type(cache).__name__ if cache is not None else None,
        "kv_cache_bytes": logical,
        "kv_cache_key_value_bytes": key_value,
        "kv_cache_storage_bytes": storage,
        "kv_cache_storage_bytes_by_device": dict(storage_by_device),
        "kv_cache_layer_classes": dict(layer_kinds),
        "kv_cache_layer_shapes": dict(shapes),
    }


def _generate(model: Any, input_ids: Any, attention_mask: Any, new_tokens: int) -> Any:
    return model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )


def _prepare_for_forced_length(model: Any) -> None:
    # A random model can emit EOS at any step; with no EOS id generation always runs to max_new_tokens.
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.eos_token_id = None
        generation_config.pad_token_id = 0


def _oom_record(phase: str, error: BaseException) -> dict[str, Any]:
    torch = _torch()
    return {
        "oom": True,
        "oom_phase": phase,
        "oom_allocated": int(torch.cuda.memory_allocated()),
        "oom_max_allocated": int(torch.cuda.max_memory_allocated()),
        "oom_reserved": int(torch.cuda.memory_reserved()),
        "oom_message": str(error).splitlines()[0][:300] if str(error) else type(error).__name__,
    }


def measure_generate(
    model: Any,
    batch: int,
    prompt_tokens: int,
    new_tokens: int,
    seed: int = 0,
    nvml: Nvml | None = None,
) -> dict[str, Any]:
    """Measure one greedy ``generate()`` of exactly ``new_tokens`` after a random, unpadded prompt.

    Two runs from a clean allocator: one with a single new token (the prefill peak), then the full one. All
    ``*_allocated`` / ``*_reserved`` values are absolute ``torch.cuda`` counters in bytes, so they include the
    weights and the prompt ids. An out-of-memory error is caught and reported with ``"oom": True``.
    """
    torch = _torch()
    oom_error = _out_of_memory_error()
    nvml = nvml if nvml is not None else Nvml()
    _prepare_for_forced_length(model)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    result: dict[str, Any] = {
        "batch": batch,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "oom": False,
    }

    _clear_cuda()
    generator = torch.Generator(device="cuda").manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch, prompt_tokens), device="cuda", generator=generator)
    attention_mask = torch.ones_like(input_ids)
    result["allocated_before"] = int(torch.cuda.memory_allocated())
    retries_before = int(torch.cuda.memory_stats().get("num_alloc_retries", 0))

    failure: dict[str, Any] | None = None
    output = None
    try:
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        output = _generate(model, input_ids, attention_mask, 1)
        torch.cuda.synchronize()
        result["prefill_seconds"] = round(time.perf_counter() - started, 4)
        result["prefill_peak_allocated"] = int(torch.cuda.max_memory_allocated())
        result["prefill_peak_reserved"] = int(torch.cuda.max_memory_reserved())
    except oom_error as error:
        failure = _oom_record("prefill", error)
    output = None
    if failure is not None:
        del input_ids, attention_mask
        return _finish_oom(result, failure)

    _clear_cuda()
    result["reserved_before"] = int(torch.cuda.memory_reserved())
    result["meminfo_used_before"] = _meminfo_used()
    result["nvml_used_before"] = nvml.used()
    try:
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        with _PeakSampler(nvml) as sampler:
            output = _generate(model, input_ids, attention_mask, new_tokens)
            torch.cuda.synchronize()
        result["generate_seconds"] = round(time.perf_counter() - started, 4)
        result["peak_allocated"] = int(torch.cuda.max_memory_allocated())
        result["peak_reserved"] = int(torch.cuda.max_memory_reserved())
        result["allocated_after"] = int(torch.cuda.memory_allocated())
        result["reserved_after"] = int(torch.cuda.memory_reserved())
        result["meminfo_used_after"] = _meminfo_used()
        result["nvml_used_peak"] = sampler.peak
        result["nvml_samples"] = sampler.samples
        sequences = output.sequences
        result["generated_tokens"] = int(sequences.shape[1] - prompt_tokens)
        result["output_bytes"] = _tensor_bytes(sequences)
        result.update(cache_summary(getattr(output, "past_key_values", None)))
    except oom_error as error:
        failure = _oom_record("generate", error)
    output = None
    if failure is not None:
        del input_ids, attention_mask
        return _finish_oom(result, failure)
    result["alloc_retries"] = int(torch.cuda.memory_stats().get("num_alloc_retries", 0)) - retries_before
    del input_ids, attention_mask
    _clear_cuda()
    return result


def _finish_oom(result: dict[str, Any], failure: dict[str, Any]) -> dict[str, Any]:
    result.update(failure)
    _clear_cuda()
    return result


def load_model(
    location: str,
    dtype: str = "bf16",
    attn_implementation: str = "sdpa",
    device: str = "cuda",
) -> tuple[Any, dict[str, Any]]:
    """Load real weights from a local folder or the Hugging Face cache (never the network) onto ``device``.

    Returns ``(model, info)`` with the same keys as :func:`build_model`.
    """
    torch = _torch()
    from transformers import AutoModelForCausalLM

    _clear_cuda()
    allocated_before = int(torch.cuda.memory_allocated())
    started = time.perf_counter()
    model = _with_dtype(AutoModelForCausalLM.from_pretrained, location, dtype=dtype,
                        attn_implementation=attn_implementation, device_map=device, local_files_only=True)
    load_seconds = _ready(model, started)
    info: dict[str, Any] = {
        **model_info(model),
        "allocated_before_build": allocated_before,
        "weights_allocated": int(torch.cuda.memory_allocated()),
        "weights_reserved": int(torch.cuda.memory_reserved()),
        "build_seconds": round(load_seconds, 3),
    }
    info.update(parameter_summary(model))
    return model, info


# ---- one model over several GPUs (device_map) -------------------------------------------------------

def init_cuda_devices(count: int) -> list[dict[str, Any]]:
    """:func:`init_cuda` on GPUs ``0 .. count-1``, each GPU's context and workspaces measured on it, then
    GPU 0 made current again (where transformers puts the inputs)."""
    torch = _torch()
    contexts = [init_cuda(index) for index in range(count)]
    torch.cuda.set_device(0)
    return contexts


def _gpu_map(device_map: dict[str, Any]) -> dict[str, int]:
    return {name: int(device) for name, device in device_map.items()}


def balanced_device_map(model: Any, gpus: int, dtype: str) -> dict[str, int]:
    """The device map ``from_pretrained(device_map="auto")`` computes for ``model`` over GPUs ``0 .. gpus-1``.

    transformers (modeling_utils.py from_pretrained -> integrations/accelerate.py _get_device_map) balances the
    weights with get_balanced_memory and places whole modules with infer_auto_device_map, bounded by each GPU's
    free memory; the same function is called here, on a model whose weights may still be on the meta device.
    """
    torch = _torch()
    free = {index: int(torch.cuda.mem_get_info(index)[0]) for index in range(gpus)}
    try:
        from transformers.integrations.accelerate import _get_device_map

        return _gpu_map(_get_device_map(model, "auto", free, None))
    except ImportError:  # transformers < 4.56 delegates to accelerate directly
        from accelerate import infer_auto_device_map
        from accelerate.utils import get_balanced_memory

        no_split = model._no_split_modules
        memory = get_balanced_memory(model, max_memory=free, no_split_module_classes=no_split,
                                     dtype=torch_dtype(dtype))
        return _gpu_map(infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split,
                                              dtype=torch_dtype(dtype)))


def _clear_init_flags(model: Any) -> None:
    # A model built on the meta device is marked initialized (transformers' _is_hf_initialized); the flags
    # are cleared so that initialize_weights() fills the materialized tensors.
    for module in model.modules():
        if hasattr(module, "_is_hf_initialized"):
            del module._is_hf_initialized
        for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if hasattr(tensor, "_is_hf_initialized"):
                del tensor._is_hf_initialized


def build_model_split(config_dict: dict[str, Any], gpus: int, dtype: str = "bf16", attn_implementation: str = "sdpa",
                      seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Build a causal LM with random weights over ``gpus`` GPUs, placed as ``device_map="auto"`` places it.

    The model is built on the meta device (no memory), the device map computed by transformers' own function,
    each placed module materialized on its GPU and initialized there, and accelerate's hooks attached with
    ``dispatch_model`` as from_pretrained does. So a model larger than one GPU can be built, and no GPU ever
    holds more than its share.
    """
    torch = _torch()
    from accelerate import dispatch_model
    from transformers import AutoModelForCausalLM

    config, notes = load_config(config_dict)
    allocated_before = _allocated_per_gpu(gpus)
    torch.manual_seed(seed)
    started = time.perf_counter()
    with torch.device("meta"):
        model = _with_dtype(AutoModelForCausalLM.from_config, config, dtype=dtype,
                            attn_implementation=attn_implementation)
    device_map = balanced_device_map(model, gpus, dtype)
    # Parents before children, so that a module placed apart from its parent ends up on its own GPU.
    for name, index in sorted(device_map.items(), key=lambda item: len(item[0])):
        module = model.get_submodule(name) if name else model
        module.to_empty(device=f"cuda:{index}")
    _clear_init_flags(model)
    model.initialize_weights()
    model.tie_weights()  # to_empty gave the tied lm_head a tensor of its own; it shares the embedding again
    model = dispatch_model(model, device_map=device_map)
    seconds = _ready_split(model, started, gpus)
    return model, _split_info(model, model_info(model, config, notes), device_map, seconds, allocated_before)


def _split_info(model: Any, base: dict[str, Any], device_map: dict[str, int], seconds: float,
                allocated_before: list[int]) -> dict[str, Any]:
    """What a build or load over several GPUs records: the model, its device map and each GPU's share."""
    gpus = len(allocated_before)
    return {**base, "device_map": device_map, "build_seconds": round(seconds, 3), "gpus": gpus,
            "per_gpu_build": _split_build_figures(model, device_map, allocated_before, gpus),
            **parameter_summary(model)}


def _allocated_per_gpu(gpus: int) -> list[int]:
    torch = _torch()
    return [int(torch.cuda.memory_allocated(index)) for index in range(gpus)]


def _ready_split(model: Any, started: float, gpus: int) -> float:
    model.eval()
    model.requires_grad_(False)
    torch = _torch()
    for index in range(gpus):
        torch.cuda.synchronize(index)
    seconds = time.perf_counter() - started
    gc.collect()
    torch.cuda.empty_cache()
    return seconds


def _split_build_figures(model: Any, device_map: dict[str, int], allocated_before: list[int],
                         gpus: int) -> list[dict[str, Any]]:
    """Each GPU after the build: what torch allocated there, the weights placed there, the layers it holds."""
    torch = _torch()
    by_device: Counter[str] = Counter()
    for param in model.parameters():
        by_device[str(param.device)] += _tensor_bytes(param)
    for buffer in model.buffers():
        by_device[str(buffer.device)] += _tensor_bytes(buffer)
    out = []
    for index in range(gpus):
        layers = sorted(int(name.rsplit(".", 1)[-1]) for name, device in device_map.items()
                        if device == index and name.rsplit(".", 1)[-1].isdigit())
        out.append({
            "index": index,
            "allocated_before_build": allocated_before[index],
            "weights_allocated": int(torch.cuda.memory_allocated(index)),
            "tensor_bytes": by_device.get(f"cuda:{index}", 0),
            "first_layer": layers[0] if layers else None,
            "layers": len(layers),
            "modules": sorted(name for name, device in device_map.items() if device == index and not
                              name.rsplit(".", 1)[-1].isdigit()),
        })
    return out


def load_model_split(location: str, gpus: int, dtype: str = "bf16",
                     attn_implementation: str = "sdpa") -> tuple[Any, dict[str, Any]]:
    """Load real weights (local folder or Hugging Face cache) with ``device_map="auto"`` over ``gpus`` GPUs."""
    torch = _torch()
    from transformers import AutoModelForCausalLM

    allocated_before = _allocated_per_gpu(gpus)
    max_memory = {index: int(torch.cuda.mem_get_info(index)[0]) for index in range(gpus)}
    started = time.perf_counter()
    model = _with_dtype(AutoModelForCausalLM.from_pretrained, location, dtype=dtype,
                        attn_implementation=attn_implementation, device_map="auto", max_memory=max_memory,
                        local_files_only=True)
    seconds = _ready_split(model, started, gpus)
    device_map = _gpu_map(getattr(model, "hf_device_map", {}) or {"": 0})
    return model, _split_info(model, model_info(model), device_map, seconds, allocated_before)


def measure_generate_split(model: Any, batch: int, prompt_tokens: int, new_tokens: int, gpus: int,
                           seed: int = 0) -> dict[str, Any]:
    """:func:`measure_generate` for a model spread over GPUs ``0 .. gpus-1``: every counter per GPU.

    The prompt goes to GPU 0, where the embedding is (accelerate's hooks move the hidden states on from
    there). ``per_gpu`` holds each GPU's absolute torch counters, NVML peak and the KV cache it holds.
    """
    torch = _torch()
    oom_error = _out_of_memory_error()
    devices = list(range(gpus))
    nvmls = [Nvml(index) for index in devices]
    _prepare_for_forced_length(model)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    first = model.get_input_embeddings().weight.device
    result: dict[str, Any] = {"batch": batch, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                              "oom": False, "gpus": gpus}
    per_gpu: list[dict[str, Any]] = [{"index": index} for index in devices]

    def clear_all() -> None:
        gc.collect()
        for index in devices:
            torch.cuda.synchronize(index)
        torch.cuda.empty_cache()

    def reset_all() -> None:
        for index in devices:
            torch.cuda.reset_peak_memory_stats(index)

    clear_all()
    generator = torch.Generator(device=first).manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch, prompt_tokens), device=first, generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for entry in per_gpu:
        entry["allocated_before"] = int(torch.cuda.memory_allocated(entry["index"]))
    try:
        reset_all()
        output = _generate(model, input_ids, attention_mask, 1)
        for entry in per_gpu:
            torch.cuda.synchronize(entry["index"])
            entry["prefill_peak_allocated"] = int(torch.cuda.max_memory_allocated(entry["index"]))
            entry["prefill_peak_reserved"] = int(torch.cuda.max_memory_reserved(entry["index"]))
        output = None
        clear_all()
        for entry, nvml in zip(per_gpu, nvmls, strict=True):
            entry["reserved_before"] = int(torch.cuda.memory_reserved(entry["index"]))
            entry["nvml_used_before"] = nvml.used()
        reset_all()
        started = time.perf_counter()
        samplers = [_PeakSampler(nvml) for nvml in nvmls]
        for sampler in samplers:
            sampler.__enter__()
        try:
            output = _generate(model, input_ids, attention_mask, new_tokens)
            for index in devices:
                torch.cuda.synchronize(index)
        finally:
            for sampler in samplers:
                sampler.__exit__(None, None, None)
        result["generate_seconds"] = round(time.perf_counter() - started, 4)
        for entry, sampler in zip(per_gpu, samplers, strict=True):
            index = entry["index"]
            entry["peak_allocated"] = int(torch.cuda.max_memory_allocated(index))
            entry["peak_reserved"] = int(torch.cuda.max_memory_reserved(index))
            entry["allocated_after"] = int(torch.cuda.memory_allocated(index))
            entry["nvml_used_peak"] = sampler.peak
        sequences = output.sequences
        result["generated_tokens"] = int(sequences.shape[1] - prompt_tokens)
        result["output_device"] = str(sequences.device)
        summary = cache_summary(getattr(output, "past_key_values", None))
        result.update({k: v for k, v in summary.items() if k != "kv_cache_layer_shapes"})
        for entry in per_gpu:
            entry["kv_cache_storage_bytes"] = summary["kv_cache_storage_bytes_by_device"].get(
                f"cuda:{entry['index']}", 0)
    except oom_error as error:
        result.update(_oom_record("generate", error))
        result["oom_device"] = _oom_device(str(error))
    output = None
    result["per_gpu"] = per_gpu
    del input_ids, attention_mask
    clear_all()
    return result


def _oom_device(message: str) -> int | None:
    """The GPU an out-of-memory error names ("GPU 1 has a total capacity of ...")."""
    import re

    found = re.search(r"GPU (\d+) has a total capacity", message)
    return int(found.group(1)) if found else None
