"""Sweeps: one model estimated over a grid of dtypes, GPUs, batch sizes and context lengths.

``gpuplan.sweep()`` returns a :class:`~gpuplan.results.SweepResult` (flat points, one per combination);
``gpuplan sweep`` renders it as a table, CSV, JSON or a chart. Grid values are lists or text in the CLI's
syntax: ``"1,8,32"``, ``"4k,8k"`` or a doubling range ``"1k..128k"`` (1k, 2k, 4k, ... 128k).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from gpuplan.engines import LLAMACPP, SERVING_ENGINES
from gpuplan.errors import InputError
from gpuplan.results import SweepGpu, SweepPoint, SweepResult

# A doubling range that is mistyped ("1..1m" by mistake for "1k..1m") is still small: 2^20 has 21 steps.
# A grid beyond this many points is almost surely a typo in a list, and would take minutes.
MAX_POINTS = 20_000

CSV_COLUMNS = ("dtype", "kv_dtype", "gpu", "batch", "seq", "weights_bytes", "kv_cache_bytes", "activation_bytes",
               "overhead_bytes", "peak_allocated_bytes", "total_bytes", "gpu_memory_bytes", "fits",
               "headroom_bytes", "kv_cache_tokens", "max_concurrency")


def parse_grid(value: str | int | Iterable[int | str], *, option: str, minimum: int = 1) -> list[int]:
    """A grid axis: ``"1,8,32"``, ``"4k,8k"``, ``"1k..128k"`` (doubling, the end included), or a list.

    Items of a comma list may themselves be ranges (``"1k..8k,12k"``); duplicates are dropped, order kept.
    """
    from gpuplan.units import is_one_grouped_number, parse_token_count

    if isinstance(value, int) and not isinstance(value, bool):
        items: list[int | str] = [value]
    elif isinstance(value, str) and is_one_grouped_number(value, tokens=option == "--seq"):
        items = [value.replace(",", "")]  # 32,768 is one number, as people write it
    elif isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    else:
        items = list(value)
    values: list[int] = []
    for item in items:
        for number in _expand(item, option=option, parse=parse_token_count):
            if number < minimum:
                raise InputError(f"{option} must be at least {minimum}, got {number}")
            if number not in values:
                values.append(number)
    if not values:
        raise InputError(f"{option} is empty", hint="for example 1,8,32 or 1k..128k")
    return values


def _expand(item: int | str, *, option: str, parse: Callable[[str], int]) -> list[int]:
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise InputError(f"{option} expects whole numbers, got {item!r}")
    if isinstance(item, int):
        return [item]
    if not item:
        raise InputError(f"{option} has an empty item", hint="write values like 1,8,32 or 1k..128k")
    if ".." not in item:
        try:
            return [parse(item)]
        except InputError:
            raise InputError(f"{option} expects whole numbers or a range, got {item!r}",
                             hint="for example 1,8,32 or 1k..128k") from None
    start_text, _, end_text = item.partition("..")
    try:
        start, end = parse(start_text), parse(end_text)
    except InputError:
        raise InputError(f"cannot read the range {item!r} of {option}", hint="for example 1k..128k") from None
    if start < 1:
        raise InputError(f"the range {item!r} of {option} must start at 1 or more")
    if end < start:
        raise InputError(f"the range {item!r} of {option} ends before it starts")
    out = [start]
    while out[-1] * 2 <= end:
        out.append(out[-1] * 2)
    if out[-1] != end:
        out.append(end)
    return out


def parse_names(value: str | Iterable[str] | None, *, default: str) -> list[str]:
    """``"fp16,int4"`` or ``["fp16", "int4"]`` -> ``["fp16", "int4"]``; None -> ``[default]``."""
    if value is None:
        return [default]
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in str(v).split(",")]
    names = list(dict.fromkeys(p.strip() for p in parts if p.strip()))
    return names or [default]


def sweep(model: Any, *, seq: str | int | Iterable[int | str] | None = None,
          batch: str | int | Iterable[int | str] = 1, dtype: str | Iterable[str] | None = None,
          kv_dtype: str | Iterable[str] | None = None, gpu: str | Any | Iterable[str | Any] | None = None,
          engine: str | None = None, tensor_parallel: int = 1, pipeline_parallel: int = 1, new_tokens: int = 0,
          revision: str | None = None, source: str = "auto", offline: bool | None = None,
          progress: Callable[[int, int], None] | None = None, **engine_options: Any) -> SweepResult:
    """Estimate ``model`` at every combination of ``dtype`` x ``kv_dtype`` x ``gpu`` x ``batch`` x ``seq``.

    ``seq`` defaults to 1k doubling up to the model's context length (32k when the config gives none).
    ``gpu`` is one GPU or several (catalog names or GpuSpecs); every point says whether it fits each.
    ``batch`` and ``seq`` mean what they mean for :func:`gpuplan.estimate` under every engine (serving
    engines: concurrent requests of max_model_len tokens; llama.cpp: --parallel slots of seq tokens each).
    Engine options are keywords, as for estimate. ``progress(done, total)`` is called after each point.
    """
    from gpuplan.api import as_resolved, resolve_gpu
    from gpuplan.engines import default_engine, engine_name, make_options

    resolved = as_resolved(model, revision=revision, source=source, offline=offline)  # type: ignore[arg-type]
    engine_used = engine_name(engine) if engine is not None else default_engine(resolved.gguf is not None)
    options = make_options(engine_used, engine_options)
    if seq is None:
        context = resolved.spec.max_position_embeddings or 32768
        seqs = parse_grid(f"1k..{max(context, 1024)}", option="--seq")
    else:
        seqs = parse_grid(seq, option="--seq")
    batches = parse_grid(batch, option="--batch")
    dtypes = parse_names(dtype, default="auto")
    kv_dtypes = parse_names(kv_dtype, default="auto")
    gpu_specs = _gpu_specs(gpu, resolve_gpu)
    gpu_axis: list[Any] = gpu_specs or [None]
    total = len(dtypes) * len(kv_dtypes) * len(gpu_axis) * len(batches) * len(seqs)
    if total > MAX_POINTS:
        raise InputError(f"the sweep has {total:,} points, more than {MAX_POINTS:,}",
                         hint="use fewer values, or a range such as 1k..128k (doubling)")
    # Every value of the grid is checked before any point is computed: a bad one is said at once.
    from gpuplan.api import make_workload

    make_workload(max(batches), max(seqs), min(new_tokens, max(seqs) - 1))
    fixed = {"engine": engine_used, "options": options, "new_tokens": new_tokens,
             "tensor_parallel": tensor_parallel, "pipeline_parallel": pipeline_parallel}
    points: list[SweepPoint] = []
    notes: list[str] = []
    seen_precisions: set[tuple[str, str]] = set()
    counter = _Counter(total, progress)
    for d in dtypes:
        for kv in kv_dtypes:
            where = f"dtype {d}, kv_dtype {kv}, " if len(dtypes) * len(kv_dtypes) > 1 else ""
            grid = [(g, b, s) for g in gpu_axis for b in batches for s in seqs]
            pair_points = [_estimate_point(resolved, d, kv, g, b, s, fixed, where, notes, counter)
                           for g, b, s in grid]
            key = (pair_points[0].dtype, pair_points[0].kv_dtype)
            if key in seen_precisions:
                notes.append(f"dtype {d} with kv_dtype {kv} is {key[0]} / {key[1]}, already swept: left out")
                continue
            seen_precisions.add(key)
            points.extend(pair_points)
    return SweepResult(
        model=resolved.id, model_type=resolved.spec.model_type, parameters=resolved.spec.parameters,
        engine=engine_used, tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel,
        dtypes=list(dict.fromkeys(p.dtype for p in points)), kv_dtypes=list(dict.fromkeys(p.kv_dtype for p in points)),
        batches=batches, seqs=_result_seqs(points, seqs), gpus=[SweepGpu(name=g.name, memory_bytes=g.usable_bytes)
                                                              for g in gpu_specs],
        points=points, notes=list(dict.fromkeys(notes)))


class _Counter:
    """Points done, reported to the caller's progress callback."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _gpu_specs(gpu: Any, resolve_gpu: Callable[[Any], Any]) -> list[Any]:
    if gpu is None:
        items: list[Any] = []
    elif isinstance(gpu, str) or not isinstance(gpu, Iterable):
        items = [gpu]
    else:
        items = list(gpu)
    specs: list[Any] = []
    for item in items:
        spec = resolve_gpu(item)
        if spec is not None and spec.name not in {g.name for g in specs}:
            specs.append(spec)
    return specs


def _estimate_point(resolved: Any, d: str, kv: str, g: Any, b: int, s: int, fixed: dict[str, Any], where: str,
                    notes: list[str], counter: _Counter) -> SweepPoint:
    from gpuplan.api import estimate

    try:
        r = estimate(resolved, dtype=d, kv_dtype=kv, batch=b, seq=s, gpu=g, **fixed)
    except InputError as exc:
        exc.message = f"at {where}batch {b}, seq {s:,}: {exc.message}"
        exc.args = (exc.message,)
        raise
    if counter.done == 0:
        notes.extend(r.notes)
    counter.tick()
    return _point(r)


def _result_seqs(points: Sequence[SweepPoint], requested: list[int]) -> list[int]:
    # llama.cpp pads its context; the points carry what each slot really gets.
    return list(dict.fromkeys(p.seq for p in points)) if points else requested


def _point(r: Any) -> SweepPoint:
    serving = r.serving
    return SweepPoint(
        dtype=r.dtype, kv_dtype=r.kv_dtype, gpu=r.gpu, batch=r.batch, seq=r.seq,
        weights_bytes=r.weights_bytes, kv_cache_bytes=r.kv_cache_bytes, activation_bytes=r.activation_bytes,
        overhead_bytes=r.overhead_bytes, peak_allocated_bytes=r.peak_allocated_bytes, total_bytes=r.total_bytes,
        gpu_memory_bytes=r.gpu_memory_bytes, fits=r.fits, headroom_bytes=r.headroom_bytes,
        kv_cache_tokens=serving.kv_cache_tokens if serving else None,
        max_concurrency=serving.max_concurrency if serving else None, warnings=list(r.warnings))


def to_csv(result: SweepResult) -> str:
    """The points as CSV: one row each, bytes as integers, empty cells for nulls."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for p in result.points:
        row = p.model_dump()
        writer.writerow(["" if row[c] is None else str(row[c]).lower() if isinstance(row[c], bool) else row[c]
                         for c in CSV_COLUMNS])
    return buffer.getvalue()


# ---- charts ----------------------------------------------------------------------------------------

# (field, label, colour): the colour-blind-safe palette of Okabe & Ito ("Color Universal Design", 2002),
# with grey for the overhead.
COMPONENTS = (
    ("weights_bytes", "weights", "#0072B2"),
    ("kv_cache_bytes", "KV cache", "#E69F00"),
    ("activation_bytes", "activations", "#009E73"),
    ("overhead_bytes", "overhead", "#999999"),
)
_LINE_STYLES = (("#D55E00", "--"), ("#CC79A7", "-."), ("#000000", ":"), ("#56B4E9", "--"), ("#F0E442", "-."))


def token_label(n: int) -> str:
    """4096 -> '4k', 131072 -> '128k', 1048576 -> '1m', 3000 -> '3000'."""
    for div, suffix in ((1024**2, "m"), (1024, "k")):
        if n >= div and n % div == 0:
            return f"{n // div}{suffix}"
    return f"{n:,}"


def panels(result: SweepResult) -> list[tuple[str, list[SweepPoint], list[SweepGpu]]]:
    """The chart's panels: one per precision pair (per GPU for serving engines, whose KV cache depends on
    it) and batch, each with its points in seq order and the GPUs whose capacity it shows."""
    serving = result.engine in SERVING_ENGINES
    several = len({(p.dtype, p.kv_dtype) for p in result.points}) > 1
    groups: dict[tuple[Any, ...], list[SweepPoint]] = {}
    for p in result.points:
        groups.setdefault((p.dtype, p.kv_dtype, p.gpu if serving else None, p.batch), []).append(p)
    out = []
    for (dt, kv, gpu, batch), pts in groups.items():
        seen: dict[int, SweepPoint] = {}
        for p in pts:
            seen.setdefault(p.seq, p)  # non-serving points repeat per GPU with the same bytes
        title = f"batch {batch}" if result.engine != LLAMACPP else f"parallel {batch}"
        if several:
            title += f" · {dt} weights, {kv} KV"
        gpus = [g for g in result.gpus if g.name == gpu] if serving else list(result.gpus)
        if serving and gpu:
            title += f" · {gpu}"
        out.append((title, [seen[s] for s in sorted(seen)], gpus))
    return out


def save_plot(result: SweepResult, path: str | Any) -> None:
    """Draw the sweep: per panel, memory components stacked per context length, GPU capacities as lines.

    Needs matplotlib (``pip install 'gpuplan[plot]'``); the format follows the file's suffix.
    """
    from gpuplan.errors import InputError, MissingDependencyError
    from gpuplan.units import GiB

    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise MissingDependencyError("--plot needs matplotlib",
                                     hint="pip install 'gpuplan[plot]'") from None
    groups = panels(result)
    batches = list(dict.fromkeys(p.batch for p in result.points))
    ncols = min(len(batches), 4) if len(groups) > 1 else 1
    nrows = -(-len(groups) // ncols)
    fig = Figure(figsize=(4.6 * ncols + 0.6, 3.9 * nrows + 1.0), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    serving = result.engine in SERVING_ENGINES
    xlabel = "max_model_len (tokens)" if serving else "context length (tokens per sequence)"
    line_style = {g.name: _LINE_STYLES[i % len(_LINE_STYLES)] for i, g in enumerate(result.gpus)}
    tops = [max([p.total_bytes / GiB for p in pts] + [g.memory_bytes / GiB for g in gpus]) for _, pts, gpus in groups]
    if ncols == len(batches) and not serving:
        # A column is one batch size: one scale down it compares the dtypes (or GPUs) at a glance.
        tops = [max(tops[i::ncols]) for i in range(ncols)] * nrows
    handles: dict[str, Any] = {}
    for index, (title, pts, gpus) in enumerate(groups):
        ax = axes[index // ncols][index % ncols]
        xs = list(range(len(pts)))
        bottom = [0.0] * len(pts)
        for field, label, colour in COMPONENTS:
            values = [getattr(p, field) / GiB for p in pts]
            handles[label] = ax.bar(xs, values, bottom=bottom, color=colour, width=0.72, edgecolor="white",
                                    linewidth=0.4)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        top = tops[index]
        if serving:
            # The stack is the engine's fixed budget; what changes with max_model_len is how many requests fit.
            for x, p, height in zip(xs, pts, bottom, strict=True):
                if p.max_concurrency is not None:
                    ax.text(x, height + top * 0.01, f"{p.max_concurrency:,.1f}x", ha="center", va="bottom",
                            fontsize=8, color="#000000" if p.fits else "#D55E00",
                            fontweight="normal" if p.fits else "bold",
                            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
        for g in gpus:
            colour, style = line_style[g.name]
            capacity = g.memory_bytes / GiB
            handles[f"{g.name} ({capacity:,.1f} GiB)"] = ax.axhline(capacity, color=colour, linestyle=style,
                                                                   linewidth=1.6)
        ax.set_xticks(xs, [token_label(p.seq) for p in pts])
        if len(pts) > 10:
            ax.tick_params(axis="x", labelrotation=45)
        ax.set_ylim(0, top * 1.1 if top > 0 else 1)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("GiB per GPU")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    for index in range(len(groups), nrows * ncols):
        axes[index // ncols][index % ncols].set_visible(False)
    labels = list(handles)
    fig.legend([handles[k] for k in labels], labels, loc="outside lower center", ncols=min(len(labels), 4),
               frameon=False)
    split = f", TP {result.tensor_parallel} x PP {result.pipeline_parallel}" if serving else ""
    precision = "" if len({(p.dtype, p.kv_dtype) for p in result.points}) > 1 else \
        f" · {result.points[0].dtype} weights, {result.points[0].kv_dtype} KV cache"
    heading = f"{result.model} · {result.engine}{split}{precision}"
    if serving:
        heading += ("\nabove each bar: requests of max_model_len tokens that fit at once (bold red: fewer than the "
                    "batch)")
    fig.suptitle(heading, fontsize=12)
    try:
        fig.savefig(path, dpi=130)
    except ValueError as exc:  # an unknown suffix
        raise InputError(f"cannot write the plot {path}: {exc}") from None
    except OSError as exc:
        raise InputError(f"cannot write the plot {path}: {exc.strerror or exc}") from None
