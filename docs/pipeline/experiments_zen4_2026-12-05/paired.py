import sys, numpy as np, bortengine
from bortengine.training.tasks import load_task
task = load_task("rt")
res = {}
for split in ("dev", "test"):
    ex = getattr(task, split)
    gold = np.array([e.label for e in ex]); texts = [e.text for e in ex]
    for d in sys.argv[1:]:
        eng = bortengine.load(d + "/model", dtype="float32")
        names = eng.config.id2label if hasattr(eng.config, "id2label") else None
        out = eng.classify(texts, batch_size=32)
        lab = [o[0] if isinstance(o, tuple) else o["label"] for o in out]
        pred = np.array([task.labels.index(l) if l in task.labels else int(l) for l in lab])
        res[(split, d)] = pred == gold
        print(split, d, round(res[(split, d)].mean(), 4), flush=True)
    base = sys.argv[1]
    for d in sys.argv[2:]:
        a, b = res[(split, base)], res[(split, d)]
        n01, n10 = int((~a & b).sum()), int((a & ~b).sum())
        from math import comb
        n = n01 + n10; k = min(n01, n10)
        p = min(1, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)
        print(f"  {split} {d} vs {base}: better on {n01}, worse on {n10}, McNemar exact p={p:.3f}")
