"""finetune_scores.py TEACHER D,A,H,I...: the pipeline's fine-tuning surrogate on Rotten Tomatoes (30 steps, the
settings of extract_stage) of students cut from TEACHER, one line each (docs/pipeline.md, the narrow regime)."""
import sys, time
from bortengine.search import FinetuneSurrogate
from bortengine.architecture import Architecture
if __name__ == "__main__":
    s = FinetuneSurrogate(steps=30, seed=0, eval_limit=256, teacher=sys.argv[1], task="rt", threads=2)
    for a in sys.argv[2:]:
        t = time.time()
        print(a, round(s(Architecture.parse(a, vocab_size=30522)), 4), f"{time.time() - t:.0f} s", flush=True)
