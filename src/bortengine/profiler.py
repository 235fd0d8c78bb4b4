"""The old import path of the profiling stage: `bortengine.profiler` re-exports the public API of
bortengine.profiling."""
from __future__ import annotations

from bortengine.profiling import *  # noqa: F401,F403
from bortengine.profiling import __all__  # noqa: F401
