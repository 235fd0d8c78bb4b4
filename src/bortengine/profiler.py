"""The old import path of the profiling stage: `bortengine.profiler` is `bortengine.profiling.profiler`."""
import sys

from bortengine.profiling import profiler as _profiler

sys.modules[__name__] = _profiler
