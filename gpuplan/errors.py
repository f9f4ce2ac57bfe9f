"""The typed errors gpuplan raises.

Every error a user can cause derives from :class:`GpuplanError` and carries the exit code the CLI
returns for it and, where there is one, a ``hint`` saying how to fix it. The CLI maps these to one
line on stderr (see ``gpuplan/cli/errors.py``); library users catch them like any exception.

Exit codes (documented in docs/exit-codes.md):
    0  success
    1  a finding: the workload does not fit, or a measurement is outside its tolerance
    2  bad input or usage: a flag, a value, a config file, a missing optional dependency
    3  the model could not be found or fetched (unknown id offline, 404, gated, Hub unreachable)
    70 an internal error (a bug in gpuplan: please report it)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_USAGE = 2
EXIT_SOURCE = 3
EXIT_INTERNAL = 70


class GpuplanError(Exception):
    """Base of every error gpuplan raises on purpose."""

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class InputError(GpuplanError):
    """A value the user gave is invalid (a flag, a workload size, a dtype name)."""


class ConfigError(GpuplanError):
    """A model config (config.json, params.json) is malformed or describes an impossible model."""


class UnsupportedModelError(GpuplanError):
    """The config is valid JSON but describes an architecture gpuplan cannot model yet."""


class MissingDependencyError(GpuplanError):
    """An optional dependency or piece of hardware is missing (torch, CUDA, an NVIDIA driver)."""


class SourceError(GpuplanError):
    """The model could not be located or fetched."""

    exit_code = EXIT_SOURCE


class ModelNotFoundError(SourceError):
    """No source knows this model id or path."""


class GatedRepoError(SourceError):
    """The Hub repository exists but needs an accepted licence and a token."""


class HubUnavailableError(SourceError):
    """The Hub (or the mirror in HF_ENDPOINT) could not be reached or answered with an error."""


class DoesNotFitError(GpuplanError):
    """The workload does not fit the GPUs it was asked to fit (a finding, not a usage error)."""

    exit_code = EXIT_FINDING
