"""The HTTP front end: FastAPI routes over gpuplan/web/service.py, errors as the CLI words them.

Imported only by `gpuplan serve` and the tests: it needs the web extra (pip install 'gpuplan[web]').
"""

import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError

from gpuplan import __version__
from gpuplan.cli.errors import format_error
from gpuplan.errors import EXIT_FINDING, EXIT_SOURCE, EXIT_USAGE, GatedRepoError, GpuplanError, HubUnavailableError
from gpuplan.web import schemas, service
from gpuplan.web.service import PathRefusedError, RequestTimeoutError, ServerSettings

# HTTP status by the CLI's exit code (gpuplan/errors.py), then the few errors that say more than it.
STATUS_BY_EXIT_CODE = {EXIT_USAGE: 400, EXIT_SOURCE: 404, EXIT_FINDING: 422}
STATUS_BY_ERROR: dict[type[GpuplanError], int] = {
    PathRefusedError: 403, GatedRepoError: 403, HubUnavailableError: 502, RequestTimeoutError: 503}
# Requests computed at once; more wait their turn. Two cores: more threads only share the same CPU.
WORKERS = 4
# Plans that may run at once. A plan cannot be stopped part-way (the planner tries every layout of every
# GPU type: 0.4 s for a 7B model, 22 s when nothing fits 64 requests of 128k tokens, measured on this
# 2-core machine), and a worker thread that passes the time limit runs on after its request was answered:
# one slot keeps such a plan to one core.
PLAN_SLOTS = 1

# The page's files, served as they are (no build step) from the package.
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    # Nothing from another origin: the page works offline and cannot be made to load a script elsewhere.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def error_body(exc: GpuplanError) -> dict[str, Any]:
    """The JSON of an error: the CLI's message and hint, and the exact line the CLI prints."""
    return {"error": {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint,
                      "exit_code": exc.exit_code, "text": format_error(exc)}}


def error_status(exc: GpuplanError) -> int:
    for kind, status in STATUS_BY_ERROR.items():
        if isinstance(exc, kind):
            return status
    return STATUS_BY_EXIT_CODE.get(exc.exit_code, 400)


def error_response(exc: GpuplanError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=error_status(exc))


def validation_message(exc: RequestValidationError) -> str:
    """pydantic's first complaint as `field: message`, as the CLI's plan files and options word them."""
    parts = []
    for err in exc.errors()[:3]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "body")]
        field = ".".join(loc) or "request"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            message = "unknown parameter"
        elif err.get("type") == "json_invalid":
            field, message = "body", "not valid JSON"
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


class BodyLimit:
    """Refuse a request whose body is over the server's limit: at once when Content-Length says so, else as
    soon as the bytes read pass it. A body under the limit is read whole here and handed on unchanged
    (pure ASGI: no per-request task as BaseHTTPMiddleware would add)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Callable) -> None:
        exc = GpuplanError(f"the request body is larger than this server's {self.max_bytes:,} bytes",
                           hint="send a smaller plan or fewer values")
        await JSONResponse(error_body(exc), status_code=413)({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


def validate_query(request_type: Any, request: Request) -> Any:
    """The request model from the query string: a repeated parameter is a list, any other one its text.

    Validated here by the model itself rather than declared to FastAPI parameter by parameter: FastAPI's
    per-field path costs about a millisecond for the estimate's 40 fields, more than the estimate (measured
    with benchmarks/bench_serve.py, docs/performance.md)."""
    params = request.query_params
    data = {}
    for key in params.keys():
        values = params.getlist(key)
        data[key] = values if len(values) > 1 else values[0]
    try:
        return request_type.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def query_parameters(request_type: Any) -> list[dict[str, Any]]:
    """The OpenAPI description of a request model's fields as query parameters, for /docs."""
    schema = request_type.model_json_schema()
    required = set(schema.get("required", ()))
    return [{"name": name, "in": "query", "required": name in required, "description": prop.get("description", ""),
             "schema": {k: v for k, v in prop.items() if k not in ("description", "title")}}
            for name, prop in schema["properties"].items()]


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.warm_up:
            await anyio.to_thread.run_sync(service.warm_up, settings)
        yield

    # fastapi-offline serves Swagger UI's scripts from the package, not a CDN: /docs works offline as the page does.
    app = FastAPIOffline(title="gpuplan", version=__version__, lifespan=lifespan,
                  description="GPU memory estimates for large language models: the same library and the same "
                              "JSON as the gpuplan CLI's --format json. Errors are JSON with the CLI's message "
                              "and hint.")
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    limiter = anyio.CapacityLimiter(WORKERS)

    @app.exception_handler(GpuplanError)
    async def _library_error(_request: Request, exc: GpuplanError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(service.InputError(validation_message(exc),
                                                 hint="the API's parameters are listed at /docs"))

    async def compute(work: Callable[[], Any]) -> JSONResponse:
        """Run library work in a worker thread, within the server's time limit."""
        try:
            with anyio.fail_after(settings.request_timeout_s):
                payload = await anyio.to_thread.run_sync(work, limiter=limiter, abandon_on_cancel=True)
        except TimeoutError:
            raise RequestTimeoutError(f"the request ran past this server's limit of "
                                      f"{settings.request_timeout_s:g} s", hint="ask for less") from None
        return JSONResponse(payload)

    def deadline() -> float:
        return time.monotonic() + settings.request_timeout_s

    plan_slots = threading.BoundedSemaphore(PLAN_SLOTS)

    def one_plan_at_a_time(request: Any) -> Any:
        """Taken and given back in the worker thread itself, so a plan that ran past its request's time
        limit still holds its slot until it ends."""
        if not plan_slots.acquire(timeout=settings.request_timeout_s):
            raise RequestTimeoutError("another plan is still being computed", hint="retry in a few seconds")
        try:
            return service.plan(request, settings)
        finally:
            plan_slots.release()

    _add_api_routes(app, settings, compute, deadline, one_plan_at_a_time)
    _add_page_routes(app)
    return app


def _add_api_routes(app: FastAPI, settings: ServerSettings, compute: Callable, deadline: Callable,
                    plan: Callable) -> None:
    """GET with query parameters and POST with a JSON body, for each endpoint: both call the same function.
    (This module has no `from __future__ import annotations`: FastAPI reads these closures' annotations.)"""
    EstimateRequest: Any = schemas.EstimateRequest  # noqa: N806 - a class made by create_model

    def both(path: str, request_type: Any, work: Callable[[Any], Any], summary: str) -> None:
        async def get(request: Request) -> JSONResponse:
            parsed = validate_query(request_type, request)
            return await compute(lambda: work(parsed))

        async def post(body: request_type) -> JSONResponse:  # type: ignore[valid-type]
            return await compute(lambda: work(body))

        app.add_api_route(path, get, methods=["GET"], summary=summary, name=f"{path} (GET)",
                          openapi_extra={"parameters": query_parameters(request_type)})
        app.add_api_route(path, post, methods=["POST"], summary=summary, name=f"{path} (POST)")

    both("/api/estimate", EstimateRequest, lambda r: service.estimate(r, settings),
         "One workload's memory per GPU: gpuplan estimate --format json")
    both("/api/plan", schemas.PlanRequest, plan,
         "Which GPUs, how many, how split: gpuplan plan --format json")
    both("/api/sweep", schemas.SweepRequest, lambda r: service.sweep(r, settings, deadline=deadline()),
         "Memory over a grid of context lengths, batches, dtypes and GPUs: gpuplan sweep --format json")
    both("/api/train", schemas.TrainRequest, lambda r: service.train(r, settings),
         "Training memory per GPU: gpuplan train --format json")
    both("/api/check", schemas.CheckRequest, lambda r: service.check(r, settings),
         "Every deployment of a plan file: gpuplan check --format json")
    both("/api/gpus", schemas.FilterRequest, service.gpus, "The GPU catalog: gpuplan gpus --format json")
    both("/api/models", schemas.FilterRequest, service.models,
         "The bundled model catalog: gpuplan models --format json")

    @app.get("/api/engines", summary="The engines and their options (what the page's form offers)")
    async def engines() -> JSONResponse:
        return JSONResponse(service.engines())

    @app.get("/api/server", summary="How this server was started: local paths, network, limits")
    async def server() -> JSONResponse:
        return JSONResponse({"version": __version__, **settings.model_dump()})


def _add_page_routes(app: FastAPI) -> None:
    static = resources.files("gpuplan.web") / "static"
    page = (static / "index.html").read_bytes()
    files = {name: (static / name).read_bytes() for name in STATIC_FILES}

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    def static_route(content: bytes, media_type: str) -> Callable[[], Any]:
        async def serve() -> Response:
            return Response(content, media_type=media_type, headers=PAGE_HEADERS)

        return serve

    for name, media_type in STATIC_FILES.items():
        app.add_api_route(f"/static/{name}", static_route(files[name], media_type), methods=["GET"],
                          include_in_schema=False)
