"""The result of a search (Extraction): every candidate with what the search learnt of it, the ε-Pareto set and
the winner, as a summary, as report.json, and as a two-panel plot."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from bortengine.architecture import Architecture
from bortengine.files import atomic_write_text, save_figure
from bortengine.search.grouping import REPRESENTATIVES
from bortengine.search.pareto import Candidate, ParetoSet, select
from bortengine.search.surrogates import Surrogate
from bortengine.search_space import SearchSpace

__all__ = ["Extraction"]

SCALE = 1e6  # the plot's parameter axis, in millions


@dataclass
class Extraction:
    """The result of extract(): every candidate, the groups, the ε-Pareto set and the winner."""

    space: SearchSpace
    candidates: list[Candidate]
    epsilon: float
    mode: str                       # "fptas" or "exhaustive"
    size: str                       # "effective" or "total"
    max_point: Candidate
    surrogate: Surrogate
    tau: float
    workload: Any
    profile: Any
    bound: dict[str, Any]
    groups: int
    evaluations: int                # surrogate evaluations this search needed (cached ones included)
    fresh_evaluations: int          # of which run now (not from the cache)
    failures: list[dict[str, Any]]
    complete: bool                  # False when a time budget stopped the evaluations
    seconds: float
    cache_path: Optional[str]
    pareto: ParetoSet = field(init=False)
    winner: Optional[Candidate] = field(init=False)
    measurement: Optional[dict[str, Any]] = None
    verification: Optional[dict[str, Any]] = None
    representative: str = "source-heads"  # the rule that picks each group's evaluated member (REPRESENTATIVES)
    refinement: Optional[dict[str, Any]] = None  # what the refinement stage did (search.refinement)
    executor: str = "local"         # where the evaluations ran (Executor.describe())
    latency_limit_ms: Optional[float] = None   # extract()'s: the front and the winner are within it

    def __post_init__(self):
        self.pareto, self.winner = select(self.candidates, self.max_point, self.tau, self.epsilon,
                                          self.latency_limit_ms)

    @property
    def architecture(self) -> Optional[Architecture]:
        """The winner as an Architecture (what training.pretrain / DistillConfig(student=...) take)."""
        return self.winner.arch if self.winner else None

    def summary(self) -> dict[str, Any]:
        w = self.winner
        return {
            "mode": self.mode, "epsilon": self.epsilon, "space": self.space.name, "space_size": len(self.candidates),
            "latency_limit_ms": self.latency_limit_ms,
            "groups": self.groups, "bound": self.bound, "evaluations": self.evaluations,
            "refinement": self.refinement,
            "fresh_evaluations": self.fresh_evaluations, "failures": len(self.failures),
            "executor": self.executor, "nodes": self.nodes(),
            "pareto_size": len(self.pareto), "complete": self.complete, "seconds": round(self.seconds, 2),
            "winner": None if w is None else {
                "arch": list(w.dims), "params": w.params, "latency_ms": w.latency_ms, "measured_ms": w.measured_ms,
                "error": w.error, "w": w.w,
                "pretrain": f"bortengine pretrain --arch {','.join(map(str, w.dims))} --out runs/<name>"},
            "max_point": {"arch": list(self.max_point.dims), "params": self.max_point.params,
                          "latency_ms": self.max_point.latency_ms, "error": self.max_point.error},
        }

    def nodes(self) -> dict[str, int]:
        """Evaluations per node they ran on ("local", Ray node ids; cached ones where they first ran)."""
        counts: dict[str, int] = {}
        for c in self.candidates:
            if c.node is not None:
                counts[c.node] = counts.get(c.node, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "bortengine-extraction", "version": 1,
            "summary": self.summary(),
            "settings": self._settings(),
            "failures": self.failures,
            "measurement": self.measurement,
            "verification": self.verification,
            "winner_architecture": self.winner.arch.to_dict() if self.winner else None,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def _settings(self) -> dict[str, Any]:
        prof, refinement = self.profile, self.refinement
        return {
            "space": self.space.to_dict(), "size_objective": self.size,
            "workload": {"batch_size": self.workload.batch_size, "seq_len": self.workload.seq_len,
                         "num_threads": self.workload.num_threads, "dtype": self.workload.dtype},
            "profile": {"path": str(prof.path) if prof.path else None, "target": prof.target.to_dict()},
            "surrogate": {"name": self.surrogate.name, "settings": self.surrogate.settings()},
            "tau": self.tau,
            "w_coefficient": "W = 0.5 ln(p_max/p) + 0.5 ln(l_max/l) - d|d|/tau^2, d = e - e_max",
            "grouping": "cell = (floor(log_{1+eps}(p/p_min)), floor(log_{1+eps}(l/l_min))); representative: "
                        + REPRESENTATIVES[self.representative]
                        + (f"; then up to {refinement['per_group']} evaluations per group, further members "
                           f"chosen by an error model fitted to the measured errors"
                           if refinement and refinement["per_group"] > 1 else ""),
            "cache": self.cache_path,
        }

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False, allow_nan=False)
                                 + "\n")

    def plot(self, path: str | os.PathLike, title: Optional[str] = None) -> Path:
        """Two panels: size vs predicted latency (every candidate, evaluated ones coloured by error), and latency
        vs error (evaluated candidates — representatives and refinement apart —, the ε-Pareto set, the winner, the
        maximum point)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
        self._plot_size_latency(fig, ax1)
        self._plot_latency_error(ax2)
        for ax in (ax1, ax2):
            self._mark_max_point_and_winner(ax, sizes=ax is ax1)
        w = self.workload
        fig.suptitle(title or (f"{self.mode} ε={self.epsilon} on {self.space.name} ({len(self.candidates)} "
                               f"candidates, {self.evaluations} evaluations); batch {w.batch_size}×{w.seq_len}, "
                               f"{w.num_threads} thread(s), {self.profile.target.isa}"), fontsize=10)
        return save_figure(fig, path, dpi=110)

    def _plot_size_latency(self, fig, ax) -> None:
        """Every candidate: grey when not evaluated, else coloured by its error; the ε-Pareto set circled."""
        rest = [c for c in self.candidates if not c.evaluated]
        ev = [c for c in self.candidates if c.evaluated]
        ax.scatter([c.params / SCALE for c in rest], [c.latency_ms for c in rest], s=8, c="lightgrey",
                   label=f"not evaluated ({len(rest)})")
        sc = ax.scatter([c.params / SCALE for c in ev], [c.latency_ms for c in ev], s=18,
                        c=[c.error for c in ev], cmap="viridis_r", label=f"evaluated ({len(ev)})")
        if ev:
            fig.colorbar(sc, ax=ax, label="error surrogate")
        front = list(self.pareto)
        ax.scatter([c.params / SCALE for c in front], [c.latency_ms for c in front], s=60, facecolors="none",
                   edgecolors="red", label=f"ε-Pareto set ({len(front)})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"parameters ({self.size}, millions)")
        ax.set_ylabel("predicted latency (ms)")

    def _plot_latency_error(self, ax) -> None:
        """The evaluated candidates, representatives and refinement apart, and the ε-Pareto set."""
        ev = [c for c in self.candidates if c.evaluated]
        first = [c for c in ev if not c.refined]
        refined = [c for c in ev if c.refined]
        ax.scatter([c.latency_ms for c in first], [c.error for c in first], s=14, c="grey",
                   label=f"evaluated: representatives ({len(first)})")
        if refined:
            ax.scatter([c.latency_ms for c in refined], [c.error for c in refined], s=18, marker="^",
                       c="tab:blue", label=f"evaluated: refinement ({len(refined)})")
        fl = sorted(self.pareto, key=lambda c: c.latency_ms)
        ax.scatter([c.latency_ms for c in fl], [c.error for c in fl], s=40, c="red", label="ε-Pareto set")
        if ev:   # (a log axis of no points is an error in matplotlib)
            ax.set_xscale("log")
        else:
            ax.text(0.5, 0.5, "no candidate evaluated\n(see the report's failures)", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_xlabel("predicted latency (ms)")
        ax.set_ylabel(f"error ({self.surrogate.name} surrogate)")

    def _mark_max_point_and_winner(self, ax, sizes: bool) -> None:
        """The maximum point (on the error panel only when it has an error) and the winner; grid and legend."""
        def xy(c: Candidate) -> tuple[float, float]:
            return (c.params / SCALE, c.latency_ms) if sizes else (c.latency_ms, c.error)

        m = self.max_point
        if m.evaluated or sizes:
            ax.scatter(*xy(m), marker="s", s=80, facecolors="none", edgecolors="black",
                       label=f"maximum point {m.arch}")
        if self.winner:
            w = self.winner
            ax.scatter(*xy(w), marker="*", s=250, c="gold", edgecolors="black", label=f"winner {w.arch}", zorder=5)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
