"""`serve`: the model over HTTP until SIGTERM, in one server process (serving.process) or several (serving.workers).
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from bortengine.engine import ModelConfig, transformer_directory
from bortengine.errors import ModelLoadError
from bortengine.serving.app import check_input_limit
from bortengine.serving.options import ServeOptions
from bortengine.serving.process import describe, listening_socket, run_server, url
from bortengine.serving.workers import serve_workers

__all__ = ["serve"]


def serve(model_dir: str | Path, options: ServeOptions = ServeOptions(),
          announce: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
    """Serve the model in model_dir until SIGTERM (drains, then returns) or SIGINT (KeyboardInterrupt). announce
    receives the lines that say where the server listens and when the model is ready. A model that cannot load
    stops the server, and its error is raised here. options.workers > 1: that many processes on the port
    (serving.workers)."""
    _check_options_against_config(model_dir, options)
    if options.workers > 1:
        serve_workers(model_dir, options, announce)
        return
    started = time.perf_counter()

    def listening(sock) -> None:
        announce(f"listening on {url(sock)} (loading {model_dir}; GET /health answers 200 once it is ready)")

    with _sigint_raised():
        run_server(model_dir, options, lambda: listening_socket(options.host, options.port), listening,
                   lambda service: announce(f"ready: {describe(service)} in {time.perf_counter() - started:.1f} s"))


@contextlib.contextmanager
def _sigint_raised() -> Iterator[None]:
    """SIGINT ends serve() in KeyboardInterrupt (exit code 130) even where it came ignored (a script's background
    job): uvicorn drains on it whatever it inherits, and the server of --workers ends so too; it returned, exit
    code 0, as though SIGTERM had come."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _check_options_against_config(model_dir: str | Path, options: ServeOptions) -> None:
    """What config.json alone can refute is refuted before the port is taken, not after "listening on": a
    --max-input-tokens beyond the model's positions. A config that does not parse is left to the load, which says
    what is wrong with the whole model."""
    if options.max_input_tokens is None:
        return
    try:
        config = ModelConfig.from_file(transformer_directory(model_dir))
    except ModelLoadError:
        return
    check_input_limit(options.max_input_tokens, config)
