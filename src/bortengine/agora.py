"""The old import path of Agora: `bortengine.agora` is the package `bortengine.training.agora`, and `python -m
bortengine.agora RUN_DIR...` summarizes runs (see docs/agora.md)."""
import sys

from bortengine.training import agora as _agora

if __name__ == "__main__":
    raise SystemExit(_agora.main())
sys.modules[__name__] = _agora
