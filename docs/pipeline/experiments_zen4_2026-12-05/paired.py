"""paired.py DATA RUN_A RUN_B...: accuracy of each run's student (float32) and McNemar's exact test of each against
RUN_A, on the same examples. DATA: `rt` (the built-in Rotten Tomatoes: its dev and test splits) or a CSV file with
`text` and `label` columns (one split, e.g. TREC's test.csv)."""
import sys
from math import comb

import numpy as np

import bortengine


def splits(data: str) -> dict[str, tuple[list[str], np.ndarray]]:
    """split name -> (texts, gold label names)."""
    if data == "rt":
        from bortengine.training.tasks import load_task

        task = load_task("rt")
        return {name: ([e.text for e in ex], np.array([task.labels[e.label] for e in ex]))
                for name, ex in (("dev", task.dev), ("test", task.test))}
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(data).to_pydict()
    return {"file": (table["text"], np.array([str(x) for x in table["label"]]))}


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(b right where a is wrong, a right where b is wrong, two-sided exact p) of two per-example correctness arrays."""
    better, worse = int((~a & b).sum()), int((a & ~b).sum())
    n, k = better + worse, min(better, worse)
    return better, worse, min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


data, runs = sys.argv[1], sys.argv[2:]
engines = {run: bortengine.load(run + "/model", dtype="float32") for run in runs}
for split, (texts, gold) in splits(data).items():
    right = {}
    for run, engine in engines.items():
        right[run] = np.array([label for label, _ in engine.classify(texts, batch_size=32)]) == gold
        print(split, run, round(right[run].mean(), 4), flush=True)
    for run in runs[1:]:
        better, worse, p = mcnemar_exact(right[runs[0]], right[run])
        print(f"  {split} {run} vs {runs[0]}: better on {better}, worse on {worse}, McNemar exact p={p:.3f}")
