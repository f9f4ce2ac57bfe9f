"""What every engine shares: its options' base class, the hardware an estimate is for, and option parsing.

An engine module (gpuplan/engines/{generate,vllm,sglang,llamacpp}.py) declares

* ``NAME`` and ``SUMMARY``; ``SERVING`` (True when the engine sizes a KV cache from the GPU's memory);
* ``Options``, a subclass of :class:`EngineOptions`: every flag of the engine that changes memory, with its
  default (declared there once) and a description that becomes the CLI help and docs/cli.md;
* ``estimate(model, precision, workload, hardware, options) -> EngineEstimate``, where ``model`` is the
  resolved model (its ModelSpec, and the GGUF tensors or safetensors totals when they are at hand).

The registry (gpuplan/engines/__init__.py) is the only list of engine names.
"""


from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpuplan.calc.precision import Precision, resolve_precision
from gpuplan.engines.memo import per_spec
from gpuplan.errors import InputError, UnsupportedModelError


class EngineOptions(BaseModel):
    """Flags of one engine. A field's ``json_schema_extra`` may carry ``flag`` (its CLI spelling, default
    ``--`` + the name with dashes), ``short`` (a short flag), ``metavar``, ``sweep`` (the CLI takes a comma
    list and estimates each value) and ``negative`` (a boolean whose CLI flag is ``--no-...``)."""

    # defer_build: a command lists every engine's flags but validates one engine's options.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def flag_of(options_class: type[EngineOptions], name: str) -> str:
    """The CLI flag of an option field."""
    extra = options_class.model_fields[name].json_schema_extra
    if isinstance(extra, dict) and extra.get("flag"):
        return str(extra["flag"])
    return "--" + name.replace("_", "-")


def option_extra(options_class: type[EngineOptions], name: str) -> dict[str, Any]:
    extra = options_class.model_fields[name].json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


class PrecisionRequest(BaseModel):
    """--dtype and --kv-dtype as asked; each engine resolves them against the model in its own way."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    dtype: str = "auto"
    kv_dtype: str = "auto"

    def resolve(self, spec: Any) -> Precision:
        return _resolved_precision(spec, self.dtype, self.kv_dtype)


@per_spec
def _resolved_precision(spec: Any, dtype: str, kv_dtype: str) -> Precision:
    """resolve_precision, once per model and request: a plan resolves the same request for every layout."""
    return resolve_precision(spec, dtype, kv_dtype)


def gguf_note(model: Any, engine: str, precision: Precision) -> list[str]:
    """A GGUF file estimated by an engine other than llama.cpp: its weights are counted dequantized."""
    if getattr(model, "gguf", None) is None:
        return []
    return [f"a GGUF file under --engine {engine}: its weights are counted as {precision.weights}, "
            "dequantized; --engine llama.cpp counts them as stored"]


class Hardware(BaseModel):
    """The GPUs one estimate is for: memory per GPU and how the model is split over them."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    gpu: str | None = Field(default=None, description="catalog name, or 'custom'; None when no GPU was named")
    memory_bytes: int | None = Field(default=None, description="memory a CUDA process can allocate, per GPU")
    device_bytes: int | None = Field(default=None, description="the device's total as nvidia-smi shows it")
    cuda_total_known: bool = Field(default=True, description="memory_bytes is a CUDA-reported total")
    architecture: str | None = Field(default=None, description="the GPU's architecture in the catalog (Hopper, "
                                                               "CDNA 3 ...); None when no GPU was named")
    tensor_parallel: int = Field(default=1, ge=1)
    pipeline_parallel: int = Field(default=1, ge=1)

    @property
    def gpus(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    def require_gpu(self, engine: str) -> int:
        """The memory per GPU, for engines that size their cache from it."""
        if self.memory_bytes is None:
            raise InputError(f"--engine {engine} sizes its KV cache from the GPU's memory",
                             hint="name the GPU with --gpu (see `gpuplan gpus`) or give --gpu-memory 79.2GiB")
        return self.memory_bytes


def _text_validator(parser_name: str, names: tuple[str, ...]):
    """A before-validator reading a value written as text with one of gpuplan.units' parsers."""

    def parse(cls, value: Any) -> Any:
        from gpuplan import units

        if isinstance(value, str):
            try:
                return getattr(units, parser_name)(value)
            except InputError as exc:
                raise ValueError(exc.message) from None
        return value

    return field_validator(*names, mode="before")(classmethod(parse))


def tokens_validator(*names: str):
    """A before-validator reading token counts written as text: 4096, 4k, 1m."""
    return _text_validator("parse_token_count", names)


def auto_tokens_validator(*names: str):
    """A before-validator reading a token count that may also be ``auto`` or ``-1`` (read as -1), as vLLM's
    ``--max-model-len`` does (utils/argparse_utils.py ``human_readable_int_or_auto``, 0.34.0); 0 and other
    negative counts are refused."""

    def parse(cls, value: Any) -> Any:
        from gpuplan import units

        if isinstance(value, str):
            if value.strip().lower() in ("auto", "-1"):
                return -1
            try:
                value = units.parse_token_count(value)
            except InputError as exc:
                raise ValueError(exc.message) from None
        if isinstance(value, int) and not isinstance(value, bool) and value != -1 and value < 1:
            raise ValueError("must be a token count of at least 1, or auto (-1)")
        return value

    return field_validator(*names, mode="before")(classmethod(parse))


def size_validator(*names: str):
    """A before-validator reading memory sizes written as text: 40GiB, 24GB."""
    return _text_validator("parse_size", names)


def refuse_unmodelled_caches(engine: str, spec: Any) -> None:
    """A serving engine's pool is sized from attention and state layers, and for MLA from one latent width; a
    layer cache of another kind (DeepSeek-V4's compressed attention: a window of K/V plus compressed entries of
    the whole sequence), or MLA layers of different widths (dots3's per_layer_config), is refused with one
    clear error rather than read as one of them."""
    kinds = sorted({lc.mixer for lc in spec.layer_caches if lc.kind == "compressed"})
    latents = sorted({lc.key_dim + lc.value_dim for lc in spec.layer_caches if lc.kind == "attention"})
    if spec.mla is not None and len(latents) > 1:
        # the engines' MLA pools hold spec.mla.latent_dim per token on every layer
        raise UnsupportedModelError(
            f"{engine}: {spec.model_type}'s MLA layers cache latents of different widths "
            f"({', '.join(map(str, latents))} per token): per-layer MLA sizes are not modelled for {engine}",
            hint="estimate this model with --engine transformers")
    if kinds:
        raise UnsupportedModelError(
            f"{engine}: the KV cache of {spec.model_type}'s {' and '.join(kinds)} layers (a sliding window plus "
            f"compressed entries of the whole sequence) is not modelled for {engine}",
            hint="estimate this model with --engine transformers")


def largest_fitting(low: int, high: int, fits: Callable[[int], bool]) -> int:
    """The largest n in [low, high] for which ``fits(n)`` holds, by bisection, for a ``fits`` that holds at
    ``low`` and up to some n, and not beyond it."""
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
