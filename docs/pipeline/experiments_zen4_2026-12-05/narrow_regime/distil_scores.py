"""distil_scores.py TEACHER D,A,H,I...: the extraction's distillation surrogate (100 steps, batch 16, 64 tokens,
built-in corpus) of students cut from TEACHER, one line each (docs/pipeline.md, the narrow regime)."""
import time, sys
from bortengine.search import DistillationSurrogate
from bortengine.architecture import Architecture
if __name__ == "__main__":
    s = DistillationSurrogate(steps=100, batch_size=16, max_length=64, teacher=sys.argv[1], threads=2)
    for a in sys.argv[2:]:
        t = time.time()
        print(a, round(s(Architecture.parse(a, vocab_size=30522)), 4), f"{time.time() - t:.0f} s", flush=True)
