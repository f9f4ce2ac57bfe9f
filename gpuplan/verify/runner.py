"""`gpuplan verify`: load the model with transformers on a CUDA GPU, run the workload, compare.

torch and transformers are imported only inside these functions (the `verify` extra); without them, or
without a CUDA GPU, the command ends with a MissingDependencyError (exit 2) saying what to install.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuplan.errors import MissingDependencyError, ModelNotFoundError, SourceError
from gpuplan.models.sources import ResolvedModel
from gpuplan.results import EstimateResult
from gpuplan.verify.compare import CaseComparison, compare

INSTALL_HINT = "pip install 'gpuplan[verify]' (torch, transformers, accelerate)"


def check_environment(gpus: int = 1) -> None:
    """Fail early, with the fix, when torch/transformers or a CUDA GPU (or ``gpus`` of them) is missing."""
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(f"gpuplan verify needs {' and '.join(missing)}", hint=INSTALL_HINT)
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError(
            "gpuplan verify measures on a CUDA GPU and torch sees none",
            hint="run it on a machine with an NVIDIA GPU and a CUDA build of torch; `gpuplan estimate` needs neither",
        )
    if gpus > 1:
        if importlib.util.find_spec("accelerate") is None:
            raise MissingDependencyError("gpuplan verify --gpus places the model with accelerate, which is missing",
                                         hint=INSTALL_HINT)
        seen = torch.cuda.device_count()
        if seen < gpus:
            raise MissingDependencyError(
                f"--gpus {gpus} asks for {gpus} GPUs and torch sees {seen}",
                hint="use --gpus " + str(seen) + " or fewer, or check CUDA_VISIBLE_DEVICES")


def raw_config(resolved: ResolvedModel) -> dict[str, Any]:
    """The config.json dict behind a resolved model, as transformers will read it."""
    from gpuplan.data_files import data_dir

    if resolved.source == "catalog":
        path = data_dir() / "models" / (resolved.location or "")
    elif resolved.source == "local" and resolved.location:
        path = Path(resolved.location)
    else:
        from gpuplan.models.hub import fetch_model

        return fetch_model(resolved.id, revision=resolved.revision, with_safetensors=False).config
    if path.name.endswith("params.json"):
        raise SourceError(f"{resolved.id} is Meta's original checkpoint (params.json), which transformers "
                          "cannot build", hint="verify the Hugging Face version, e.g. meta-llama/Llama-2-7b-hf")
    return json.loads(path.read_text())


def _weights_location(resolved: ResolvedModel) -> str | None:
    """Where real weights can be loaded from without downloading: a local folder, or the Hub cache."""
    if resolved.source == "local" and resolved.location:
        folder = Path(resolved.location).parent
        if any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")):
            return str(folder)
        return None
    if resolved.source == "catalog" and "/" not in resolved.id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a base dependency
        return None
    for name in ("model.safetensors", "model.safetensors.index.json"):
        hit = try_to_load_from_cache(resolved.id, name, revision=resolved.revision)
        if isinstance(hit, str):
            return resolved.id
    return None


def measure(resolved: ResolvedModel, estimate: EstimateResult, *, random_weights: bool,
            progress: Callable[[str], None] = lambda message: None) -> CaseComparison:
    """Build or load the model, run generate() as the estimate describes, and compare component-wise.

    With ``estimate.pipeline_parallel`` > 1 the model is spread over that many GPUs as ``device_map="auto"``
    places it, and every GPU is measured."""
    gpus = estimate.pipeline_parallel
    check_environment(gpus)
    if gpus > 1:
        return _measure_split(resolved, estimate, gpus, random_weights=random_weights, progress=progress)
    import torch

    from gpuplan.verify import measure as m

    progress("starting CUDA")
    context = m.init_cuda()
    versions = m.environment()
    config = raw_config(resolved)
    common = _case(resolved, estimate, 1)
    try:
        model, info = _load(m, resolved, config, estimate, random_weights, progress)
    except torch.OutOfMemoryError:
        allocated = int(torch.cuda.max_memory_allocated())
        return compare({**common, "oom": True, "oom_phase": "loading the weights", "oom_max_allocated": allocated},
                       estimate)
    progress(f"running generate(): batch {estimate.batch}, {estimate.prompt_tokens} prompt + "
             f"{estimate.new_tokens} new tokens")
    run = m.measure_generate(model, estimate.batch, estimate.prompt_tokens, max(1, estimate.new_tokens))
    del model
    row: dict[str, Any] = {"context": context, "versions": versions, **info, **run, **common}
    return compare(row, estimate)


def _case(resolved: ResolvedModel, estimate: EstimateResult, gpus: int) -> dict[str, Any]:
    case_id = (f"{resolved.id}|{estimate.compute_dtype}|{estimate.attn_implementation}|b{estimate.batch}|"
               f"p{estimate.prompt_tokens}|n{estimate.new_tokens}" + (f"|gpus{gpus}" if gpus > 1 else ""))
    return {"case_id": case_id, "model_id": resolved.id, "model_type": estimate.model_type,
            "dtype": estimate.compute_dtype, "attn": estimate.attn_implementation, "batch": estimate.batch,
            "prompt_tokens": estimate.prompt_tokens, "new_tokens": estimate.new_tokens, "gpus": gpus}


def _measure_split(resolved: ResolvedModel, estimate: EstimateResult, gpus: int, *, random_weights: bool,
                   progress: Callable[[str], None]) -> CaseComparison:
    import torch

    from gpuplan.verify import measure as m

    progress(f"starting CUDA on {gpus} GPUs")
    contexts = m.init_cuda_devices(gpus)
    versions = m.environment()
    common = _case(resolved, estimate, gpus)
    try:
        if random_weights:
            progress(f"building the model with random weights over {gpus} GPUs (device_map='auto')")
            model, info = m.build_model_split(raw_config(resolved), gpus, estimate.compute_dtype,
                                              estimate.attn_implementation)
        else:
            location = _require_weights(resolved)
            progress(f"loading the weights from {location} over {gpus} GPUs (device_map='auto')")
            model, info = m.load_model_split(location, gpus, estimate.compute_dtype, estimate.attn_implementation)
    except torch.OutOfMemoryError as error:
        return compare({**common, "oom": True, "oom_phase": "loading the weights",
                        "oom_device": m._oom_device(str(error))}, estimate)
    progress(f"running generate() over {gpus} GPUs: batch {estimate.batch}, {estimate.prompt_tokens} prompt + "
             f"{estimate.new_tokens} new tokens")
    run = m.measure_generate_split(model, estimate.batch, estimate.prompt_tokens, max(1, estimate.new_tokens), gpus)
    del model
    row: dict[str, Any] = {"contexts": contexts, "versions": versions, **info, **run, **common}
    return compare(row, estimate, spec=resolved.spec)


def _require_weights(resolved: ResolvedModel) -> str:
    location = _weights_location(resolved)
    if location is None:
        raise ModelNotFoundError(
            f"the weights of {resolved.id} are not on disk or in the Hugging Face cache",
            hint="pass --random-weights to measure with random weights of the same shapes (the memory is "
                 "the same), or download the model first",
        )
    return location


def _load(m: Any, resolved: ResolvedModel, config: dict[str, Any], estimate: EstimateResult, random_weights: bool,
          progress: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    if random_weights:
        progress("building the model with random weights on the GPU")
        return m.build_model(config, estimate.compute_dtype, estimate.attn_implementation)
    else:
        location = _require_weights(resolved)
        progress(f"loading the weights from {location}")
        return m.load_model(location, estimate.compute_dtype, estimate.attn_implementation)
