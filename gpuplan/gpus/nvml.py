"""Probe the local NVIDIA GPUs through NVML (the nvidia-ml-py package, imported as ``pynvml``).

All NVML calls go through the small :class:`NvmlBackend` interface. :class:`PynvmlBackend` talks to the
driver; :class:`ReplayBackend` answers from a recorded JSON document, which is how the tests exercise
the probe without a GPU (see ``tests/fixtures/nvml/``). :func:`record_answers` writes such a document
from a real machine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from gpuplan.errors import InputError, MissingDependencyError
from gpuplan.gpus.catalog import GpuCatalog, GpuSpec, custom_gpu, load_catalog

__all__ = [
    "NvmlBackend",
    "NvmlUnavailable",
    "ProbeResult",
    "ProbedDevice",
    "PynvmlBackend",
    "ReplayBackend",
    "probe",
    "record_answers",
]

FIXTURE_SCHEMA_VERSION = 1


class NvmlUnavailable(Exception):
    """NVML cannot answer: no library, no driver, no permission. ``kind`` says which."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@runtime_checkable
class NvmlBackend(Protocol):
    """The handful of NVML calls the probe makes. Indices are NVML device indices."""

    def init(self) -> None: ...

    def shutdown(self) -> None: ...

    def driver_version(self) -> str: ...

    def cuda_driver_version(self) -> int:
        """As NVML returns it: 1000 * major + 10 * minor (12040 is CUDA 12.4)."""
        ...

    def device_count(self) -> int: ...

    def device_name(self, index: int) -> str: ...

    def device_memory(self, index: int) -> tuple[int, int, int]:
        """(total, free, used) bytes of device memory, as nvmlDeviceGetMemoryInfo reports them."""
        ...

    def device_memory_reserved(self, index: int) -> int | None:
        """Bytes the driver reserves for itself (nvmlMemory_v2), None where NVML cannot say."""
        ...


# NVML error classes by the kind we report. The names are pynvml's (NVMLError_<Name>).
_PYNVML_ERROR_KINDS = {
    "NVMLError_LibraryNotFound": "library_not_found",
    "NVMLError_DriverNotLoaded": "driver_not_loaded",
    "NVMLError_NoPermission": "no_permission",
    "NVMLError_FunctionNotFound": "function_not_found",
    "NVMLError_Uninitialized": "uninitialized",
}

_UNAVAILABLE_MESSAGES = {
    "module_not_found": (
        "cannot probe GPUs: the nvidia-ml-py package is not installed",
        "install it with `pip install nvidia-ml-py`, or name the GPU with --gpu",
    ),
    "library_not_found": (
        "cannot probe GPUs: the NVIDIA driver library (libnvidia-ml) was not found on this machine",
        "install the NVIDIA driver, or name the GPU with --gpu",
    ),
    "driver_not_loaded": (
        "cannot probe GPUs: the NVIDIA driver is installed but not loaded",
        "check `nvidia-smi`; reload the driver or reboot, or name the GPU with --gpu",
    ),
    "no_permission": (
        "cannot probe GPUs: no permission to talk to the NVIDIA driver",
        "check the permissions of /dev/nvidia*, or name the GPU with --gpu",
    ),
}


class PynvmlBackend:
    """The real thing: nvidia-ml-py, imported only when a probe starts."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: dict[int, Any] = {}

    def _call(self, fn_name: str, *args: Any) -> Any:
        try:
            return getattr(self._nvml, fn_name)(*args)
        except Exception as exc:
            raise _unavailable_from(exc) from exc

    def init(self) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailable("module_not_found", str(exc)) from exc
        self._nvml = pynvml
        self._call("nvmlInit")

    def shutdown(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down after a failure must not mask it
                pass
        self._handles.clear()

    def driver_version(self) -> str:
        return _text(self._call("nvmlSystemGetDriverVersion"))

    def cuda_driver_version(self) -> int:
        return int(self._call("nvmlSystemGetCudaDriverVersion"))

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self._call("nvmlDeviceGetHandleByIndex", index)
        return self._handles[index]

    def device_name(self, index: int) -> str:
        return _text(self._call("nvmlDeviceGetName", self._handle(index)))

    def device_memory(self, index: int) -> tuple[int, int, int]:
        info = self._call("nvmlDeviceGetMemoryInfo", self._handle(index))
        return int(info.total), int(info.free), int(info.used)

    def device_memory_reserved(self, index: int) -> int | None:
        # The v2 structure appeared with driver 510 / nvidia-ml-py 11.510; older ones cannot tell.
        version = getattr(self._nvml, "nvmlMemory_v2", None)
        if version is None:
            return None
        try:
            info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle(index), version=version)
        except Exception:  # noqa: BLE001 - reserved memory is optional information
            return None
        return int(info.reserved)


def _text(value: str | bytes) -> str:
    # nvidia-ml-py before 11.515 returned bytes.
    return value.decode() if isinstance(value, bytes) else value


def _unavailable_from(exc: BaseException) -> NvmlUnavailable:
    for cls in type(exc).__mro__:
        kind = _PYNVML_ERROR_KINDS.get(cls.__name__)
        if kind is not None:
            return NvmlUnavailable(kind, str(exc))
    return NvmlUnavailable("nvml_error", f"{type(exc).__name__}: {exc}")


class ReplayBackend:
    """Answers NVML calls from a recorded document (the format :func:`record_answers` writes)."""

    def __init__(self, answers: Mapping[str, Any]) -> None:
        self._answers = answers
        self._devices: list[Mapping[str, Any]] = list(answers.get("devices", []))

    @classmethod
    def from_file(cls, path: str | Path) -> ReplayBackend:
        try:
            return cls(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read recorded NVML answers from {path}: {exc}") from None

    def init(self) -> None:
        error = self._answers.get("error")
        if error:
            raise NvmlUnavailable(error["kind"], error.get("message", ""))

    def shutdown(self) -> None:
        pass

    def driver_version(self) -> str:
        return str(self._answers["driver_version"])

    def cuda_driver_version(self) -> int:
        return int(self._answers["cuda_driver_version"])

    def device_count(self) -> int:
        return len(self._devices)

    def device_name(self, index: int) -> str:
        return str(self._devices[index]["name"])

    def device_memory(self, index: int) -> tuple[int, int, int]:
        memory = self._devices[index]["memory"]
        return int(memory["total"]), int(memory["free"]), int(memory["used"])

    def device_memory_reserved(self, index: int) -> int | None:
        reserved = self._devices[index]["memory"].get("reserved")
        return None if reserved is None else int(reserved)


class ProbedDevice(BaseModel):
    """One local GPU: what NVML says about it and the catalog entry it maps to."""

    model_config = ConfigDict(frozen=True)

    index: int
    name: str = Field(description="Device name as NVML reports it.")
    memory_total_bytes: int
    memory_free_bytes: int
    memory_used_bytes: int
    memory_reserved_bytes: int | None = Field(
        default=None,
        description="Memory the driver keeps for itself (nvidia-smi -q 'Reserved'); None if NVML cannot say.",
    )
    catalog_name: str | None = Field(description="The matching catalog entry, None if the card is unknown.")

    @property
    def cuda_total_bytes(self) -> int:
        """Total as CUDA sees it (torch.cuda.mem_get_info()[1], vLLM's total_gpu_memory).

        On an H200 with driver 580.159.04 it is NVML's total minus the 644939776 bytes the driver reserves
        (tests/fixtures/nvml/h200.json); without a reserved figure it falls back to NVML's total.
        """
        return self.memory_total_bytes - (self.memory_reserved_bytes or 0)


class ProbeResult(BaseModel):
    """Everything one probe learned about this machine's NVIDIA GPUs."""

    model_config = ConfigDict(frozen=True)

    driver_version: str
    cuda_driver_version: str = Field(description="Highest CUDA version the driver supports, e.g. '12.4'.")
    devices: tuple[ProbedDevice, ...]

    @property
    def device_count(self) -> int:
        return len(self.devices)

    def gpu_specs(self, catalog: GpuCatalog | None = None) -> list[GpuSpec]:
        """A GpuSpec per device with the memory this machine actually reports.

        Known cards keep the catalog's bandwidth and throughput; unknown ones get a custom entry that only
        knows their memory.
        """
        catalog = catalog if catalog is not None else load_catalog()
        specs = []
        for device in self.devices:
            source = f"nvml: device {device.index} on this machine (driver {self.driver_version})"
            base = catalog.get(device.catalog_name) if device.catalog_name else None
            specs.append(
                custom_gpu(
                    base.name if base else device.name, device.memory_total_bytes, base=base, source=source
                )
            )
        return specs


def _cuda_version_text(value: int) -> str:
    return f"{value // 1000}.{(value % 1000) // 10}"


def probe(backend: NvmlBackend | None = None, catalog: GpuCatalog | None = None) -> ProbeResult:
    """Ask NVML for the driver and every device, and map each device to the catalog.

    Raises :class:`~gpuplan.errors.MissingDependencyError` when there is no NVIDIA driver, library or
    nvidia-ml-py package; the message says which and how to proceed without one.
    """
    backend = backend if backend is not None else PynvmlBackend()
    catalog = catalog if catalog is not None else load_catalog()
    try:
        backend.init()
        try:
            driver = backend.driver_version()
            cuda = _cuda_version_text(backend.cuda_driver_version())
            devices = []
            for index in range(backend.device_count()):
                name = backend.device_name(index)
                total, free, used = backend.device_memory(index)
                match = catalog.match_device(name, total)
                devices.append(
                    ProbedDevice(
                        index=index,
                        name=name,
                        memory_total_bytes=total,
                        memory_free_bytes=free,
                        memory_used_bytes=used,
                        memory_reserved_bytes=backend.device_memory_reserved(index),
                        catalog_name=match.name if match else None,
                    )
                )
        finally:
            backend.shutdown()
    except NvmlUnavailable as exc:
        message, hint = _UNAVAILABLE_MESSAGES.get(
            exc.kind, (f"cannot probe GPUs: NVML failed ({exc.message})", "name the GPU with --gpu")
        )
        raise MissingDependencyError(message, hint=hint) from None
    return ProbeResult(driver_version=driver, cuda_driver_version=cuda, devices=tuple(devices))


def record_answers(backend: NvmlBackend | None = None, **provenance: Any) -> dict[str, Any]:
    """Everything :class:`ReplayBackend` needs, read from a live backend, as a JSON-ready dict.

    ``provenance`` (where and when it was recorded, by which command) is stored alongside.
    """
    backend = backend if backend is not None else PynvmlBackend()
    answers: dict[str, Any] = {"schema_version": FIXTURE_SCHEMA_VERSION, **provenance}
    try:
        backend.init()
    except NvmlUnavailable as exc:
        answers["error"] = {"kind": exc.kind, "message": exc.message}
        return answers
    try:
        answers["driver_version"] = backend.driver_version()
        answers["cuda_driver_version"] = backend.cuda_driver_version()
        answers["devices"] = []
        for index in range(backend.device_count()):
            total, free, used = backend.device_memory(index)
            memory = {"total": total, "free": free, "used": used}
            reserved = backend.device_memory_reserved(index)
            if reserved is not None:
                memory["reserved"] = reserved
            answers["devices"].append({"name": backend.device_name(index), "memory": memory})
    finally:
        backend.shutdown()
    return answers
