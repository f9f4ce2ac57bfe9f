"""The planner: for each GPU type, the fewest GPUs (and the tensor x pipeline split) that fit a workload.

For serving engines (vLLM by default, SGLang) a deployment fits when the engine starts (one request of
``max_model_len`` tokens fits the KV cache it allocates) and its KV cache holds ``batch`` such requests
at once. Tensor parallelism stays inside a node (NVLink / PCIe peers; vLLM and SGLang docs: "tensor
parallel within a node, pipeline parallel across nodes"); pipeline stages span nodes. For the
transformers engine the model must fit one GPU.
"""

from __future__ import annotations

from typing import Any

from gpuplan.errors import InputError
from gpuplan.models.sources import ResolvedModel
from gpuplan.results import EstimateResult, PlanOption, PlanResult

# The largest deployment the planner searches: 64 nodes of 8 GPUs. Beyond that the answer is "use a
# smaller precision or another GPU", not a bigger cluster.
MAX_GPUS = 512


def _candidates(valid_tp: list[int], gpus_per_node: int, num_layers: int, max_gpus: int):
    """(tp, pp) pairs by GPU count, larger TP first.

    Within one node any split the model allows. Across nodes whole nodes, each one tensor-parallel group
    with pipeline stages over the nodes: vLLM's documented recipe for multi-node serving ("the tensor
    parallel size is the number of GPUs in each node, and the pipeline parallel size the number of
    nodes"), and how clusters are rented.
    """
    tps = [t for t in valid_tp if t <= gpus_per_node]
    if not tps:
        return []
    pairs = {(tp, pp) for tp in tps for pp in range(1, num_layers + 1) if tp * pp <= min(gpus_per_node, max_gpus)}
    node_tp = max(tps)
    stages_per_node = gpus_per_node // node_tp
    nodes = 2
    while node_tp * stages_per_node * nodes <= max_gpus and stages_per_node * nodes <= num_layers:
        pairs.add((node_tp, stages_per_node * nodes))
        nodes += 1
    return sorted(pairs, key=lambda p: (p[0] * p[1], -p[0]))


def expert_parallel_fits(spec: Any, tp: int) -> bool:
    """Whether the MoE experts can be spread whole over ``tp`` GPUs instead of slicing every expert.

    Each GPU then holds num_experts / tp whole experts: the same bytes as tensor-parallel experts, so the
    memory estimate does not change; only the launch line does (vLLM docs, "Expert Parallel Deployment";
    SGLang --ep-size). gpuplan proposes it when the experts divide evenly."""
    return spec.moe is not None and tp > 1 and spec.moe.num_experts % tp == 0


def _option(result: EstimateResult, gpus_per_node: int, launch: list[str], reason: str | None,
            expert_parallel: bool = False) -> PlanOption:
    count = result.tensor_parallel * result.pipeline_parallel
    serving = result.serving
    return PlanOption(
        gpu=result.gpu or "", count=count, tensor_parallel=result.tensor_parallel,
        pipeline_parallel=result.pipeline_parallel, nodes=-(-count // gpus_per_node), gpus_per_node=gpus_per_node,
        fits=bool(result.fits), gpu_memory_bytes=result.gpu_memory_bytes or 0,
        headroom_bytes=result.headroom_bytes or 0, parameters=result.parameters,
        weights_bytes=result.weights_bytes, kv_cache_bytes=result.kv_cache_bytes,
        activation_bytes=result.activation_bytes, overhead_bytes=result.overhead_bytes,
        peak_allocated_bytes=result.peak_allocated_bytes, total_bytes=result.total_bytes,
        kv_cache_tokens=serving.kv_cache_tokens if serving else None,
        max_concurrency=serving.max_concurrency if serving else None,
        max_model_len_that_fits=serving.max_model_len_that_fits if serving else None,
        expert_parallel=expert_parallel, launch=launch, reason=reason,
    )


def launch_commands(model: str, result: EstimateResult, *, nodes: int, dtype: str | None,
                    kv_cache_dtype: str | None, options: Any, expert_parallel: bool = False) -> list[str]:
    """The command lines that start this deployment, in the engine's own flags (each serving engine's module
    writes its own)."""
    from gpuplan.engines import engine_module

    return engine_module(result.engine).launch_command(model, result, nodes=nodes, dtype=dtype,
                                                       kv_cache_dtype=kv_cache_dtype, options=options,
                                                       expert_parallel=expert_parallel)


def plan(resolved: ResolvedModel, *, gpus: list[Any] | None = None, engine: str = "vllm", dtype: str = "auto",
         kv_dtype: str = "auto", batch: int = 1, seq: int | None = None, max_gpus: int = MAX_GPUS,
         **engine_options: Any) -> PlanResult:
    """Rank GPU types by the fewest GPUs that fit; ``gpus`` are GpuSpecs (default: the whole catalog)."""
    from gpuplan.api import estimate
    from gpuplan.engines import SERVING_ENGINES, engine_name, make_options
    from gpuplan.engines.tp import valid_tp_sizes
    from gpuplan.gpus.catalog import load_catalog

    if max_gpus < 1:
        raise InputError(f"--max-gpus must be at least 1, got {max_gpus}")
    engine = engine_name(engine)
    engine_opts = make_options(engine, engine_options)  # bad options are named here, not hidden by the search
    spec = resolved.spec
    candidates_gpus = gpus if gpus else list(load_catalog().gpus)
    serving = engine in SERVING_ENGINES
    valid_tp = valid_tp_sizes(spec) if serving else [1]
    options: list[PlanOption] = []
    notes: list[str] = []
    first: EstimateResult | None = None
    for gpu in candidates_gpus:
        per_node = gpu.gpus_per_node
        if serving:
            pairs = _candidates(valid_tp, per_node, spec.num_hidden_layers, max_gpus)
        else:
            # transformers: whole layers over the GPUs of one node (device_map="auto"), no tensor parallelism
            pairs = [(1, n) for n in range(1, min(per_node, max_gpus, spec.num_hidden_layers) + 1)]
        chosen: EstimateResult | None = None
        last: EstimateResult | None = None
        for tp, pp in pairs:
            try:
                result = estimate(resolved, dtype=dtype, kv_dtype=kv_dtype, batch=batch, seq=seq, engine=engine,
                                  gpu=gpu, tensor_parallel=tp, pipeline_parallel=pp, options=engine_opts)
            except InputError:
                continue  # e.g. a TP size the padded vocabulary does not divide
            first = first or result
            last = result
            if result.fits:
                chosen = result
                break
        if last is None:
            continue
        picked = chosen or last
        nodes = -(-(picked.tensor_parallel * picked.pipeline_parallel) // per_node)
        ep = serving and expert_parallel_fits(spec, picked.tensor_parallel)
        launch = launch_commands(resolved.id, picked, nodes=nodes, dtype=dtype, kv_cache_dtype=kv_dtype,
                                 options=engine_opts, expert_parallel=ep) if chosen and serving else []
        reason = None
        if chosen is None:
            reason = f"does not fit even on {picked.tensor_parallel * picked.pipeline_parallel} GPUs"
        options.append(_option(picked, per_node, launch, reason, expert_parallel=ep))
    if first is None:
        raise InputError("no GPU could be evaluated for this model", hint="check --gpu and the parallel sizes")
    # The catalog carries no prices: rank by the GPU memory a deployment provisions (bigger cards cost
    # more), then by fewer GPUs, then by lower memory bandwidth (an older, cheaper generation).
    # Marketed sizes, not driver totals: a card whose driver figure is unknown must not look cheaper.
    marketed = {g.name: g.memory_gb for g in candidates_gpus}
    bandwidth = {g.name: g.bandwidth_gbps or 0.0 for g in candidates_gpus}
    options.sort(key=lambda o: (not o.fits, o.count * marketed.get(o.gpu, 0.0), o.count, bandwidth.get(o.gpu, 0.0),
                                o.gpu))
    best = options[0] if options and options[0].fits else None
    if any("no CUDA-reported total" in n for n in first.notes):
        notes.append("GPUs without a CUDA-reported total are budgeted from the driver total")
    return PlanResult(model=resolved.id, engine=engine, dtype=first.dtype, kv_dtype=first.kv_dtype, batch=batch,
                      seq=first.seq, options=options, best=best, notes=notes)

