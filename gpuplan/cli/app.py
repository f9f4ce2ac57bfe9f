"""The `gpuplan` command line: a thin shell over the library facade (gpuplan/api.py)."""

from __future__ import annotations

import itertools
import os

# pydantic looks up third-party plugins through importlib.metadata entry points the first time a model
# class is built: about 20 ms, more than the whole estimate. The CLI defines no plugin use; a user who
# relies on one can still set the variable explicitly.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
from typing import Annotated

import typer

from gpuplan import __version__
from gpuplan.cli.errors import run_guarded
from gpuplan.cli.options import parse_int_list
from gpuplan.cli.formats import OutputFormat

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
         "or a local folder / config.json.", show_default=False)]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub branch, tag or commit.")]
SourceOpt = Annotated[str, typer.Option(
    "--source", help="Where to read the config: auto (local path, bundled catalog, then the Hub), local, "
                     "catalog or hub.")]
OfflineOpt = Annotated[bool, typer.Option(
    "--offline", help="Never use the network (also HF_HUB_OFFLINE=1): bundled catalog and Hub cache only.")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="table for people, json for scripts.")]


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


@app.command()
def estimate(
    model: ModelArg,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="Weights: auto (the checkpoint's own), fp32, fp16, bf16, fp8, int8, int4, nf4.")] = "auto",
    kv_dtype: Annotated[str, typer.Option(
        "--kv-dtype", "--kv-cache-dtype", help="KV cache: auto (= compute dtype), fp16, bf16, fp8, fp32.")] = "auto",
    batch: Annotated[str, typer.Option("--batch", "-b", help="Sequences at once; a list sweeps: 1,8,32.")] = "1",
    seq: Annotated[str, typer.Option(
        "--seq", "-s", help="Tokens per sequence in the KV cache (prompt + generated); 4096, 4k, or a list: "
                            "2k,8k.")] = "2048",
    new_tokens: Annotated[int, typer.Option(
        "--new-tokens", help="How many of the seq tokens are generated; the rest is the prompt.")] = 1,
    engine: Annotated[str, typer.Option("--engine", help="Runtime whose memory use is modelled.")] = "transformers",
    attn: Annotated[str, typer.Option(
        "--attn", help="transformers attention implementation: sdpa, eager, flash_attention_2.")] = "sdpa",
    revision: RevisionOpt = None,
    source: SourceOpt = "auto",
    offline: OfflineOpt = False,
    output_format: FormatOpt = OutputFormat.table,
) -> None:
    """Estimate per-GPU memory: weights, KV cache, activations, overhead, peak and total."""

    def run() -> None:
        from gpuplan.api import estimate as estimate_one
        from gpuplan.api import load_model
        from gpuplan.cli import output

        batches = parse_int_list(batch, option="--batch")
        seqs = parse_int_list(seq, option="--seq")
        if new_tokens < 0:
            from gpuplan.errors import InputError

            raise InputError(f"--new-tokens must be 0 or more, got {new_tokens}")
        resolved = load_model(model, revision=revision, source=source,  # type: ignore[arg-type]
                              offline=offline or None)
        results = [
            estimate_one(resolved, dtype=dtype, kv_dtype=kv_dtype, batch=b, seq=s, new_tokens=new_tokens,
                         engine=engine, attn=attn)
            for b, s in itertools.product(batches, seqs)
        ]
        if output_format is OutputFormat.json:
            output.emit_json(results[0].model_dump() if len(results) == 1 else [r.model_dump() for r in results])
        else:
            out = output.stdout_console()
            out.print(output.headline(results[0]))
            if len(results) == 1:
                out.print(output.workload_line(results[0]))
                out.print(output.estimate_table(results[0]))
            else:
                out.print(output.sweep_table(results))
            out.print(output.assumptions_line(results[0]), style="dim")
        err = output.stderr_console()
        first = results[0]
        for note in first.notes:
            err.print(f"Note: {note}", style="yellow")
        for warning in sorted({w for r in results for w in r.warnings}):
            err.print(f"Warning: {warning}", style="yellow")

    run_guarded(run)


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
            output.emit_json([e.model_dump() for e in entries])
            return
        from rich.table import Table

        table = Table(show_edge=False, title=f"{len(entries)} bundled models", title_justify="left")
        table.add_column("id")
        table.add_column("aliases")
        table.add_column("parameters", justify="right")
        for e in entries:
            table.add_row(e.id, ", ".join(e.aliases), f"{e.parameters:,}" if e.parameters else e.published_size or "")
        output.stdout_console().print(table)

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
        needle = (filter_text or "").lower().replace(" ", "").replace("-", "")
        entries = [g for g in load_catalog().gpus
                   if not needle or any(needle in k for k in g.lookup_keys())]
        if output_format is OutputFormat.json:
            output.emit_json([g.model_dump() for g in entries])
        else:
            output.stdout_console().print(output.gpu_table(entries))

    run_guarded(run)


@app.command()
def schema() -> None:
    """Print the JSON Schema of `estimate --format json` output."""

    def run() -> None:
        from gpuplan.cli import output
        from gpuplan.results import EstimateResult

        output.emit_json(EstimateResult.model_json_schema())

    run_guarded(run)


def main() -> None:
    run_guarded(app)
