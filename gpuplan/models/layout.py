"""Building blocks of the family parsers: the tensor layout accumulator and config reads they share."""

from __future__ import annotations

from gpuplan.errors import ConfigError
from gpuplan.models.config_reader import ConfigReader
from gpuplan.models.spec import TensorGroup, TensorRole

R = TensorRole


class Layout:
    """Accumulates tensor groups; ``layers`` scales per-layer tensors."""

    def __init__(self) -> None:
        self.groups: list[TensorGroup] = []

    def add(self, name: str, shape: tuple[int, ...], role: TensorRole, count: int = 1, *, loaded: bool = True):
        if count > 0:
            self.groups.append(TensorGroup(name=name, shape=shape, count=count, role=role, loaded=loaded))

    def linear(self, name: str, out_f: int, in_f: int, count: int, *, bias: bool = False,
               role: TensorRole = R.LINEAR, loaded: bool = True) -> None:
        self.add(f"{name}.weight", (out_f, in_f), role, count, loaded=loaded)
        if bias:
            self.add(f"{name}.bias", (out_f,), R.BIAS, count, loaded=loaded)

    def norm(self, name: str, width: int, count: int, *, bias: bool = False, loaded: bool = True) -> None:
        self.add(f"{name}.weight", (width,), R.NORM, count, loaded=loaded)
        if bias:
            self.add(f"{name}.bias", (width,), R.NORM, count, loaded=loaded)


def check_heads(c: ConfigReader, heads: int, kv_heads: int) -> None:
    if heads % kv_heads:
        raise ConfigError(
            f"{c.label}: {heads} attention heads cannot be grouped over {kv_heads} key/value heads",
            hint="num_attention_heads must be a multiple of num_key_value_heads",
        )


def native_dtype(c: ConfigReader) -> str | None:
    dtype = c.raw.get("torch_dtype") or c.raw.get("dtype")
    return dtype if isinstance(dtype, str) else None


def max_positions(c: ConfigReader) -> int | None:
    return c.int("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length",
                 default=None)
