"""Agora's report: test accuracy of each round's student after the loop (the loop never sees test), the
accuracy-over-rounds plot, the summary over seeds, and `python -m bortengine.agora RUN_DIR...` (main), which
prints that summary. Torch-free; matplotlib is imported by the plot.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from bortengine.files import read_json, save_figure
from bortengine.training.agora.loop import AgoraError, AgoraResult, accuracy
from bortengine.training.checkpoint import refuse_old_files

__all__ = ["evaluate_rounds", "plot_rounds", "summarize", "main"]


def evaluate_rounds(result_or_dir: AgoraResult | str | os.PathLike, test: tuple[Sequence[Any], Sequence[int]],
                    load_model: Optional[Callable[[Path], Any]] = None) -> list[dict]:
    """Test accuracy of each round's best student, after the loop has finished (the loop never sees test).
    From a result (only the final model is in memory: the last round) or from an out_dir (every round's saved
    student; load_model(dir) -> model, the counterpart of run_agora's save_model)."""
    points, gold = list(test[0]), np.asarray(test[1])
    if isinstance(result_or_dir, AgoraResult):
        result_or_dir.final.test_accuracy = accuracy(result_or_dir.model.predict(points), gold)
        return [r.to_dict() for r in result_or_dir.rounds]
    out = Path(result_or_dir)
    refuse_old_files(out, ("model.pkl",))
    if load_model is None:
        raise AgoraError(f"evaluate_rounds({out}) needs load_model(directory) -> model to read each round's saved "
                         f"student (agora.load_engine_classifier for text students)")
    if not (out / "rounds.jsonl").is_file():
        raise AgoraError(f"{out} is not an Agora run directory (no rounds.jsonl): pass the out_dir of run_agora")
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines() if line.strip()]
    rows = list({r["round"]: r for r in rows}.values())   # a round repeated after a crash: keep the last write
    for row in rows:
        d = out / f"round-{row['round']}"
        model = load_model(d)
        row["test_accuracy"] = accuracy(model.predict(points), gold)
    return rows


def plot_rounds(runs: Sequence[Sequence[Mapping[str, Any]]], path: str | os.PathLike, reference: Optional[float] = None,
                title: str = "Agora on Rotten Tomatoes (500 train examples)",
                seeds: Optional[Sequence[Any]] = None) -> Path:
    """Dev and test accuracy over rounds, one line per run (labelled by `seeds`, default 0, 1, ...); reference: the
    full-split student's test accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.0))
    seeds = list(seeds) if seeds is not None else list(range(len(runs)))
    for k, rows in enumerate(runs):
        xs = [r["round"] for r in rows]
        ax.plot(xs, [r["dev_accuracy"] for r in rows], "o--", color=f"C{k}", alpha=0.6,
                label=f"seed {seeds[k]}: dev (best of Θ)")
        if all(r.get("test_accuracy") is not None for r in rows):
            ax.plot(xs, [r["test_accuracy"] for r in rows], "s-", color=f"C{k}", label=f"seed {seeds[k]}: test")
    if reference is not None:
        ax.axhline(reference, color="k", lw=1, ls=":", label="full train split, test")
    ax.set_xticks(sorted({r["round"] for rows in runs for r in rows}))
    ax.set_xlabel("round (round 1 = plain fine-tuning with the Θ search)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return save_figure(fig, path, dpi=120)


def summarize(run_dirs: Sequence[str | os.PathLike], reference_dirs: Sequence[str | os.PathLike] = (),
              plot: Optional[str | os.PathLike] = None) -> dict:
    """Mean and spread (sample standard deviation, min, max) over seeds of the plain (round 1) and Agora (last
    round) test accuracies, the full-split reference's, the gain and the fraction of the gap closed; and the plot."""
    def stats(values: Sequence[float]) -> dict:
        v = np.asarray(values, dtype=np.float64)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "min": float(v.min()), "max": float(v.max()), "n": len(v), "values": [float(x) for x in v]}

    def read(d: str | os.PathLike) -> dict:
        path = Path(d, "result.json")
        if not path.is_file():
            raise AgoraError(f"{d} is not a finished Agora run directory (no result.json): pass the directories "
                             f"given to --out, e.g. runs/agora/seed-?, not their logs")
        return read_json(path, AgoraError)

    runs = [read(d) for d in run_dirs]
    refs = [read(d) for d in reference_dirs]
    plain = [r["plain_test_accuracy"] for r in runs]
    agora = [r["agora_test_accuracy"] for r in runs]
    out: dict[str, Any] = {"runs": [str(d) for d in run_dirs], "plain_test": stats(plain),
                           "agora_test": stats(agora), "gain": stats(np.subtract(agora, plain))}
    if refs:
        full = [r["agora_test_accuracy"] for r in refs]
        out["full_split_test"] = stats(full)
        gap = out["full_split_test"]["mean"] - out["plain_test"]["mean"]
        out["gap_closed"] = (out["agora_test"]["mean"] - out["plain_test"]["mean"]) / gap if gap > 0 else None
    # a run's time is the sum of its rounds' own times, so a run interrupted and resumed counts each round once
    # (the last call's wall time would count only what was left)
    out["minutes_per_run"] = stats([sum(row["seconds"] for row in r["rounds"]) / 60 for r in runs])
    if plot:
        plot_rounds([r["rounds"] for r in runs], plot, reference=out["full_split_test"]["mean"] if refs else None,
                    seeds=[r.get("seed", k) for k, r in enumerate(runs)])
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bortengine.agora",
                                     description="summarise Agora runs (bortengine finetune --agora) over seeds")
    parser.add_argument("runs", nargs="+", help="Agora run directories (one per seed)")
    parser.add_argument("--reference", nargs="*", default=(), help="full-split run directories (one per seed)")
    parser.add_argument("--plot", default=None, help="write the accuracy-over-rounds plot here")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(summarize(args.runs, args.reference, args.plot), indent=2))
    except AgoraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
