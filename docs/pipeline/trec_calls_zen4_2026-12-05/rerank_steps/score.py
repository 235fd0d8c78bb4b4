import sys, time
from bortengine.architecture import Architecture
from bortengine.search import DistilFinetuneSurrogate
data = {"train": "/tmp/trec/train.csv", "test": "/tmp/trec/test.csv", "text_column": "text", "label_column": "label"}
for steps in map(int, sys.argv[1].split(",")):
    s = DistilFinetuneSurrogate(steps=30, distil_steps=steps, seed=0, eval_limit=256, teacher="runs/trec_r/teacher",
                                data=data, threads=2) if "threads" in DistilFinetuneSurrogate.__dataclass_fields__ else \
        DistilFinetuneSurrogate(steps=30, distil_steps=steps, seed=0, eval_limit=256, teacher="runs/trec_r/teacher", data=data)
    for a in sys.argv[2:]:
        t = time.time()
        loss = s(Architecture.parse(a, vocab_size=30522))
        print(steps, a, round(loss, 4), f"{time.time()-t:.0f} s", flush=True)
