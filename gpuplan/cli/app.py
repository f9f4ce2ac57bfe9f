"""The `gpuplan` command line: a thin shell over the library facade (gpuplan/api.py)."""


import copy
import itertools
import os
import sys
from collections.abc import Sequence

# pydantic looks up third-party plugins through importlib.metadata entry points the first time a model
# class is built: about 20 ms, more than the whole estimate. The CLI defines no plugin use; a user who
# relies on one can still set the variable explicitly.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
from typing import Annotated

import typer

from gpuplan import __version__
from gpuplan.cli import check_cmd, serve_cmd, sweep_cmd
from gpuplan.cli.engine_flags import PanelCommand, engine_options, flag_runs, with_engine_flags
from gpuplan.cli.errors import run_guarded
from gpuplan.cli.formats import OutputFormat
from gpuplan.cli.options import parse_int_list
from gpuplan.errors import EXIT_FINDING

app = typer.Typer(
    name="gpuplan",
    help="How much GPU memory will this LLM need, and on which cards? Estimates before you load it.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Options shared by every command that takes a model (declared once, as huggingface_hub's CLI does).
ModelArg = Annotated[str, typer.Argument(
    help="Hugging Face id (meta-llama/Llama-2-7b-hf), bundled alias (llama-2-7b), id@revision, "
         "modelscope:owner/name, or a local folder / config.json / .gguf file.", show_default=False)]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub branch, tag or commit.")]
SourceOpt = Annotated[str, typer.Option(
    "--source", help="Where to read the config: auto (local path, bundled catalog, then the Hub), local, "
                     "catalog, hub or modelscope (also: modelscope:owner/name).")]
OfflineOpt = Annotated[bool, typer.Option(
    "--offline", help="Never use the network (also HF_HUB_OFFLINE=1): bundled catalog and Hub cache only.")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", case_sensitive=False,
                                                 help="table for people, json for scripts.")]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"gpuplan {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """gpuplan: GPU memory estimates for large language models."""


# Flags every command that estimates shares (engine options come from gpuplan/engines/, see engine_flags.py).
GpuOpt = Annotated[str | None, typer.Option(
    "--gpu", help="GPU from the catalog (`gpuplan gpus`): H100, L4, RTX 4090...")]
GpuMemoryOpt = Annotated[str | None, typer.Option(
    "--gpu-memory", help="Memory per GPU, for a card not in the catalog or to override it, with its unit: "
                         "79.2GiB (2^30 bytes) or 24GB (10^9 bytes); a bare number is refused.")]
TpOpt = Annotated[int, typer.Option("--tensor-parallel-size", "-tp", help="Tensor parallel GPUs (serving engines).")]
PpOpt = Annotated[int, typer.Option(
    "--pipeline-parallel-size", "-pp",
    help="Pipeline parallel stages; with transformers, GPUs that device_map='auto' spreads whole layers over.")]
DtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="Weights: auto (the checkpoint's own), fp32, fp16, bf16, fp8, int8, int4, nf4.")]
KvDtypeOpt = Annotated[str, typer.Option(
    "--kv-dtype", "--kv-cache-dtype", help="KV cache: auto (= compute dtype), fp16, bf16, fp8, fp32.")]
EngineOpt = Annotated[str | None, typer.Option(
    "--engine", help="Runtime whose memory use is modelled: transformers, vllm, sglang, llama.cpp. Default: "
                     "llama.cpp for a .gguf file, else transformers.", show_default=False)]

# Training flags (gpuplan train, gpuplan verify --train).
TrainMethodOpt = Annotated[str, typer.Option("--method", help="full, lora or qlora (4-bit NF4 base).")]
TrainPrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="bf16, fp16, fp32, or mixed (fp32 master weights, bf16 autocast).")]
TrainOptimizerOpt = Annotated[str, typer.Option(
    "--optimizer", help="adamw, adamw-8bit (bitsandbytes), adafactor, sgd or sgd-momentum.")]
LoraRankOpt = Annotated[int | None, typer.Option("--lora-rank", help="LoRA rank r (default 16).", show_default=False)]
LoraTargetsOpt = Annotated[str | None, typer.Option(
    "--lora-targets", help="Comma-separated modules to adapt (q_proj,v_proj). Default: every linear projection "
                           "of the blocks, as peft's all-linear.", show_default=False)]
GradCkptOpt = Annotated[bool | None, typer.Option(
    "--grad-checkpointing/--no-grad-checkpointing",
    help="Recompute each layer in the backward pass. Default: on with --prepare-kbit (peft's "
         "prepare_model_for_kbit_training turns it on), else off.", show_default=False)]
GradAccOpt = Annotated[int, typer.Option("--grad-accumulation", help="Micro-batches per optimizer step.")]
PrepareKbitOpt = Annotated[bool, typer.Option(
    "--prepare-kbit", help="QLoRA: the script calls peft's prepare_model_for_kbit_training (QLoRA scripts, TRL), "
                           "which keeps embeddings, norms and lm_head in float32 and turns gradient "
                           "checkpointing on (--no-grad-checkpointing keeps it off).")]


@app.command(cls=PanelCommand)
@with_engine_flags
def estimate(
    model: ModelArg,
    dtype: DtypeOpt = "auto",
    kv_dtype: KvDtypeOpt = "auto",
    batch: Annotated[str, typer.Option(
        "--batch", "-b", help="Sequences at once (serving: concurrent requests to fit; llama.cpp: --parallel); "
                              "a list sweeps: 1,8,32.")] = "1",
    seq: Annotated[str | None, typer.Option(
        "--seq", "-s", help="Tokens per sequence in the KV cache (prompt + generated); 4096, 4k, or a list: "
                            "2k,8k. Default 2048 (serving engines and llama.cpp: the model's context).",
        show_default=False)] = None,
    new_tokens: Annotated[int, typer.Option(
        "--new-tokens", help="How many of the seq tokens are generated; the rest is the prompt. 0: one "
                             "forward pass over all seq tokens.")] = 0,
    engine: EngineOpt = None,
    gpu: GpuOpt = None,
    gpu_memory: GpuMemoryOpt = None,
    tensor_parallel_size: TpOpt = 1,
    pipeline_parallel_size: PpOpt = 1,
    revision: RevisionOpt = None,
    source: SourceOpt = "auto",
    offline: OfflineOpt = False,
    output_format: FormatOpt = OutputFormat.table,
    engine_flags: dict | None = None,
) -> None:
    """Estimate per-GPU memory: weights, KV cache, activations, overhead, peak and total."""

    def run() -> int:
        from gpuplan.api import estimate as estimate_one
        from gpuplan.api import load_model
        from gpuplan.cli import output
        from gpuplan.engines import default_engine, engine_name
        from gpuplan.errors import InputError

        runs = flag_runs(engine_flags or {})
        named = engine_name(engine) if engine is not None else None
        if named is not None:
            engine_options(named, runs[0])  # a flag of another engine is named before any model is loaded
        batches = parse_int_list(batch, option="--batch")
        seqs: list[int | None] = ([*parse_int_list(seq, option="--seq", tokens=True)] if seq is not None
                                  else [None])
        if new_tokens < 0:
            raise InputError(f"--new-tokens must be 0 or more, got {new_tokens}")
        resolved = load_model(model, revision=revision, source=source,  # type: ignore[arg-type]
                              offline=offline or None)
        name = named or default_engine(resolved.gguf is not None)
        calls = [{"dtype": dtype, "kv_dtype": kv_dtype, "batch": b, "seq": s, "new_tokens": new_tokens,
                  "engine": name, "gpu": gpu, "gpu_memory": gpu_memory, "tensor_parallel": tensor_parallel_size,
                  "pipeline_parallel": pipeline_parallel_size, "options": engine_options(name, flags)}
                 for b, s, flags in itertools.product(batches, seqs, runs)]
        results = [estimate_one(resolved, **call) for call in calls]
        if len(results) == 1 and results[0].fits is False:  # a grid is a table; one estimate says what would fit
            from gpuplan.advice import estimate_suggestions

            results[0] = results[0].model_copy(
                update={"suggestions": estimate_suggestions(resolved, calls[0], results[0])})
        return EXIT_FINDING if output.render_estimates(results, output_format) else 0

    run_guarded(run)


@app.command(cls=PanelCommand)
@with_engine_flags
def plan(
    model: ModelArg,
    gpu: Annotated[list[str] | None, typer.Option(
        "--gpu", help="GPU type(s) to plan for; repeat for several. Default: every GPU in the catalog.")] = None,
    engine: Annotated[str, typer.Option(
        "--engine", help="vllm, sglang, or transformers (whole layers over one node's GPUs).")] = "vllm",
    dtype: DtypeOpt = "auto",
    kv_dtype: KvDtypeOpt = "auto",
    batch: Annotated[str, typer.Option(
        "--batch", "-b", help="Requests of --seq tokens that must fit at once; a list plans each: 1,8.")] = "1",
    seq: Annotated[str | None, typer.Option(
        "--seq", "-s", help="Context per request: 4096, 32k, or a list: 8k,32k (default: the model's).",
        show_default=False)] = None,
    max_gpus: Annotated[int, typer.Option("--max-gpus", help="Largest deployment to consider.")] = 512,
    objective: Annotated[str, typer.Option(
        "--objective", help="deployable: tensor parallel 1/2/4/8 inside a node, pipeline stages across nodes "
                            "(how engineers deploy); fewest-gpus: any tensor x pipeline split inside a node, "
                            "for the fewest GPUs whatever the layout.")] = "deployable",
    price: Annotated[list[str] | None, typer.Option(
        "--price", help="Price per GPU-hour, GPU=PRICE (H100=2.49); repeat for several. With prices the "
                        "options rank by cost per hour; GPU types without one rank after.",
        show_default=False)] = None,
    prices_file: Annotated[str | None, typer.Option(
        "--prices", help="YAML or JSON file mapping GPU names to prices per GPU-hour ({H100: 2.49}); --price "
                         "entries override it.", show_default=False)] = None,
    top: Annotated[int, typer.Option("--top", help="Rows to show in the table (JSON has all).")] = 15,
    revision: RevisionOpt = None,
    source: SourceOpt = "auto",
    offline: OfflineOpt = False,
    output_format: FormatOpt = OutputFormat.table,
    engine_flags: dict | None = None,
) -> None:
    """Which GPUs, how many, and how to split the model (tensor x pipeline parallel): ranked by GPU count then
    headroom, or by cost per hour when prices are given."""

    def run() -> int:
        from gpuplan.api import load_model, resolve_gpu
        from gpuplan.cli import output
        from gpuplan.cli.options import normalize_choice, parse_prices
        from gpuplan.engines import engine_name
        from gpuplan.planner import OBJECTIVES
        from gpuplan.planner import plan as make_plan

        named = engine_name(engine)
        options = engine_options(named, engine_flags or {})
        objective_name = normalize_choice(objective, OBJECTIVES, option="--objective")
        batches = parse_int_list(batch, option="--batch")
        seqs: list[int | None] = ([*parse_int_list(seq, option="--seq", tokens=True)] if seq is not None
                                  else [None])
        prices = parse_prices(price or [], prices_file, resolve=lambda name: resolve_gpu(name).name)
        resolved = load_model(model, revision=revision, source=source,  # type: ignore[arg-type]
                              offline=offline or None)
        gpus_wanted = [resolve_gpu(name) for name in gpu] if gpu else None
        results = [make_plan(resolved, gpus=gpus_wanted, engine=named, dtype=dtype, kv_dtype=kv_dtype, batch=b,
                             seq=s, max_gpus=max_gpus, objective=objective_name, prices=prices,
                             **{k: getattr(options, k) for k in options.model_fields_set})
                   for b, s in itertools.product(batches, seqs)]
        output.render_plans(results, output_format, top=top)
        return 0 if all(r.best is not None for r in results) else EXIT_FINDING

    run_guarded(run)


@app.command()
def verify(
    model: ModelArg,
    dtype: Annotated[str, typer.Option("--dtype", help="fp32, fp16 or bf16 (auto: the checkpoint's).")] = "auto",
    batch: Annotated[int, typer.Option("--batch", "-b", help="Sequences at once.")] = 1,
    seq: Annotated[str, typer.Option("--seq", "-s", help="Tokens per sequence: prompt + generated.")] = "2048",
    new_tokens: Annotated[int, typer.Option(
        "--new-tokens", help="Tokens generated (greedy, forced to full length).")] = 16,
    attn: Annotated[str, typer.Option("--attn", help="sdpa, eager or flash_attention_2.")] = "sdpa",
    random_weights: Annotated[bool, typer.Option(
        "--random-weights", help="Build the model from its config with random weights on the GPU: no download; "
                                 "the memory is the same.")] = False,
    tolerance: Annotated[str, typer.Option(
        "--tolerance", help="Largest |error| of the peak before the exit code is 1, e.g. 5% or 0.05.")] = "5%",
    gpus: Annotated[int, typer.Option(
        "--gpus", help="GPUs to spread the model over as device_map='auto' does (whole layers; each GPU "
                       "measured).")] = 1,
    train_step: Annotated[bool, typer.Option(
        "--train", help="Measure a training step (forward with labels, backward, optimizer step) instead of "
                        "generate(); takes the training flags below.")] = False,
    min_memory: Annotated[bool, typer.Option(
        "--min-memory", help="Search for the smallest GPU memory in which the workload runs: it is run again "
                             "under ever tighter caps of PyTorch's allocator (torch.cuda."
                             "set_per_process_memory_fraction, 64 MiB steps) and compared with total_bytes.")] = False,
    method: TrainMethodOpt = "full",
    precision: TrainPrecisionOpt = "bf16",
    optimizer: TrainOptimizerOpt = "adamw",
    lora_rank: LoraRankOpt = None,
    lora_targets: LoraTargetsOpt = None,
    grad_checkpointing: GradCkptOpt = None,
    grad_accumulation: GradAccOpt = 1,
    prepare_kbit: PrepareKbitOpt = False,
    revision: RevisionOpt = None,
    source: SourceOpt = "auto",
    offline: OfflineOpt = False,
    output_format: FormatOpt = OutputFormat.table,
) -> None:
    """Load the model on a CUDA GPU, run generate() (or one training step with --train), and compare real peak
    memory with the estimate."""

    def run() -> int:
        from gpuplan.api import estimate as estimate_one
        from gpuplan.api import load_model
        from gpuplan.cli import output
        from gpuplan.errors import InputError
        from gpuplan.units import parse_token_count
        from gpuplan.verify.runner import measure

        limit = _parse_tolerance(tolerance)
        if gpus < 1:
            raise InputError(f"--gpus must be at least 1, got {gpus}")
        if train_step and gpus != 1:
            raise InputError("gpuplan verify --train measures one GPU",
                             hint="drop --gpus; `gpuplan train --fsdp --gpus N` estimates sharded training")
        resolved = load_model(model, revision=revision, source=source,  # type: ignore[arg-type]
                              offline=offline or None)
        if min_memory and gpus != 1:
            raise InputError("gpuplan verify --min-memory searches one GPU", hint="drop --gpus")
        if train_step and min_memory:
            return _verify_min_memory(resolved, limit=limit, output_format=output_format,
                                      random_weights=random_weights, train_args={
                                          "method": method, "precision": precision, "optimizer": optimizer,
                                          "lora_rank": lora_rank, "lora_targets": lora_targets,
                                          "grad_checkpointing": grad_checkpointing, "batch": batch,
                                          "seq": parse_token_count(seq)})
        if train_step:
            return _verify_train(resolved, method=method, precision=precision, optimizer=optimizer,
                                 lora_rank=lora_rank, lora_targets=lora_targets,
                                 grad_checkpointing=grad_checkpointing, batch=batch, seq=parse_token_count(seq),
                                 grad_accumulation=grad_accumulation, prepare_kbit=prepare_kbit,
                                 random_weights=random_weights, limit=limit, output_format=output_format)
        est = estimate_one(resolved, dtype=dtype, batch=batch, seq=parse_token_count(seq), new_tokens=new_tokens,
                           attn=attn, engine="transformers", pipeline_parallel=gpus)
        if est.compute_dtype != est.dtype:
            raise InputError(f"gpuplan verify builds {est.dtype} weights only through their checkpoint",
                             hint="use --dtype fp32, fp16 or bf16")
        if min_memory:
            return _verify_min_memory(resolved, limit=limit, output_format=output_format,
                                      random_weights=random_weights, estimate=est)
        err = output.stderr_console()
        with err.status("gpuplan verify") as status:
            comparison = measure(resolved, est, random_weights=random_weights,
                                 progress=lambda message: status.update(message))
        output.render_verify(comparison, output_format, tolerance=limit)
        if comparison.oom or abs(comparison.error) > limit:
            return EXIT_FINDING
        return 0

    run_guarded(run)


def _verify_min_memory(resolved, *, limit: float, output_format: OutputFormat, random_weights: bool,
                       estimate=None, train_args: dict | None = None) -> int:
    """The smallest-GPU search (gpuplan/verify/min_memory.py) beside total_bytes; exit code 1 when the estimate
    is off by more than the tolerance or the workload does not run at all."""
    from gpuplan.cli import output
    from gpuplan.cli.min_memory_output import render_min_memory
    from gpuplan.verify import min_memory

    err = output.stderr_console()
    with err.status("gpuplan verify --min-memory") as status:
        if train_args is not None:
            from gpuplan.api import train as train_estimate

            est = train_estimate(resolved, **train_args)
            record = min_memory.verify_min_memory_train(resolved, est, random_weights=random_weights,
                                                        progress=lambda message: status.update(message))
        else:
            record = min_memory.verify_min_memory(resolved, estimate, random_weights=random_weights,
                                                  progress=lambda message: status.update(message))
    render_min_memory(record, output_format, tolerance=limit)
    return EXIT_FINDING if record.get("oom") or abs(record["error"]) > limit else 0


def _verify_train(resolved, *, method: str, precision: str, optimizer: str, lora_rank: int | None,
                  lora_targets: str | None, grad_checkpointing: bool | None, batch: int, seq: int,
                  grad_accumulation: int, prepare_kbit: bool, random_weights: bool, limit: float,
                  output_format: OutputFormat) -> int:
    from gpuplan.api import train as train_estimate
    from gpuplan.cli import output
    from gpuplan.verify.train_measure import measure_training

    est = train_estimate(resolved, method=method, precision=precision, optimizer=optimizer, lora_rank=lora_rank,
                         lora_targets=lora_targets, grad_checkpointing=grad_checkpointing, batch=batch, seq=seq,
                         grad_accumulation=grad_accumulation, prepare_kbit=prepare_kbit)
    err = output.stderr_console()
    with err.status("gpuplan verify --train") as status:
        comparison = measure_training(resolved, est, random_weights=random_weights,
                                      progress=lambda message: status.update(message))
    output.render_train_verify(comparison, output_format, tolerance=limit)
    if comparison["oom"] or abs(comparison["error"]) > limit:
        return EXIT_FINDING
    return 0


@app.command()
def train(
    model: ModelArg,
    method: TrainMethodOpt = "full",
    precision: TrainPrecisionOpt = "bf16",
    optimizer: TrainOptimizerOpt = "adamw",
    lora_rank: LoraRankOpt = None,
    lora_targets: LoraTargetsOpt = None,
    grad_checkpointing: GradCkptOpt = None,
    batch: Annotated[int, typer.Option("--batch", "-b", help="Micro-batch per GPU (sequences per forward).")] = 1,
    seq: Annotated[str, typer.Option("--seq", "-s", help="Tokens per sequence.")] = "2048",
    grad_accumulation: GradAccOpt = 1,
    prepare_kbit: PrepareKbitOpt = False,
    zero: Annotated[int, typer.Option("--zero", help="DeepSpeed ZeRO stage 0, 1, 2 or 3 (needs --gpus 2+).")] = 0,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="PyTorch FSDP FULL_SHARD over --gpus.")] = False,
    gpus: Annotated[int, typer.Option("--gpus", help="Data-parallel GPUs.")] = 1,
    offload_optimizer: Annotated[bool, typer.Option(
        "--offload-optimizer", help="ZeRO / FSDP: optimizer states (and master weights) in host memory.")] = False,
    gpu: GpuOpt = None,
    gpu_memory: GpuMemoryOpt = None,
    expandable_segments: Annotated[bool | None, typer.Option(
        "--expandable-segments/--no-expandable-segments",
        help="PyTorch's allocator grows segments in place (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True): "
             "no allocator slack is added. Default: read that variable.", show_default=False)] = None,
    revision: RevisionOpt = None,
    source: SourceOpt = "auto",
    offline: OfflineOpt = False,
    output_format: FormatOpt = OutputFormat.table,
) -> None:
    """Training / fine-tuning memory per GPU: weights, gradients, optimizer states, activations, peak."""

    def run() -> int:
        from gpuplan.advice import train_with_advice
        from gpuplan.api import load_model
        from gpuplan.cli import output
        from gpuplan.units import parse_token_count

        resolved = load_model(model, revision=revision, source=source,  # type: ignore[arg-type]
                              offline=offline or None)
        call = {"method": method, "precision": precision, "optimizer": optimizer, "lora_rank": lora_rank,
                "lora_targets": lora_targets, "grad_checkpointing": grad_checkpointing, "batch": batch,
                "seq": parse_token_count(seq), "grad_accumulation": grad_accumulation, "zero": zero, "fsdp": fsdp,
                "gpus": gpus, "offload_optimizer": offload_optimizer, "prepare_kbit": prepare_kbit, "gpu": gpu,
                "gpu_memory": gpu_memory, "expandable_segments": expandable_segments}
        result = train_with_advice(resolved, **call)
        output.render_train(result, output_format)
        return EXIT_FINDING if result.fits is False else 0

    run_guarded(run)


def _parse_tolerance(text: str) -> float:
    from gpuplan.errors import InputError

    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise InputError(f"cannot read --tolerance {text!r}", hint="for example 5% or 0.05") from None
    if not 0 < value < 1:
        raise InputError(f"--tolerance must be between 0 and 100%, got {text!r}")
    return value


@app.command()
def models(
    filter_text: Annotated[str | None, typer.Argument(help="Show only ids or aliases containing this text.")] = None,
    output_format: FormatOpt = OutputFormat.table,
) -> None:
    """List the bundled model catalog (the offline default source)."""

    def run() -> None:
        from gpuplan.cli import output
        from gpuplan.models.catalog import load_catalog

        entries = load_catalog().search(filter_text)
        if output_format is OutputFormat.json:
            output.emit_json(output.json_payload(entries))
            return
        output.stdout_console().print(output.models_table(entries))

    run_guarded(run)


@app.command()
def gpus(
    filter_text: Annotated[str | None, typer.Argument(help="Show only GPUs whose name contains this text.")] = None,
    probe: Annotated[bool, typer.Option("--probe", help="Show the NVIDIA GPUs in this machine (NVML).")] = False,
    output_format: FormatOpt = OutputFormat.table,
) -> None:
    """The GPU catalog: memory, bandwidth, bf16/fp8 TFLOPS, interconnect; or this machine's GPUs."""

    def run() -> None:
        from gpuplan.cli import output
        from gpuplan.gpus.catalog import load_catalog

        if probe:
            from gpuplan.gpus.nvml import probe as nvml_probe

            found = nvml_probe()
            if output_format is OutputFormat.json:
                output.emit_json(found.model_dump())
            else:
                output.stdout_console().print(output.probe_table(found))
            return
        entries = load_catalog().search(filter_text)
        if output_format is OutputFormat.json:
            output.emit_json(output.json_payload(entries))
        else:
            out = output.stdout_console()
            out.print(output.gpu_table(entries, width=out.width))

    run_guarded(run)


@app.command()
def schema(
    output_name: Annotated[str, typer.Option(
        "--output", "-o", help="Whose --format json output: estimate, plan, check, sweep or train.")] = "estimate",
) -> None:
    """Print the JSON Schema of a command's --format json output (docs/json.md describes every field)."""

    def run() -> None:
        from gpuplan.cli import output
        from gpuplan.errors import InputError
        from gpuplan.results import OUTPUTS, output_schema

        name = output_name.strip().lower()
        if name not in OUTPUTS:
            raise InputError(f"unknown --output {output_name!r}", hint=f"use one of: {', '.join(OUTPUTS)}")
        output.emit_json(output_schema(name))

    run_guarded(run)


app.command("check")(check_cmd.check)
app.command("sweep", cls=PanelCommand)(with_engine_flags(sweep_cmd.sweep))
app.command("serve")(serve_cmd.serve)


def command_app(argv: Sequence[str]) -> typer.Typer:
    """The app that runs ``argv``: when its first word names a command, the app with that command alone.

    typer builds the parameters of every command before it runs one, and four of gpuplan's commands take every
    engine's flags: building the nine others is about a twentieth of a whole `gpuplan plan` (callgrind on
    CPython 3.11, typer 0.29). The command parses, helps and fails alike in either app (its usage line still
    reads `gpuplan COMMAND`). Anything else (no command, an option first, a misspelt command typer suggests a
    fix for) gets the whole app."""
    from typer.main import get_command_name

    name = argv[0] if argv else ""
    named = [c for c in app.registered_commands
             if (c.name or get_command_name(getattr(c.callback, "__name__", ""))) == name]
    if not named:
        return app
    alone = copy.copy(app)  # shares the callback (--version) and settings; only the commands differ
    alone.registered_commands = named
    return alone


def main() -> None:
    """The console script. After the command, the process ends without the interpreter's teardown (about
    45 ms of garbage collection and module clean-up, 15% of an estimate; measured in
    benchmarks/bench_estimate.py): every command has closed its files and the streams are flushed first.
    GPUPLAN_DEBUG=1 keeps the normal exit."""
    from gpuplan.cli.errors import debug_enabled

    code: int = 0
    try:
        run_guarded(command_app(sys.argv[1:]))
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        elif exc.code is not None:
            print(exc.code, file=sys.stderr)
            code = 1
    if debug_enabled():
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass
    os._exit(code)
