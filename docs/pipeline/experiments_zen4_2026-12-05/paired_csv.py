"""paired_csv.py TEST.csv RUN_A RUN_B...: test accuracy of each run's student (float32) on a CSV (text,label) and
McNemar's exact test of each against the first."""
import sys
from math import comb

import numpy as np
import pyarrow.csv as pacsv

import bortengine

table = pacsv.read_csv(sys.argv[1]).to_pydict()
texts, gold = table["text"], np.array([str(x) for x in table["label"]])
res = {}
for d in sys.argv[2:]:
    eng = bortengine.load(d + "/model", dtype="float32")
    out = eng.classify(texts, batch_size=32)
    pred = np.array([o[0] if isinstance(o, tuple) else o["label"] for o in out])
    res[d] = pred == gold
    print(d, round(res[d].mean(), 4), flush=True)
for d in sys.argv[3:]:
    a, b = res[sys.argv[2]], res[d]
    n01, n10 = int((~a & b).sum()), int((a & ~b).sum())
    n, k = n01 + n10, min(n01, n10)
    p = min(1, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)
    print(f"  {d} vs {sys.argv[2]}: better on {n01}, worse on {n10}, McNemar exact p={p:.3f}")
