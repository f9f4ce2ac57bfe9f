"""gpuplan serve's page in a real browser: Debian's chromium, headless, against a real uvicorn on 127.0.0.1.

    python benchmarks/web_page.py                      # write docs/images/web.png, the README's screenshot
    python benchmarks/web_page.py --link '/?model=...'  # another shared link

tests/test_web_browser.py uses the same functions to check that the rendered page shows the CLI's total.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "images" / "web.png"
LINK = "/?model=meta-llama/Llama-2-7b&dtype=fp16&seq=4096&gpu=L4"
# Chromium as root in a sandboxed machine with no outside network: no sandbox, no GPU, none of the
# background connections it would make at start (each refused here), a fresh profile per run.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")
# Virtual time lets the page's fetches and timers finish before the DOM is dumped; the page needs three
# round trips (its catalogs, the estimate, then the plan and the sweep): well under a second here.
VIRTUAL_TIME_MS = 5_000


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(settings=None) -> Iterator[str]:
    """A real uvicorn serving gpuplan's app on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    from gpuplan.web.app import create_app

    port = _free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run_chromium(url: str, *action: str, window: str = "1280,1500", timeout_s: float = 120) -> str:
    """Open ``url`` in headless chromium with ``action`` (--dump-dom, --screenshot=...); its stdout."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="gpuplan-chromium-") as profile:
        command = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window}",
                   f"--virtual-time-budget={VIRTUAL_TIME_MS}", *action, url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False,
                              env={**os.environ, "LANG": "en_US.UTF-8"})
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def dump_dom(url: str) -> str:
    return run_chromium(url, "--dump-dom")


def screenshot(url: str, path: Path, window: str = "1280,1500") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    run_chromium(url, f"--screenshot={path}", window=window)
    if not path.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--link", default=LINK, help="the page's path and query")
    parser.add_argument("--out", type=Path, default=SCREENSHOT)
    parser.add_argument("--window", default="1280,1560", help="width,height in pixels")
    args = parser.parse_args()
    with running_server() as base:
        screenshot(base + args.link, args.out, window=args.window)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
