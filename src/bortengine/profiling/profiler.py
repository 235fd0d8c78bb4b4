"""The profiling stage's former single module, kept importable while the search still reaches
`bortengine.profiling.profiler` (and its `_calibration_note`): the public API of bortengine.profiling."""
from __future__ import annotations

from bortengine.profiling import *  # noqa: F401,F403
from bortengine.profiling import __all__  # noqa: F401
from bortengine.profiling import calibration_note as _calibration_note  # noqa: F401
