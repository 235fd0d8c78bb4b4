"""Experiment: the pipeline's distillation on the task's texts, N near texts of each (argv[1]) and the built-in part."""
import sys

import numpy as np

import bortengine.pipeline.stages as st

N = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 3
original = st._distillation_documents


def patched(ctx):
    task_documents, builtin = original(ctx)
    from bortengine.training import NearestNeighbourSwap
    texts, _ = ctx.task.texts("train")
    swap = NearestNeighbourSwap.from_model(str(ctx.teacher_dir), max_length=128)
    near = [("task", v) for variants in swap(texts, np.random.default_rng(ctx.config.seed + 1), N) for v in variants]
    print(f"distil documents: {len(task_documents)} task, {len(near)} near, {len(builtin)} built-in", flush=True)
    return task_documents + near, builtin


st._distillation_documents = patched
if __name__ == "__main__":      # the extraction's workers are spawned: they import this file
    from bortengine.cli import main
    sys.exit(main(sys.argv[2:]))
