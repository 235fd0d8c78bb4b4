"""The command line: `bortengine <command>`, one module per command group."""
from __future__ import annotations

from bortengine.cli.main import main

__all__ = ["main"]
