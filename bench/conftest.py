"""pytest wiring of the benchmark suite: options, shared fixtures and the end-of-session report.

The timing protocol itself is in protocol.py; the cases in cases.py.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if importlib.util.find_spec("bortengine") is None:  # not pip-installed (e.g. a fresh clone): use the source tree
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(BENCH_DIR))

from cases import RESULTS_DIR  # noqa: E402
from report import Report  # noqa: E402
from runtimes import RuntimePool, engine_info, set_torch_threads  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("bortengine benchmarks")
    group.addoption("--bench-threads", type=int, default=int(os.environ.get("BORTENGINE_BENCH_THREADS", "2")),
                    help="threads for every runtime (env BORTENGINE_BENCH_THREADS; default 2)")
    group.addoption("--bench-seconds", type=float, default=float(os.environ.get("BORTENGINE_BENCH_SECONDS", "2")),
                    help="timed seconds per row, before the round limits (env BORTENGINE_BENCH_SECONDS; default 2)")
    group.addoption("--bench-json", default=os.environ.get("BORTENGINE_BENCH_JSON"),
                    help="where to write the results (default bench/results/latest.json, or smoke.json for a "
                         "smoke-only run)")


def pytest_configure(config):
    config._bortengine_report = Report(threads=config.getoption("--bench-threads"))


def pytest_collection_modifyitems(config, items):
    # Smoke first: a broken harness fails in seconds, not after the long rows.
    items.sort(key=lambda item: 0 if "smoke" in item.nodeid else 1)


@pytest.fixture(scope="session")
def threads(pytestconfig) -> int:
    n = pytestconfig.getoption("--bench-threads")
    if n < 1:
        raise pytest.UsageError(f"--bench-threads must be >= 1, got {n}")
    set_torch_threads(n)
    return n


@pytest.fixture(scope="session")
def report(pytestconfig, threads) -> Report:
    r = pytestconfig._bortengine_report
    r.engine = engine_info()
    return r


@pytest.fixture(scope="session")
def pool(threads) -> RuntimePool:
    return RuntimePool(threads)


@pytest.fixture(scope="session")
def budget_seconds(pytestconfig) -> float:
    return pytestconfig.getoption("--bench-seconds")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    r: Report = config._bortengine_report
    if r.empty:
        return
    terminalreporter.section("bortengine benchmark summary")
    for line in r.lines():
        terminalreporter.write_line(line)
    path = config.getoption("--bench-json")
    path = Path(path) if path else RESULTS_DIR / ("smoke.json" if r.smoke_only else "latest.json")
    r.write(path)
    terminalreporter.write_line(f"\nresults written to {path}")
