"""Parsing of option values the CLI accepts as text (lists for sweeps, sizes with k suffixes, names, prices)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from gpuplan.errors import InputError
from gpuplan.units import is_one_grouped_number, parse_token_count


def parse_int_list(text: str, *, option: str, minimum: int = 1, tokens: bool = False) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; '4k,8k' -> [4096, 8192]; '1,000' -> [1000]. Every value must be >= minimum.

    ``tokens``: the values are token counts, where '32,768' is one number (see gpuplan.units.is_one_grouped_number)."""
    parts = [text] if is_one_grouped_number(text, tokens=tokens) else text.split(",")
    values: list[int] = []
    for part in parts:
        part = part.strip()
        if not part:
            raise InputError(f"{option} {text!r} has an empty item", hint="write values like 1,8,32")
        try:
            value = parse_token_count(part)
        except InputError:
            raise InputError(f"{option} expects whole numbers, got {part!r}", hint="for example 1,8,32 or 4k") from None
        if value < minimum:
            raise InputError(f"{option} must be at least {minimum}, got {part!r}")
        if value not in values:
            values.append(value)
    return values


def normalize_choice(text: str, choices: Sequence[str], *, option: str) -> str:
    """A name from ``choices``, matched without regard to case (--engine VLLM, --objective Fewest-GPUs)."""
    wanted = text.strip().lower()
    for choice in choices:
        if choice.lower() == wanted:
            return choice
    raise InputError(f"unknown {option} {text!r}", hint=f"use one of: {', '.join(choices)}")


def parse_prices(items: Sequence[str], path: str | None, *, resolve: Callable[[str], str]) -> dict[str, float]:
    """Prices per GPU-hour by catalog name, from a YAML/JSON file and then GPU=PRICE items (which win).

    ``resolve`` maps a name as typed (H100) to the catalog's (H100-SXM-80GB); an unknown name is an error."""
    raw: dict[str, object] = {}
    if path is not None:
        raw.update(_read_prices_file(Path(path)))
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--price expects GPU=PRICE, got {item!r}", hint="for example --price H100=2.49")
        raw[name.strip()] = value.strip()
    prices: dict[str, float] = {}
    for name, value in raw.items():
        try:
            price = float(str(value).lstrip("$"))
        except ValueError:
            raise InputError(f"price of {name} must be a number per GPU-hour, got {value!r}") from None
        if not price > 0:
            raise InputError(f"price of {name} must be positive, got {value!r}")
        prices[resolve(name)] = price
    return prices


def _read_prices_file(path: Path) -> dict[str, object]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"prices file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read prices file {path}: {exc}") from None
    except yaml.YAMLError:
        raise InputError(f"prices file {path} is not valid YAML or JSON") from None
    if not isinstance(data, dict) or not data:
        raise InputError(f"prices file {path} must map GPU names to prices per GPU-hour",
                         hint="for example:  H100: 2.49")
    return {str(k): v for k, v in data.items()}
