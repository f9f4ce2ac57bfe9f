"""The one place where errors become a line on stderr and an exit code."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from gpuplan.errors import EXIT_INTERNAL, GpuplanError

T = TypeVar("T")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell convention


def debug_enabled() -> bool:
    return os.environ.get("GPUPLAN_DEBUG", "").strip() not in ("", "0", "false", "no")


def format_error(exc: GpuplanError) -> str:
    line = f"Error: {exc.message}"
    if exc.hint:
        line += f"\n  hint: {exc.hint}"
    return line


def run_guarded(func: Callable[[], T]) -> T:
    """Run a command; turn gpuplan errors into one message and their exit code (GPUPLAN_DEBUG=1 re-raises).

    A command that returns a non-zero int exits with it (1: a finding such as "does not fit")."""
    try:
        result = func()
    except GpuplanError as exc:
        if debug_enabled():
            raise
        print(format_error(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # stdout closed early (e.g. `gpuplan models | head`): not an error worth a message.
        sys.stderr.close()
        sys.exit(0)
    except Exception as exc:  # a bug: say so in one line, full traceback with GPUPLAN_DEBUG=1
        if debug_enabled():
            raise
        print(f"Error: internal error ({type(exc).__name__}: {exc}); please report it. "
              "Run with GPUPLAN_DEBUG=1 for the traceback.", file=sys.stderr)
        sys.exit(EXIT_INTERNAL)
    if isinstance(result, int) and not isinstance(result, bool) and result:
        sys.exit(result)
    return result
