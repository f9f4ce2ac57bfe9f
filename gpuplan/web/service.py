"""What the server does with a request, apart from HTTP: the safety rules, then the library facade, then the
CLI's own JSON for the result. Nothing here imports FastAPI, so the rules are tested without a server."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gpuplan.errors import GpuplanError, HubUnavailableError, InputError, ModelNotFoundError
from gpuplan.web import schemas

# examples/gpuplan.yaml holds 4 deployments, with comments, in 1.05 KiB: 64 KiB holds a plan of some 240
# deployments, more than a calculator request needs.
MAX_BODY_BYTES = 64 * 1024
# The page's sweep is 3-8 points; a sweep of 2,000 points takes well under a second here (its time is in
# docs/performance.md, from benchmarks/bench_serve.py), while the CLI's own limit (gpuplan/sweeps.py
# MAX_POINTS, 20,000) would hold a worker for seconds.
MAX_SWEEP_POINTS = 2_000
# A Hub config fetch is bounded by the Hub client's own timeout (gpuplan/models/hub.py: 10 s by default);
# a request gets that plus the estimate.
REQUEST_TIMEOUT_S = 15.0


class ServerSettings(BaseModel):
    """How `gpuplan serve` was started: what requests may reach."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow_local_paths: bool = Field(False, description="requests may name files and folders on the server")
    allow_network: bool = Field(False, description="models not bundled may be fetched from the Hub / ModelScope")
    max_body_bytes: int = MAX_BODY_BYTES
    max_sweep_points: int = MAX_SWEEP_POINTS
    request_timeout_s: float = REQUEST_TIMEOUT_S
    hub_timeout_s: float = 10.0
    warm_up: bool = Field(False, description="estimate once at start, so the first request does not pay for it")


class PathRefusedError(InputError):
    """A request named a file or folder on the server, which this server does not read."""


class RequestTimeoutError(GpuplanError):
    """A request ran past the server's time limit."""


def guard_model(ref: str, source: str, settings: ServerSettings) -> None:
    """Refuse a model that is a path on the server (./my-model/, /etc/passwd, a .gguf file, a folder that
    exists relative to where the server runs) unless the server allows local paths."""
    from gpuplan.models.sources import MODELSCOPE_PREFIX, looks_like_path

    if settings.allow_local_paths:
        return
    text = ref.strip()
    if source == "local" or (not text.lower().startswith(MODELSCOPE_PREFIX) and looks_like_path(text)):
        raise PathRefusedError(f"this server does not read local paths: {ref!r}",
                               hint="give a Hugging Face id or a bundled alias (/api/models), or start the "
                                    "server with --allow-local-paths")


def resolve(request: schemas.ModelRef, settings: ServerSettings) -> Any:
    """The request's model, located under the server's rules (offline unless the network is allowed)."""
    from gpuplan.models.sources import resolve_model

    guard_model(request.model, request.source, settings)
    try:
        return resolve_model(request.model, revision=request.revision, source=request.source,  # type: ignore[arg-type]
                             offline=not settings.allow_network, hub_timeout_s=settings.hub_timeout_s)
    except HubUnavailableError as exc:
        if settings.allow_network:
            raise
        # Offline on purpose: for this server's users the model is simply not one it knows.
        raise ModelNotFoundError(f"model {request.model!r} is not bundled and this server does not fetch from "
                                 "the Hub", hint="pick a bundled model (/api/models), or start the server with "
                                                 "--allow-network") from exc


def estimate(request: BaseModel, settings: ServerSettings) -> Any:
    from gpuplan.advice import estimate_with_advice
    from gpuplan.cli.output import json_payload

    resolved = resolve(request, settings)  # type: ignore[arg-type]
    keywords = request.model_dump(exclude={"model", "revision", "source"}, exclude_none=True)
    return json_payload(estimate_with_advice(resolved, **keywords))


def plan(request: schemas.PlanRequest, settings: ServerSettings) -> Any:
    import gpuplan
    from gpuplan.cli.output import json_payload

    resolved = resolve(request, settings)
    keywords = request.model_dump(exclude={"model", "revision", "source"}, exclude_none=True)
    return json_payload(gpuplan.plan(resolved, **keywords))


def sweep(request: schemas.SweepRequest, settings: ServerSettings, *, deadline: float | None = None) -> Any:
    from gpuplan.cli.output import json_payload
    from gpuplan.sweeps import sweep as run_sweep

    resolved = resolve(request, settings)
    return json_payload(run_sweep(resolved, **request.sweep_keywords(),
                                  progress=_sweep_limits(settings.max_sweep_points, deadline)))


def _sweep_limits(max_points: int, deadline: float | None) -> Callable[[int, int], None]:
    """A progress callback that stops a sweep larger than the server allows, or one past its deadline."""

    def progress(done: int, total: int) -> None:
        if total > max_points:
            raise InputError(f"the sweep has {total:,} points, more than this server's {max_points:,}",
                             hint="use fewer values, or a shorter range such as 1k..32k")
        if deadline is not None and time.monotonic() > deadline:
            raise RequestTimeoutError(f"the sweep stopped after {done:,} of {total:,} points: past the server's "
                                      "time limit", hint="ask for fewer points")

    return progress


def train(request: schemas.TrainRequest, settings: ServerSettings) -> Any:
    from gpuplan.advice import train_with_advice
    from gpuplan.cli.output import json_payload

    resolved = resolve(request, settings)
    keywords = request.model_dump(exclude={"model", "revision", "source"}, exclude_none=True)
    return json_payload(train_with_advice(resolved, **keywords))


def check(request: schemas.CheckRequest, settings: ServerSettings) -> Any:
    """A plan file sent as YAML text or a JSON object; every deployment's model passes the path guard first."""
    from gpuplan.cli.output import json_payload
    from gpuplan.planfile import check as check_plan
    from gpuplan.planfile import load_plan, load_yaml

    if isinstance(request.plan, str):
        _refuse_alias_bombs(request.plan, max_nodes=settings.max_body_bytes // 2)
        source = load_yaml(request.plan, None)
    else:
        source = request.plan
    plan_file, _ = load_plan(source)
    for deployment in plan_file.deployments:
        guard_model(deployment.model, deployment.source or "auto", settings)
    return json_payload(check_plan(source, offline=not settings.allow_network))


def _refuse_alias_bombs(text: str, *, max_nodes: int) -> None:
    """Refuse YAML whose aliases multiply it ("billion laughs": nine aliases of nine aliases ... of a list).

    Walking the composed document with every alias expanded stops at ``max_nodes``. Without aliases a
    document holds fewer nodes than half its characters (a scalar takes at least one character and one
    separator), so within the body limit only aliases can pass max_body_bytes // 2."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # linear in the text: an alias is a reference
    except yaml.YAMLError:
        return  # load_yaml reports it with its line
    stack, count = [root], 0
    while stack:
        node = stack.pop()
        if node is None:
            continue
        count += 1
        if count > max_nodes:
            raise InputError(f"the plan expands to more than {max_nodes:,} YAML nodes through its aliases",
                             hint="write the deployments out, or use fewer nested aliases")
        if isinstance(node, yaml.MappingNode):
            stack.extend(part for pair in node.value for part in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def gpus(request: schemas.FilterRequest) -> Any:
    from gpuplan.cli.output import json_payload
    from gpuplan.gpus.catalog import load_catalog

    return json_payload(load_catalog().search(request.filter))


def models(request: schemas.FilterRequest) -> Any:
    from gpuplan.cli.output import json_payload
    from gpuplan.models.catalog import load_catalog

    return json_payload(load_catalog().search(request.filter))


def warm_up(settings: ServerSettings) -> None:
    """Import the estimate path and build its validators before the first request does: the first
    requests of a cold server took 100-180 ms each (benchmarks/bench_serve.py), the rest 3 ms."""
    from gpuplan.gpus.catalog import load_catalog as gpu_catalog
    from gpuplan.models.catalog import load_catalog as model_catalog

    model, gpu = model_catalog().entries[0].id, gpu_catalog().gpus[0].name
    for work in (lambda: estimate(schemas.EstimateRequest(model=model), settings),
                 lambda: estimate(schemas.EstimateRequest(model=model, engine="vllm", gpu=gpu), settings),
                 lambda: sweep(schemas.SweepRequest(model=model, seq="1k", gpu=[gpu]), settings),
                 lambda: train(schemas.TrainRequest(model=model), settings)):
        try:
            work()
        except GpuplanError:
            pass  # an answer the model gives (it does not fit this card, say) warms the path all the same


def engines() -> dict[str, Any]:
    """The engines and every engine's options, for the page's form: generated from the engine registry."""
    from gpuplan.calc.precision import KV_DTYPES, WEIGHT_DTYPES
    from gpuplan.engines import (
        ENGINE_NAMES,
        SERVING_ENGINES,
        default_engine,
        engine_module,
        option_owners,
        options_class,
    )
    from gpuplan.engines.base import option_extra

    options = []
    for name, owners in option_owners().items():
        cls = options_class(owners[0])
        field = cls.model_fields[name]
        # "sweep": the CLI takes a list of it and estimates each (max_model_len, ctx_size): another spelling
        # of the context length, which a sweep's seq axis already varies.
        options.append({"name": name, "engines": owners, "description": field.description,
                        "default": field.default, "schema": schemas.option_schema(cls, name),
                        "context_length": bool(option_extra(cls, name).get("sweep"))})
    return {"engines": list(ENGINE_NAMES), "default_engine": default_engine(False),
            "dtypes": list(WEIGHT_DTYPES), "kv_dtypes": list(KV_DTYPES), "options": options,
            "memory_fraction_options": {e: engine_module(e).MEMORY_FRACTION_OPTION for e in SERVING_ENGINES}}
