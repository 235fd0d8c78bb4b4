"""validate(): the latency model's predictions against measured forwards of architectures it was not built from.

Architectures are sampled (seeded) from a search space; each is built as a native Encoder with random weights (no
torch) and its forward timed like the ops, in `blocks` passes over all architectures, keeping the least-disturbed
block's median. The report (ValidationReport) gives the errors, Kendall's tau between the two rankings, the noise
during the run, and a plot of predicted against measured.
"""
from __future__ import annotations

import math
import os
import statistics
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from bortengine.engine import available_cpus, core, traced_forwards
from bortengine.files import save_figure
from bortengine.profiling.disturbance import CpuMeter, HostProbe, noise_note, warn_if_busy
from bortengine.profiling.errors import ProfileError
from bortengine.profiling.latency import LatencyModel
from bortengine.profiling.profile_file import Profile
from bortengine.profiling.runners import ValuePool, random_encoder
from bortengine.profiling.target import Target
from bortengine.profiling.timing import BlockStats, Settings, best_block, is_noisy, measure_with_retries
from bortengine.profiling.workload import Workload
from bortengine.progress import Progress
from bortengine.search_space import SearchSpace, architecture_dims

TARGETS = {"median_abs_error": 0.07, "worst_abs_error": 0.20, "kendall_tau": 0.9}
# Forwards are timed longer than single ops, and a block wider than 4 % counts as disturbed: forwards of a quiet
# machine repeat within ~1-2 % (IQR / median).
VALIDATION = Settings(blocks=3, warmup_s=0.3, min_warmup=2, budget_s=0.6, min_repeats=10, max_repeats=1000,
                      retries=2, retry_pause_s=1.0, retry_budget_s=120.0, max_spread=0.04)
VALIDATION_QUICK = replace(VALIDATION, blocks=1, warmup_s=0.1, min_warmup=1, budget_s=0.25, min_repeats=5,
                           max_repeats=200, retries=1, retry_pause_s=0.5, retry_budget_s=10.0)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation of two equally long sequences (ties handled), O(n²)."""
    n = len(a)
    if n != len(b) or n < 2:
        raise ValueError("kendall_tau needs two sequences of the same length >= 2")
    concordant = discordant = ties_a = ties_b = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denom if denom else 0.0


# ================================================================================================ the report
@dataclass
class ValidationRow:
    arch: tuple[int, int, int, int]
    predicted_ms: float
    measured_ms: float
    spread: float         # IQR / median of the measured block
    blocks_ms: list[float]
    noisy: bool
    predicted_parts: dict[str, float] = field(default_factory=dict)
    traced_parts: dict[str, float] = field(default_factory=dict)  # the encoder's own per-op trace, when it has one

    @property
    def error(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    def to_dict(self) -> dict[str, Any]:
        return {"arch": list(self.arch), "predicted_ms": round(self.predicted_ms, 4),
                "measured_ms": round(self.measured_ms, 4), "error": round(self.error, 4),
                "spread": round(self.spread, 4), "blocks_ms": [round(x, 4) for x in self.blocks_ms],
                "noisy": self.noisy,
                "predicted_parts_ms": {k: round(v, 4) for k, v in self.predicted_parts.items()},
                "traced_parts_ms": {k: round(v, 4) for k, v in self.traced_parts.items()}}


@dataclass
class ValidationReport:
    """Predicted against measured forward latency of held-out architectures."""

    space: str
    workload: Workload
    target: Target
    rows: list[ValidationRow]
    conditions: dict[str, Any]
    seed: int
    mode: str
    profile_path: Optional[str] = None

    @property
    def abs_errors(self) -> list[float]:
        return [abs(r.error) for r in self.rows]

    @property
    def median_abs_error(self) -> float:
        return statistics.median(self.abs_errors)

    @property
    def worst_abs_error(self) -> float:
        return max(self.abs_errors)

    @property
    def mean_error(self) -> float:
        return statistics.fmean(r.error for r in self.rows)

    @property
    def kendall_tau(self) -> float:
        return kendall_tau([r.predicted_ms for r in self.rows], [r.measured_ms for r in self.rows])

    def passes(self) -> dict[str, bool]:
        return {"median_abs_error": self.median_abs_error <= TARGETS["median_abs_error"],
                "worst_abs_error": self.worst_abs_error <= TARGETS["worst_abs_error"],
                "kendall_tau": self.kendall_tau >= TARGETS["kendall_tau"]}

    def errors(self) -> dict[str, float]:
        return {"median_abs_error": round(self.median_abs_error, 4), "worst_abs_error": round(self.worst_abs_error, 4),
                "mean_error": round(self.mean_error, 4), "kendall_tau": round(self.kendall_tau, 4)}

    def against_fastest_blocks(self) -> "ValidationReport":
        """The same report with each architecture's fastest block as its measurement: a diagnostic, not the
        targets' measure (that is the least-disturbed block). Slowdowns of the host only slow a block, and a block
        slowed throughout is tight and passes as undisturbed when the host probe misses it; where the two reports
        differ much, the host's noise, not the model, made the difference."""
        return replace(self, rows=[replace(r, measured_ms=min(r.blocks_ms, default=r.measured_ms)) for r in self.rows])

    def summary(self) -> dict[str, Any]:
        return {"n": len(self.rows), **self.errors(), "targets": TARGETS, "passes": self.passes(),
                "fastest_blocks": self.against_fastest_blocks().errors()}

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "workload": asdict(self.workload), "target": self.target.to_dict(),
                "profile": self.profile_path, "seed": self.seed, "mode": self.mode, "conditions": self.conditions,
                "summary": self.summary(), "rows": [r.to_dict() for r in self.rows]}

    def table(self) -> str:
        lines = [f"validation: {len(self.rows)} architectures of the {self.space} space (seed {self.seed}), "
                 f"{self.workload}", f"target: {self.target.describe(self.workload.dtype)}",
                 f"{'architecture ⟨D,A,H,I⟩':<24} {'predicted ms':>13} {'measured ms':>12} {'error':>8} "
                 f"{'IQR %':>6}  flags"]
        for r in sorted(self.rows, key=lambda r: r.measured_ms):
            arch = "⟨{}, {}, {}, {}⟩".format(*r.arch)
            lines.append(f"{arch:<24} {r.predicted_ms:13.3f} {r.measured_ms:12.3f} {100 * r.error:+7.1f}% "
                         f"{100 * r.spread:6.1f}  {'NOISY' if r.noisy else ''}")
        ok = self.passes()
        mark = {True: "ok", False: "MISSED"}
        lines += [
            f"median |error| {100 * self.median_abs_error:.1f}% (target <= 7%: {mark[ok['median_abs_error']]}), "
            f"worst {100 * self.worst_abs_error:.1f}% (target <= 20%: {mark[ok['worst_abs_error']]}), "
            f"mean error {100 * self.mean_error:+.1f}%",
            f"Kendall's tau {self.kendall_tau:.3f} (target >= 0.9: {mark[ok['kendall_tau']]})",
            *self._fastest_line(),
            f"conditions: load average {self.conditions.get('loadavg_start')}, other processes used "
            f"{self.conditions.get('foreign_cpus', 0):.2f} CPU(s), steal {self.conditions.get('steal_cpus', 0):.2f}, "
            f"{self.conditions.get('seconds', 0):.0f} s"
            + (f"; host probe slowed up to {self.conditions['host_slowdown_max']:.2f}x, "
               f"{self.conditions.get('host_disturbed_blocks', 0)} block(s) counted as disturbed for it"
               if "host_slowdown_max" in self.conditions else "")]
        return "\n".join(lines)

    def _fastest_line(self) -> list[str]:
        """The errors against each architecture's fastest block, when some architecture had a faster block than
        the one the targets take."""
        f = self.against_fastest_blocks()
        if all(fast.measured_ms == taken.measured_ms for fast, taken in zip(f.rows, self.rows)):
            return []
        return [f"against each architecture's fastest block instead (the host's slowdowns only slow a block; not the "
                f"targets' measure): median |error| {100 * f.median_abs_error:.1f}%, worst "
                f"{100 * f.worst_abs_error:.1f}%, mean error {100 * f.mean_error:+.1f}%, Kendall's tau "
                f"{f.kendall_tau:.3f}"]

    def plot(self, path: str | os.PathLike) -> Path:
        """Predicted against measured latency (log-log), with y = x and the ±7% band. Needs matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ProfileError("the plot needs matplotlib: pip install 'bortengine[profile]' (or matplotlib)") \
                from None
        meas = [r.measured_ms for r in self.rows]
        pred = [r.predicted_ms for r in self.rows]
        lo, hi = min(meas + pred) / 1.3, max(meas + pred) * 1.3
        fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=110)
        ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="predicted = measured")
        ax.fill_between([lo, hi], [lo * 0.93, hi * 0.93], [lo * 1.07, hi * 1.07], color="tab:green", alpha=0.15,
                        label="±7%")
        ax.plot([lo, hi], [lo * 0.8, hi * 0.8], color="tab:red", lw=0.8, ls=":")
        ax.plot([lo, hi], [lo * 1.2, hi * 1.2], color="tab:red", lw=0.8, ls=":", label="±20%")
        ax.scatter(meas, pred, color="tab:blue", zorder=3, s=22, label="held-out architectures")
        for r in self.rows:
            ax.annotate("{},{},{},{}".format(*r.arch), (r.measured_ms, r.predicted_ms), fontsize=6,
                        xytext=(3, -7), textcoords="offset points", color="0.35")
        _log_axes(ax, lo, hi)
        ax.set_xlabel("measured forward latency (ms)")
        ax.set_ylabel("predicted forward latency (ms)")
        ax.set_title(f"{self.space} space, {self.workload.batch_size}×{self.workload.seq_len} tokens, "
                     f"{self.workload.num_threads} thread(s), {self.conditions.get('clock', 'wall')} clock, "
                     f"{len(self.rows)} held-out architectures\nmedian |err| {100 * self.median_abs_error:.1f}%, "
                     f"worst {100 * self.worst_abs_error:.1f}%, Kendall τ {self.kendall_tau:.3f}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        return save_figure(fig, path, dpi=fig.dpi)


def _log_axes(ax: Any, lo: float, hi: float) -> None:
    """Both axes logarithmic over [lo, hi], with plain numbers at 1, 2, 5 x 10^k instead of crowded 10^k minor
    labels."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(lambda v, _: f"{v:g}")
        axis.set_minor_locator(NullLocator())
        axis.set_minor_formatter(NullFormatter())


# ================================================================================================ measuring
def validate(profile: Profile, space: SearchSpace | str = "bort", workload: Optional[Workload] = None, *,
             n: int = 12, seed: int = 0, quick: bool = False, progress: bool = True,
             architectures: Optional[Sequence[Any]] = None, retry_budget_s: Optional[float] = None
             ) -> ValidationReport:
    """Measure the engine's forward on n architectures sampled (seeded) from the space and compare with the
    profile's predictions. The model is built from single-op timings and tiny calibration encoders outside the
    space, so none of these architectures was used to build it.

    Each architecture's encoder is built with random weights (no torch), warmed up and timed like the ops: in
    `blocks` passes over all architectures, keeping the least-disturbed block's median. retry_budget_s: at most
    this long on retries of disturbed blocks (default the settings'; a caller with a time budget gives less).
    """
    space = SearchSpace.resolve(space)
    workload = workload or Workload(num_threads=available_cpus())
    cpus = available_cpus()
    if workload.num_threads > cpus:
        raise ProfileError(f"num_threads={workload.num_threads} is more than the {cpus} CPU(s) this process may "
                           f"run on; use --threads {cpus} or fewer")
    model = profile.model(workload)  # raises if the workload is not covered
    archs = _architectures(space, workload, n, seed, architectures)
    extrapolated = sum(bool(model.predict(a).extrapolated) for a in archs)
    if extrapolated:   # the errors would then judge the extrapolation, and nothing said so
        warnings.warn(f"{extrapolated} of the {len(archs)} architectures have op shapes the profile has no "
                      f"measurements near (it was not measured for the {space.name} space): their predictions are "
                      f"extrapolated, and their errors say how far that goes, not how good the profile is. For "
                      f"the profile's own errors, first: {workload.command()} --space {space.name}"
                      + (f" --out {profile.path}" if profile.path else ""), RuntimeWarning, stacklevel=2)
    settings = replace(VALIDATION_QUICK if quick else VALIDATION,
                       clock=profile.for_workload(workload).clock)  # measured as the profile was
    if retry_budget_s is not None:
        settings = replace(settings, retry_budget_s=min(settings.retry_budget_s, retry_budget_s))
    if profile.target.isa not in core().available_isas():
        raise ProfileError(f"the profile's kernel path {profile.target.isa!r} cannot run here; validate on the "
                           f"profiled machine")
    run = ValidationRun(space, workload, profile.target.isa, settings, cpus, archs, model, progress)
    run.measure()
    return ValidationReport(space=space.name, workload=workload, target=profile.target, rows=run.rows(model),
                            conditions=run.conditions(), seed=seed, mode="quick" if quick else "full",
                            profile_path=str(profile.path) if profile.path else None)


def _architectures(space: SearchSpace, workload: Workload, n: int, seed: int,
                   architectures: Optional[Sequence[Any]]) -> list[Any]:
    """The architectures given, else n sampled from the space with the seed; at least 2, each long enough."""
    archs = list(architectures) if architectures is not None else space.sample(n, seed)
    if len(archs) < 2:
        raise ProfileError(f"validation needs at least 2 architectures, got {len(archs)}")
    for a in archs:
        if workload.seq_len > getattr(a, "max_positions", space.max_positions):
            raise ProfileError(f"workload sequences of {workload.seq_len} tokens exceed max_positions of {a}")
    return archs


def traced_parts(enc: Any, forward: Callable[[], Any], runs: int = 5) -> dict[str, float]:
    """Median per-op-kind milliseconds from the encoder's own trace (Encoder.trace / last_trace), for diagnosing
    which term of the model is off; {} when the core has no trace."""
    if not hasattr(enc, "trace"):
        return {}
    try:
        return traced_forwards(enc, forward, runs)[0]
    except (AttributeError, TypeError, ValueError):
        return {}


def block_seconds(settings: Settings, model: LatencyModel, arch: Any) -> float:
    """One block of one architecture's timing: building its encoder (about half a second), the warm-up, and the
    timed calls (the settings' budget, or their minimum count at the predicted latency when that is longer)."""
    timed = max(settings.budget_s, settings.min_repeats * model.predict(arch).total_ms * 1e-3)
    return 0.5 + settings.warmup_s + timed


def validation_seconds(model: LatencyModel, architectures: Sequence[Any], quick: bool = False) -> float:
    """How long validate() is expected to take on these architectures (retries of disturbed blocks not counted:
    they happen only on a busy machine, within the settings' retry budget)."""
    settings = VALIDATION_QUICK if quick else VALIDATION
    return settings.blocks * sum(block_seconds(settings, model, a) for a in architectures)


class ValidationRun:
    """The measuring part of one validate() call: every architecture's forward, block by block, with the encoder's
    trace of the first block, and the run's conditions."""

    def __init__(self, space: SearchSpace, workload: Workload, isa: str, settings: Settings, cpus: int,
                 archs: list[Any], model: LatencyModel, progress: bool):
        self.space, self.workload, self.isa, self.settings, self.cpus = space, workload, isa, settings, cpus
        self.archs = archs
        self.pool = ValuePool(seed=1)
        self.tables: dict[tuple[int, int], Any] = {}  # word tables, one per (V, H): the encoders reference them
        self.costs = [block_seconds(settings, model, a) for a in archs]
        self.bar = Progress(self.costs * settings.blocks, f"validate {space.name} {workload.key}", enabled=progress)
        self.meter = CpuMeter()
        self.blocks: list[list[BlockStats]] = [[] for _ in archs]
        self.traces: dict[int, dict[str, float]] = {}
        self.retry_clock = [0.0]
        warn_if_busy(workload, cpus, stacklevel=3)
        self.probe = HostProbe(workload.num_threads, isa)
        self.cond: dict[str, Any] = {}

    def measure(self) -> None:
        """Every architecture in each pass, then a last try for those whose every block was disturbed."""
        for b in range(self.settings.blocks):
            for k, arch in enumerate(self.archs):
                self.measure_arch(k, arch, trace=b == 0)
        for k, arch in enumerate(self.archs):
            if all(x.disturbed for x in self.blocks[k]) and self.retry_clock[0] < self.settings.retry_budget_s:
                self.bar.extend([self.costs[k]])   # a step more than planned: the count stays within the total
                self.measure_arch(k, arch, trace=False)
        self.bar.show("done", final=True)
        self.cond = self.meter.result()
        note = noise_note(self.cond, self.workload.num_threads, self.cpus)
        if note:
            warnings.warn(note, RuntimeWarning, stacklevel=3)

    def measure_arch(self, k: int, arch: Any, trace: bool) -> None:
        """Blocks of architecture k's forward (and its trace). Shapes: ids [B, T] into a word table [V, H]."""
        D, A, H, I = architecture_dims(arch)
        V = getattr(arch, "vocab_size", self.space.vocab_size)
        head = getattr(arch, "head", self.space.head)
        B, T, threads = self.workload.batch_size, self.workload.seq_len, self.workload.num_threads
        if (V, H) not in self.tables:
            self.tables[(V, H)] = self.pool.array((V, H), 0.02).copy()
        name = "⟨{}, {}, {}, {}⟩".format(D, A, H, I)
        self.bar.show(name)
        positions = max(T, getattr(arch, "max_positions", 512))
        enc, embedding_tables = random_encoder(self.pool, D, A, H, I, V, positions, head, threads, self.isa,
                                               word=self.tables[(V, H)], dtype=self.workload.dtype)
        ids = self.pool.ids(B * T, V, seed=k).reshape(B, T)
        pooler = head != "none"
        self.blocks[k].extend(measure_with_retries(lambda: enc.forward(ids, None, None, pooler), self.settings,
                                                   threads, self.cpus, self.retry_clock, self.probe))
        if trace:
            self.traces[k] = traced_parts(enc, lambda: enc.forward(ids, None, None, pooler))
        self.bar.step(name)

    def rows(self, model: LatencyModel) -> list[ValidationRow]:
        """Predicted against measured (the least-disturbed block) per architecture."""
        rows = []
        for k, (arch, bl) in enumerate(zip(self.archs, self.blocks)):
            best = best_block(bl)
            pred = model.predict(arch)
            rows.append(ValidationRow(arch=architecture_dims(arch), predicted_ms=pred.total_ms,
                                      measured_ms=best.median_ms, spread=best.spread,
                                      blocks_ms=[x.median_ms for x in bl], noisy=is_noisy(best),
                                      predicted_parts=pred.parts, traced_parts=self.traces.get(k, {})))
        return rows

    def conditions(self) -> dict[str, Any]:
        """The run's conditions: other processes' CPU use, the clock, and what the host probe saw."""
        cond = {**self.cond, "clock": self.settings.clock}
        slow = [x.host_slowdown for bl in self.blocks for x in bl if x.host_slowdown is not None]
        if slow:
            cond["host_slowdown_max"] = max(slow)
            cond["host_disturbed_blocks"] = sum(1 for x in slow if x > self.probe.tolerance)
        return cond
