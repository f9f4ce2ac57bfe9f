"""The planner: for each GPU type, the deployment an inference engineer would run for a workload.

For serving engines (vLLM by default, SGLang) a deployment fits when the engine starts (one request of
``max_model_len`` tokens fits the KV cache it allocates) and its KV cache holds ``batch`` such requests
at once. The layouts searched are the ones people deploy (vLLM docs, "Distributed inference and serving":
"use tensor parallelism within a node, pipeline parallelism across nodes"; SGLang's --tp / --pp-size):

* inside one node, tensor parallelism over 1, 2, 4 or 8 GPUs, a size that divides the attention heads,
  the KV heads (or that they divide) and the padded vocabulary (gpuplan.engines.tp);
* across nodes, whole nodes: each node one tensor-parallel group of the largest such size, pipeline
  stages over the nodes;
* for MoE models, expert parallelism over the tensor-parallel GPUs where the experts divide evenly (vLLM
  --enable-expert-parallel, SGLang --ep-size).

``objective="fewest-gpus"`` searches every tensor x pipeline split inside a node instead (TP 1 x PP 7 when
seven GPUs suffice), for people who count GPUs whatever the layout. For the transformers engine the model
spreads whole layers over the GPUs of one node (device_map="auto").

Ranking: fitting options first, then by hourly cost when prices are given, else by GPU count, then by
headroom per GPU (more first).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from gpuplan.engines.base import Hardware
from gpuplan.errors import InputError
from gpuplan.models.sources import ResolvedModel
from gpuplan.results import EngineEstimate, PlanOption, PlanResult

# The largest deployment the planner searches: 64 nodes of 8 GPUs. Beyond that the answer is "use a
# smaller precision or another GPU", not a bigger cluster.
MAX_GPUS = 512

# Tensor-parallel sizes inside one node: the powers of two up to a node of eight that vLLM's and SGLang's
# multi-GPU recipes use (vLLM docs "Distributed inference and serving": "--tensor-parallel-size 4" on a
# 4-GPU node, 8 on an 8-GPU node; NCCL all-reduce over NVLink / PCIe peers).
NODE_TP_SIZES = (1, 2, 4, 8)

OBJECTIVES: tuple[str, ...] = ("deployable", "fewest-gpus")

RANKING_RULES = {
    "deployable": "tensor parallel 1/2/4/8 inside a node, pipeline stages across nodes; "
                  "ranked by GPUs, then headroom per GPU",
    "fewest-gpus": "any tensor x pipeline split inside a node; ranked by GPUs, then headroom per GPU",
}


def _candidates(valid_tp: list[int], gpus_per_node: int, num_layers: int, max_gpus: int,
                objective: str = "deployable") -> list[tuple[int, int]]:
    """(tp, pp) pairs by GPU count, larger TP first.

    deployable: inside one node a tensor-parallel group of 1, 2, 4 or 8 GPUs; when the model allows no TP
    size that fills the node, the whole node as TP x PP (two TP-4 stages on eight GPUs). Across nodes whole
    nodes, each one tensor-parallel group (or the node's TP x PP) with pipeline stages over the nodes: vLLM's
    documented recipe for multi-node serving ("the tensor parallel size is the number of GPUs in each node,
    and the pipeline parallel size the number of nodes"), and how clusters are rented.
    fewest-gpus: any split inside one node, and the same whole-node layouts across nodes.
    """
    node_tps = [t for t in valid_tp if t in NODE_TP_SIZES and t <= gpus_per_node]
    if not node_tps:
        return []
    node_tp = max(node_tps)
    stages_per_node = gpus_per_node // node_tp
    if objective == "fewest-gpus":
        tps = [t for t in valid_tp if t <= gpus_per_node]
        pairs = {(tp, pp) for tp in tps for pp in range(1, num_layers + 1)
                 if tp * pp <= min(gpus_per_node, max_gpus)}
    else:
        pairs = {(tp, 1) for tp in node_tps if tp <= max_gpus}
        if stages_per_node > 1 and node_tp * stages_per_node <= max_gpus and stages_per_node <= num_layers:
            pairs.add((node_tp, stages_per_node))
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


def _option(tried: _Tried, parameters: int, gpus_per_node: int, launch: list[str], reason: str | None,
            expert_parallel: bool = False, price: float | None = None) -> PlanOption:
    """The option a layout tried gives: the engine's figures and the verdict against the GPU (what the estimate's
    result would carry, without assembling one)."""
    result, hardware = tried.estimate, tried.hardware
    count = result.tensor_parallel * result.pipeline_parallel
    serving = result.serving
    capacity = hardware.memory_bytes or 0
    return PlanOption(
        gpu=hardware.gpu or "", count=count, tensor_parallel=result.tensor_parallel,
        pipeline_parallel=result.pipeline_parallel, nodes=-(-count // gpus_per_node), gpus_per_node=gpus_per_node,
        fits=tried.fits, gpu_memory_bytes=capacity, headroom_bytes=capacity - result.total_bytes,
        parameters=parameters,
        weights_bytes=result.weights_bytes, kv_cache_bytes=result.kv_cache_bytes,
        activation_bytes=result.activation_bytes, overhead_bytes=result.overhead_bytes,
        peak_allocated_bytes=result.peak_allocated_bytes, total_bytes=result.total_bytes,
        kv_cache_tokens=serving.kv_cache_tokens if serving else None,
        max_concurrency=serving.max_concurrency if serving else None,
        max_model_len_that_fits=serving.max_model_len_that_fits if serving else None,
        expert_parallel=expert_parallel, price_per_gpu_hour=price,
        cost_per_hour=round(price * count, 4) if price is not None else None, launch=launch, reason=reason,
    )


def served_checkpoint(model: str, precision: Any) -> tuple[str, str | None, str | None]:
    """(model argument, --quantization value, note) that make an engine load the weights that were planned.

    A checkpoint that is already quantized carries its quantization_config, which vLLM and SGLang read on
    their own. Otherwise: fp8 is quantized on load (vLLM docs, "FP8 W8A8": "--quantization fp8", online
    dynamic quantization of a BF16/FP16 model; SGLang accepts the same flag); nf4 is bitsandbytes' in-flight
    4-bit quantization (vLLM docs, "BitsAndBytes": "--quantization bitsandbytes"); int4 and int8 have no
    in-flight path in either engine, so they need a pre-quantized checkpoint (AWQ or GPTQ for int4). Each
    engine's launch_command spells the method its own way (SGLang: --load-format bitsandbytes, and nothing for
    a pre-quantized checkpoint).
    """
    quant = precision.quant
    if quant is None or quant.source == "checkpoint":
        return model, None, None
    if quant.method == "fp8":
        return model, "fp8", None
    if quant.method == "bnb_4bit":
        return model, "bitsandbytes", None
    if quant.bits == 4:
        return (f"<AWQ int4 checkpoint of {model}>", "awq",
                f"int4 serves a pre-quantized checkpoint: put an AWQ int4 checkpoint of {model} in the launch "
                "line, or a GPTQ one (vLLM: --quantization awq or --quantization gptq; SGLang reads the method "
                f"from the checkpoint); serving {model} itself loads its {precision.compute_dtype} weights")
    return (f"<int8 checkpoint of {model}>", None,
            f"int8 serves a pre-quantized checkpoint (GPTQ 8-bit or W8A8): put one of {model} in the launch line; "
            "the engine reads its quantization from its config")


def launch_commands(model: str, engine: str, result: EngineEstimate, *, nodes: int, precision: Any,
                    requested_dtype: str, options: Any, expert_parallel: bool = False) -> list[str]:
    """The command lines that start this deployment, in the engine's own flags (each serving engine's module
    writes its own), serving what was planned: the checkpoint and --quantization that load the planned
    weights, the KV cache dtype, and every engine setting given."""
    from gpuplan.calc.precision import normalize_dtype
    from gpuplan.engines import engine_module

    served, quantization, _ = served_checkpoint(model, precision)
    return engine_module(engine).launch_command(
        served, result, nodes=nodes, dtype=normalize_dtype(requested_dtype), kv_cache_dtype=precision.kv_dtype,
        options=options, expert_parallel=expert_parallel, quantization=quantization)


PLAN_ENGINES = ("vllm", "sglang", "transformers")


def _check_inputs(resolved: ResolvedModel, *, engine: str, dtype: str, kv_dtype: str, batch: int,
                  seq: int | None, max_gpus: int, objective: str, prices: Mapping[str, float] | None) -> Any:
    """Reject a bad value by name before any GPU is tried; returns the resolved precision."""
    from gpuplan.calc.precision import resolve_precision

    if engine not in PLAN_ENGINES:
        raise InputError(f"plan does not take --engine {engine}", hint=f"use one of: {', '.join(PLAN_ENGINES)}")
    if objective not in OBJECTIVES:
        raise InputError(f"unknown --objective {objective!r}", hint=f"use one of: {', '.join(OBJECTIVES)}")
    if max_gpus < 1:
        raise InputError(f"--max-gpus must be at least 1, got {max_gpus}")
    if batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}")
    if seq is not None and seq < 1:
        raise InputError(f"--seq must be at least 1 token, got {seq}",
                         hint="leave --seq out to plan for the model's full context")
    for name, price in (prices or {}).items():
        if not price > 0:
            raise InputError(f"price of {name} must be positive, got {price!r}")
    return resolve_precision(resolved.spec, dtype, kv_dtype)


class _Tried(NamedTuple):
    """A layout evaluated: the engine's estimate, the GPUs it is for, and whether it fits them. A plan's options
    are made from these directly: the estimate's full result (gpuplan.api.assemble) would carry the same figures,
    and building one costs about a fifth of the engine's estimate (callgrind), its validator more the first time."""

    estimate: EngineEstimate
    hardware: Hardware
    fits: bool


def _sort_key(option: PlanOption, priced: bool) -> tuple:
    by_gpus = (option.count, -option.headroom_bytes, option.gpu)
    if not priced:
        return (not option.fits, *by_gpus)
    cost = option.cost_per_hour
    return (not option.fits, cost is None, cost if cost is not None else 0.0, *by_gpus)


class _Search:
    """Finds, for one model and workload, the smallest layout of each GPU type that fits.

    Layouts are tried by GPU count. Those whose GPUs could not even hold their share of the weights (every
    weight once, over the GPUs, within the engine's budget fraction of a card) are skipped unevaluated.
    Inside a node every candidate is tried in turn; across nodes, where each node added spreads the same
    layers over more pipeline stages, the count is found by galloping then bisecting (a 64-node range takes
    about 12 estimates instead of 64). Where the engine's fit is monotone in the node count (vLLM), the
    search does the same work in fewer estimates: the first GPU type's one-GPU layout tells the weights that
    rule out its other layouts too small to hold them, and the gallop starts at the count that fitted the
    GPU type already searched with as many GPUs per node and the nearest memory (GPU types of one size usually
    need the same count, found then in two estimates: that count fits, the one below does not). The count
    found is the same wherever the gallop starts."""

    def __init__(self, evaluate: Callable[[Any, int, int], _Tried], *, budget_fraction: float,
                 monotone: bool = False) -> None:
        self.evaluate = evaluate
        self.budget_fraction = budget_fraction if budget_fraction > 0 else 1.0
        # Whether fitting is monotone in the node count (gpuplan.engines.fits_more_with_more_nodes). Only then
        # may the search across nodes start elsewhere than at the fewest nodes it tries: otherwise where it
        # starts could change what it finds, so it keeps one fixed order of layouts.
        self.monotone = monotone
        self.first: _Tried | None = None
        self.first_error: InputError | None = None
        self.whole_weights: int | None = None
        # (GPUs per node, memory per GPU, GPU count that fitted) of each GPU type searched across nodes
        self.found: list[tuple[int, int, int]] = []

    def run(self, gpu: Any, tp: int, pp: int) -> _Tried | None:
        try:
            result = self.evaluate(gpu, tp, pp)
        except InputError as exc:
            self.first_error = self.first_error or exc
            return None  # a layout this model or card cannot take
        self.first = self.first or result
        if self.whole_weights is None and tp * pp == 1:
            self.whole_weights = result.estimate.weights_bytes
        return result

    def smallest_fit(self, gpu: Any, pairs: list[tuple[int, int]]
                     ) -> tuple[_Tried | None, _Tried | None]:
        """(the smallest layout that fits or None, the last one evaluated) over ``pairs``, by GPU count."""
        if self.monotone and self.whole_weights is None and pairs and pairs[0][0] * pairs[0][1] == 1:
            # The plan's first layout, one GPU: its weights rule out the layouts too small to hold them.
            one = self.run(gpu, *pairs[0])
            if one is not None and one.fits:
                return one, one
            chosen, last = self.smallest_fit(gpu, pairs[1:])
            return chosen, last or one
        if self.whole_weights is not None:
            least = math.ceil(self.whole_weights / (gpu.memory_bytes * min(self.budget_fraction, 1.0)))
            within = [p for p in pairs if p[0] * p[1] >= least]
            if not within:  # none can fit: the largest layout that evaluates stands for "does not fit"
                for tp, pp in reversed(pairs):
                    result = self.run(gpu, tp, pp)
                    if result is not None:
                        return (result if result.fits else None), result
                return None, None
            pairs = within
        last: _Tried | None = None
        inside = [p for p in pairs if p[0] * p[1] <= gpu.gpus_per_node]
        for tp, pp in inside:
            result = self.run(gpu, tp, pp)
            if result is None:
                continue
            last = result
            if result.fits:
                return result, result
        across = pairs[len(inside):]
        chosen, last = self._across_nodes(gpu, across, last, self._start(gpu, across))
        if chosen is not None:
            self.found.append((gpu.gpus_per_node, gpu.memory_bytes,
                               chosen.estimate.tensor_parallel * chosen.estimate.pipeline_parallel))
        return chosen, last

    def _start(self, gpu: Any, pairs: list[tuple[int, int]]) -> int:
        """Where the search across nodes starts: the first layout with the GPU count that fitted the GPU type of
        the nearest memory already searched with as many GPUs per node, else the smallest layout."""
        alike = [(abs(memory - gpu.memory_bytes), count, memory) for per_node, memory, count in self.found
                 if per_node == gpu.gpus_per_node]
        if not alike or not self.monotone:
            return 0
        _, count, memory = min(alike)
        count = math.ceil(count * memory / gpu.memory_bytes)  # more memory per GPU, proportionally fewer GPUs
        return next((i for i, (tp, pp) in enumerate(pairs) if tp * pp >= count), max(len(pairs) - 1, 0))

    def _across_nodes(self, gpu: Any, pairs: list[tuple[int, int]], last: _Tried | None, start: int
                      ) -> tuple[_Tried | None, _Tried | None]:
        results: dict[int, _Tried | None] = {}

        def fits_at(index: int) -> bool:
            if index not in results:
                results[index] = self.run(gpu, *pairs[index])
            found = results[index]
            return found is not None and found.fits

        below, above = _bracket(fits_at, len(pairs), start)
        if above is None:
            evaluated = [r for _, r in sorted(results.items()) if r is not None]
            return None, (evaluated[-1] if evaluated else last)
        while above - below > 1:
            middle = (below + above) // 2
            if fits_at(middle):
                above = middle
            else:
                below = middle
        return results[above], results[above]


def _bracket(fits_at: Callable[[int], bool], count: int, start: int) -> tuple[int, int | None]:
    """(an index known not to fit or -1, a larger one known to fit or None when none does) around the first
    index that fits among ``count`` indices where fitting is monotone, galloping from ``start``: down while
    it fits, up while it does not (steps 1, 2, 4 ...; the last index is always tried before giving up)."""
    if count == 0:
        return -1, None
    below, above, step = -1, None, 1
    if fits_at(start):
        above = start
        while above - below > 1:
            index = max(above - step, below + 1)
            if not fits_at(index):
                return index, above
            above, step = index, step * 2
        return below, above
    below = start
    while True:
        index = below + step
        if index >= count - 1:
            if below != count - 1 and fits_at(count - 1):
                above = count - 1
            return below, above
        if fits_at(index):
            return below, index
        below, step = index, step * 2


def plan(resolved: ResolvedModel, *, gpus: list[Any] | None = None, engine: str = "vllm", dtype: str = "auto",
         kv_dtype: str = "auto", batch: int = 1, seq: int | None = None, max_gpus: int = MAX_GPUS,
         objective: str = "deployable", prices: Mapping[str, float] | None = None,
         **engine_options: Any) -> PlanResult:
    """Rank GPU types by the deployment each needs; ``gpus`` are GpuSpecs (default: the whole catalog).

    ``objective``: deployable (tensor parallel 1/2/4/8 in a node, pipeline stages across nodes) or fewest-gpus
    (any split inside a node). ``prices`` maps catalog GPU names to a price per GPU-hour; when given, options
    rank by cost. Engine options (``gpu_memory_utilization=0.85``...) apply to every deployment tried."""
    from gpuplan.api import engine_estimate, fits_gpu, make_hardware
    from gpuplan.engines import SERVING_ENGINES, engine_name, fits_more_with_more_nodes, make_options
    from gpuplan.engines.tp import valid_tp_sizes
    from gpuplan.gpus.catalog import load_catalog

    engine = engine_name(engine)
    precision = _check_inputs(resolved, engine=engine, dtype=dtype, kv_dtype=kv_dtype, batch=batch, seq=seq,
                              max_gpus=max_gpus, objective=objective, prices=prices)
    engine_opts = make_options(engine, engine_options)  # bad options are named here, not hidden by the search
    spec = resolved.spec
    candidates_gpus = gpus if gpus else list(load_catalog().gpus)
    serving = engine in SERVING_ENGINES
    valid_tp = valid_tp_sizes(spec) if serving else [1]
    # The share of a card the engine may fill: vLLM's gpu_memory_utilization, SGLang's mem_fraction_static.
    fraction = getattr(engine_opts, "gpu_memory_utilization", None) or getattr(engine_opts, "mem_fraction_static",
                                                                              None) or 1.0

    def evaluate(gpu: Any, tp: int, pp: int) -> _Tried:
        hardware = make_hardware(gpu, tp, pp)
        result = engine_estimate(resolved, engine, engine_opts, hardware, batch=batch, seq=seq, dtype=dtype,
                                 kv_dtype=kv_dtype)
        return _Tried(result, hardware, fits_gpu(result, hardware))

    search = _Search(evaluate, budget_fraction=fraction, monotone=fits_more_with_more_nodes(engine))
    options: list[PlanOption] = []
    layouts: dict[int, list[tuple[int, int]]] = {}  # by GPUs per node, which is all the layouts depend on
    for gpu in candidates_gpus:
        per_node = gpu.gpus_per_node
        if per_node not in layouts:
            if serving:
                layouts[per_node] = _candidates(valid_tp, per_node, spec.num_hidden_layers, max_gpus, objective)
            else:
                # transformers: whole layers over the GPUs of one node (device_map="auto"), no tensor parallelism
                layouts[per_node] = [(1, n) for n in range(1, min(per_node, max_gpus, spec.num_hidden_layers) + 1)]
        chosen, last = search.smallest_fit(gpu, layouts[per_node])
        if last is None:
            continue
        picked = (chosen or last).estimate
        nodes = -(-(picked.tensor_parallel * picked.pipeline_parallel) // per_node)
        ep = serving and expert_parallel_fits(spec, picked.tensor_parallel)
        launch = launch_commands(resolved.id, engine, picked, nodes=nodes, precision=precision,
                                 requested_dtype=dtype, options=engine_opts,
                                 expert_parallel=ep) if chosen and serving else []
        reason = None
        if chosen is None:
            reason = f"does not fit even on {picked.tensor_parallel * picked.pipeline_parallel} GPUs"
        price = prices.get(gpu.name) if prices else None
        options.append(_option(chosen or last, spec.parameters, per_node, launch, reason, expert_parallel=ep,
                               price=price))
    if search.first is None:
        if search.first_error is not None:
            raise search.first_error
        raise InputError("no GPU could be evaluated for this model", hint="check --gpu and --max-gpus")
    first = search.first.estimate
    # The notes an estimate of the first layout would carry: the model's, then the engine's.
    first_notes = [*resolved.notices, *spec.notes, *first.notes]
    priced = bool(prices)
    options.sort(key=lambda o: _sort_key(o, priced))
    best = options[0] if options and options[0].fits else None
    return PlanResult(model=resolved.id, engine=engine, dtype=first.dtype, kv_dtype=first.kv_dtype, batch=batch,
                      seq=first.seq, objective=objective, ranking=_ranking(objective, priced),
                      options=options, best=best,
                      notes=_plan_notes(resolved.id, precision, first_notes, options, priced, serving))


def _ranking(objective: str, priced: bool) -> str:
    rule = RANKING_RULES[objective]
    if priced:
        return rule.split(";")[0] + "; ranked by cost per hour (GPUs x price), then GPUs, then headroom per GPU; " \
                                    "unpriced GPU types last"
    return rule


def _plan_notes(model: str, precision: Any, first_notes: list[str], options: list[PlanOption], priced: bool,
                serving: bool) -> list[str]:
    notes = []
    _, _, checkpoint_note = served_checkpoint(model, precision)
    if serving and checkpoint_note:
        notes.append(checkpoint_note)
    if any("no CUDA-reported total" in n for n in first_notes):
        notes.append("GPUs without a CUDA-reported total are budgeted from the driver total")
    unpriced = [o.gpu for o in options if o.fits and o.cost_per_hour is None]
    if priced and unpriced:
        notes.append(f"no price given for {len(unpriced)} GPU type(s) that fit ({', '.join(unpriced[:4])}"
                     f"{', ...' if len(unpriced) > 4 else ''}): ranked after the priced ones")
    return notes
