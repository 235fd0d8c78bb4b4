"""Experiment: the pipeline with the student's layers cut from chosen teacher layers (argv[1], e.g. 0,5)."""
import sys

import bortengine.training.distill as d
from bortengine.training.slicing import default_importance as original

KEEP = [int(x) for x in sys.argv[1].split(",")]


def patched(teacher, tokenizer, texts=None):
    imp = original(teacher, tokenizer, texts)
    n = len(imp.layer_removal_order) + 1
    dropped = [i for i in range(n) if i not in KEEP]
    imp.layer_removal_order = (dropped + [i for i in imp.layer_removal_order if i not in dropped])[:n - 1]
    print("kept layers", imp.kept_layers(len(KEEP)), flush=True)
    return imp


d.default_importance = patched
if __name__ == "__main__":      # the extraction's workers are spawned: they import this file
    from bortengine.cli import main
    sys.exit(main(sys.argv[2:]))
