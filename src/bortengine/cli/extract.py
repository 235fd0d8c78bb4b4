"""`bortengine extract`: optimal sub-architecture extraction, the FPTAS over a CPU profile (bortengine.search).

The parser and the command are the search stage's own (bortengine.search.add_extract_parser, run_extract); this
module gives them the shape every command module has.
"""
from __future__ import annotations

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("extract",)


def add_parsers(sub) -> None:
    from bortengine.search import add_extract_parser

    add_extract_parser(sub)


def run(args) -> int:
    from bortengine.search import run_extract

    return run_extract(args)
