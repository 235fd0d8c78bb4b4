"""distil_surrogate.py: the extraction's distillation surrogate (100 steps, batch 16, 64 tokens, built-in
corpus) of a few students cut from the fine-tuned Rotten Tomatoes teacher of runs/rtfull_z (docs/pipeline.md,
the deeper student)."""
import time
from bortengine.search import DistillationSurrogate
from bortengine.architecture import Architecture
s = DistillationSurrogate(steps=100, batch_size=16, max_length=64, teacher="runs/rtfull_z/teacher", threads=2)
for a in ["2,12,384,512", "2,6,384,512", "4,8,256,256", "2,12,384,768", "6,12,192,256", "3,8,256,512"]:
    t = time.time()
    print(a, round(s(Architecture.parse(a, vocab_size=30522)), 4), f"{time.time() - t:.0f} s", flush=True)
