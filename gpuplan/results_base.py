"""The parts every result model shares: the memory breakdown, the GPU verdict, the versioned output, and the
models' common settings (gpuplan/results.py and gpuplan/results_sweep_train.py build on them)."""

from pydantic import BaseModel, ConfigDict, Field

# Build each model's validator on first use, not at import: a command uses one or two of these outputs,
# and building all of them up front costs more than the whole estimate (pydantic defer_build).
_CONFIG = ConfigDict(frozen=True, defer_build=True)

# Bump the major part when a field is removed or changes meaning, the minor part when one is added.
SCHEMA_VERSION = "1.4"


# The default factories of the list and dict fields. Python functions rather than the builtins list and dict:
# pydantic inspects a default factory's signature when it builds a model's validator, and the signature of a
# builtin is parsed from its text with the tokenize module, whose first use compiles its regular expressions
# (about 3 ms of a command's start-up on this project's machine, more than the rest of the model's build).
def _no_items() -> list:
    return []


def _no_entries() -> dict:
    return {}


class FitSuggestion(BaseModel):
    """One change that would make a workload that does not fit fit, estimated: its figure per GPU."""

    model_config = _CONFIG

    change: str = Field(description="what to change, in words")
    flag: str = Field(description="the flags that make the change")
    total_bytes: int = Field(description="the total per GPU with the change")
    gpu_memory_bytes: int = Field(description="memory of the GPU it is checked against")
    fits: bool = Field(description="the workload fits with the change")


class MemoryBreakdown(BaseModel):
    """Bytes per GPU, the fields every result shares: peak_allocated = weights + the rest the peak holds;
    total = peak_allocated + overhead (what the card must hold)."""

    model_config = _CONFIG

    weights_bytes: int
    activation_bytes: int
    overhead_bytes: int
    peak_allocated_bytes: int = Field(description="weights + kv cache + activations: torch.cuda.max_memory_allocated")
    total_bytes: int = Field(description="peak_allocated + overhead: what the card must hold")


class InferenceMemory(MemoryBreakdown):
    """An inference breakdown: the KV cache beside the weights and activations."""

    kv_cache_bytes: int


class GpuFit(BaseModel):
    """The verdict against a named GPU; every field is null when no GPU was named."""

    model_config = _CONFIG

    gpu: str | None = Field(default=None, description="GPU the fit is checked against, when one was named")
    gpu_memory_bytes: int | None = Field(default=None, description="memory of that GPU, per GPU")
    fits: bool | None = Field(default=None, description="fits that GPU (null when no GPU was named)")
    headroom_bytes: int | None = Field(default=None, description="GPU memory left after total_bytes, per GPU")


class Output(BaseModel):
    """A command's --format json output: versioned as a whole."""

    model_config = _CONFIG

    schema_version: str = SCHEMA_VERSION
