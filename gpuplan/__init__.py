"""gpuplan: how much GPU memory will this LLM need, and on which cards?

The public API (documented in docs/api.md)::

    import gpuplan
    result = gpuplan.estimate("meta-llama/Llama-2-7b-hf", dtype="fp16", batch=8, seq=4096)
    result.total_bytes
    gpuplan.plan("meta-llama/Llama-3.1-70B-Instruct", gpus=["H100", "A100-80GB"], seq=32768).best
    gpuplan.check("gpuplan.yaml").passed
    gpuplan.sweep("llama-3.1-8b", seq="1k..128k", batch=[1, 8], gpu="H100").points
    gpuplan.train("Qwen/Qwen2.5-7B", method="qlora", grad_checkpointing=True, batch=8, seq=4096).total_bytes
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; imported on first use so `gpuplan --help` does not pay for the calculator.
_API = {"estimate": "gpuplan.api", "load_model": "gpuplan.api", "make_workload": "gpuplan.api",
        "train": "gpuplan.api", "check": "gpuplan.planfile", "sweep": "gpuplan.sweeps"}
__all__ = sorted({*_API, "plan", "__version__"})


def plan(model: Any, *, gpus: list[Any] | None = None, engine: str = "vllm", dtype: str = "auto",
         kv_dtype: str = "auto", batch: int = 1, seq: int | None = None, max_gpus: int = 512,
         objective: str = "deployable", prices: dict[str, float] | None = None,
         revision: str | None = None, source: str = "auto", offline: bool | None = None,
         **engine_options: Any) -> Any:
    """For each GPU type, the deployment an engineer would run (a :class:`gpuplan.results.PlanResult`, best
    first: by GPUs then headroom, or by cost when ``prices`` are given; docs/gpus.md).

    ``model`` is a name or path (as for :func:`estimate`) or a loaded model; ``gpus`` are catalog names
    or GpuSpecs (default: the whole catalog). ``seq`` is the context per request and ``batch`` the
    requests that must fit at once. ``objective`` is deployable or fewest-gpus; ``prices`` maps catalog
    GPU names to a price per GPU-hour. Engine options are keywords, as for :func:`estimate`.
    """
    from gpuplan.api import as_resolved, resolve_gpu
    from gpuplan.planner import plan as make_plan

    resolved = as_resolved(model, revision=revision, source=source, offline=offline)  # type: ignore[arg-type]
    specs = [resolve_gpu(g) for g in ([gpus] if isinstance(gpus, str) else gpus)] if gpus else None
    priced = {resolve_gpu(name).name: price for name, price in prices.items()} if prices else None
    return make_plan(resolved, gpus=specs, engine=engine, dtype=dtype, kv_dtype=kv_dtype, batch=batch, seq=seq,
                     max_gpus=max_gpus, objective=objective, prices=priced, **engine_options)


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'gpuplan' has no attribute {name!r}")
