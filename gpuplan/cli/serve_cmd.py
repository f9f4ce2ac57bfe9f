"""`gpuplan serve`: the web page and the JSON API on a local port.

Only typer is imported here: the command is registered on every start of the CLI, and FastAPI and uvicorn
(the web extra) load only when the command runs.
"""


from typing import Annotated

import typer

INSTALL_HINT = "pip install 'gpuplan[web]'"


def serve(
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on. The default answers this machine only; 0.0.0.0 answers anyone "
                       "who can reach it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    allow_network: Annotated[bool, typer.Option(
        "--allow-network", help="Fetch models that are not bundled from the Hugging Face Hub or ModelScope "
                                "(HF_TOKEN, HF_ENDPOINT apply). Default: off, only the bundled catalog and the "
                                "local Hub cache answer.")] = False,
    allow_local_paths: Annotated[bool, typer.Option(
        "--allow-local-paths", help="Let requests name folders and files on this machine (./my-model/, a "
                                    ".gguf file). Default: off, such requests get a 403.")] = False,
    log_requests: Annotated[bool, typer.Option("--log-requests", help="Print a line per request.")] = False,
) -> None:
    """Serve the calculator as a web page and a JSON API (needs the web extra: pip install 'gpuplan[web]')."""
    from gpuplan.cli.errors import run_guarded

    def run() -> None:
        from gpuplan.errors import InputError, MissingDependencyError

        try:
            import uvicorn

            from gpuplan.web.app import create_app
        except ImportError as exc:
            raise MissingDependencyError(f"gpuplan serve needs FastAPI and uvicorn ({exc.name} is missing): "
                                         f"{INSTALL_HINT}") from None
        from gpuplan.web.service import ServerSettings

        if not 0 < port < 65536:
            raise InputError(f"--port must be between 1 and 65535, got {port}")
        settings = ServerSettings(allow_local_paths=allow_local_paths, allow_network=allow_network, warm_up=True)
        shown = f"[{host}]" if ":" in host else host
        typer.echo(f"gpuplan serve: http://{shown}:{port}/ (API docs at /docs; local paths "
                   f"{'allowed' if allow_local_paths else 'refused'}; network {'on' if allow_network else 'off'})",
                   err=True)
        if not _is_loopback(host):
            typer.echo(f"Warning: listening on {host}: anyone who can reach this machine can use the server",
                       err=True)
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=log_requests,
                    server_header=False)

    run_guarded(run)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
