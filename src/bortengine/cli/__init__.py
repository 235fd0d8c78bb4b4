"""The command line: `bortengine <command>`, one module per command group.

Every command module has the same shape: `COMMANDS` (the command names it handles), `add_parsers(sub)` (adds
their subparsers) and `run(args) -> int` (runs one of them, returns the exit code). `main` builds the parser from
the modules, dispatches to the one whose COMMANDS holds the command, and applies one error convention:

- a BortEngineError (any subclass) is one line on stderr, `bortengine <command>: error: <message>`, exit code 2;
- a malformed argument is argparse's: the usage line and `bortengine <command>: error: argument ...`, exit code 2;
- Ctrl-C (KeyboardInterrupt) is one line saying how to resume, when the command knows, exit code 130; a kill
  (SIGTERM: what systemd, docker, Kubernetes and CI send) stops the same way, its workers ended, exit code 143
  (serve drains instead: uvicorn's own SIGTERM).

The command modules import no torch until a command runs, so `bortengine info` and `demo` work without it.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import warnings
from typing import Optional, Sequence

from bortengine.cli import demo, export, extract, info, pipeline, profile, serve, train
from bortengine.errors import BortEngineError
from bortengine.version import __version__

__all__ = ["main", "COMMAND_MODULES"]

COMMAND_MODULES = (info, demo, pipeline, profile, extract, train, export, serve)  # the order of `bortengine --help`


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"bortengine {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 1
    module = next(m for m in COMMAND_MODULES if args.command in m.COMMANDS)
    terminated: list[int] = []
    try:
        with _sigterm_as_interrupt(terminated, args.command not in serve.COMMANDS), _warnings_as_lines(args.command):
            return module.run(args)
    except BortEngineError as e:
        print(f"bortengine {args.command}: error: {_one_line(str(e)) or type(e).__name__}", file=sys.stderr)
        return 2
    except MemoryError as e:   # sizes the machine cannot hold (a batch of 100,000, a space of 10^6-wide models)
        detail = _one_line(str(e))
        print(f"bortengine {args.command}: error: out of memory{f' ({detail})' if detail else ''}: the sizes asked "
              f"for (batch, tokens per text, model sizes) need more memory than this machine has; ask for smaller "
              f"ones", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = _one_line(str(e)) or "interrupted"
        if terminated:
            how = how.replace("interrupted", "terminated (SIGTERM)", 1)
        print(f"\nbortengine {args.command}: {how}", file=sys.stderr)
        return 128 + (terminated[0] if terminated else signal.SIGINT)


@contextlib.contextmanager
def _warnings_as_lines(command: str):
    """Warnings on the console as the errors are: `bortengine COMMAND: warning: message (Category)`, without the
    Python source line the default format adds (the user did not write it)."""
    def one_line(message, category, filename, lineno, line=None):
        return f"bortengine {command}: warning: {message} ({category.__name__})\n"

    default, warnings.formatwarning = warnings.formatwarning, one_line
    try:
        yield
    finally:
        warnings.formatwarning = default


@contextlib.contextmanager
def _sigterm_as_interrupt(terminated: list[int], active: bool):
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so that a killed run ends its worker processes (which
    would otherwise outlive it, holding memory and writing to the run's cache), keeps what it finished and says
    how to resume; `terminated` records the signal. Background jobs of a non-interactive shell ignore SIGINT, so
    a kill is how such runs get stopped. Only the main thread may set handlers."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bortengine", description="A compiled CPU inference engine for BERT encoders, and the Bort pipeline: "
                                       "profile, extract, pretrain, finetune, export.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
