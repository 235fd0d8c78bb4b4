"""profile(): measure every op a search space needs under a workload on this CPU, and save the profile.

For a search space and a workload (batch B, tokens T, threads, dtype) the work list holds every kernel call a
forward of any candidate makes (ops.required_ops) and the calibration calls (ops.calibration_ops). Each op is
timed through the single-op bindings of bortengine._core with the workload's thread count, in `blocks` passes over
the whole list (so a burst of load from another process hits one block of an op, not all). The file is rewritten
after every op, so Ctrl-C keeps what was measured and the same call resumes.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional

from bortengine.engine import available_cpus, core
from bortengine.profiling.calibration import calibrate, calibration_note
from bortengine.profiling.disturbance import CpuMeter, HostProbe, noise_note, warn_if_busy
from bortengine.profiling.errors import (ProfileError, ProfileInterrupted, ProfileMismatchWarning, ProfilePaused,
                                         ProfileVersionError)
from bortengine.profiling.measurements import Measurement, WorkloadProfile
from bortengine.profiling.ops import (WEIGHT_BYTES, OpSpec, calibration_ops, gemm_weight_bytes, layer_weight_bytes,
                                      position_bias_ops, required_ops, residency_ops)
from bortengine.profiling.profile_file import Profile, profile_path_for, resolve_space
from bortengine.profiling.runners import ValuePool, make_runner, rotation_bytes, weight_copies
from bortengine.profiling.cpu_probe import REPROBE_EVERY_S, reference_gflops, reprobe
from bortengine.profiling.target import Target
from bortengine.profiling.timing import Settings, check_clock, measure_with_retries
from bortengine.profiling.workload import Workload
from bortengine.progress import Progress
from bortengine.search_space import SearchSpace

Roles = dict[OpSpec, tuple[str, ...]]


def profile(space: SearchSpace | str = "bort", workload: Optional[Workload] = None, *, quick: bool = False,
            out: Optional[str | os.PathLike] = None, resume: bool = True, isa: Optional[str] = None,
            progress: bool = True, settings: Optional[Settings] = None, clock: Optional[str] = None,
            stop_after_s: Optional[float] = None) -> Profile:
    """Measure every op the space needs under the workload on this CPU; save (and return) the profile.

    The file (out, default: this CPU's file in the cache directory) is updated after every op, so Ctrl-C
    (ProfileInterrupted, a KeyboardInterrupt) keeps what was measured, and calling again resumes. Measurements
    already in the file are kept, except that a full run re-measures ops a quick run took. clock: "wall"
    (default) or "cpu" (one thread only, immune to other processes taking the CPU; see timing.CLOCKS).
    stop_after_s: stop after the op under way once this many seconds have passed, the file saved, and raise
    ProfilePaused (how much is measured): a fleet's node measures in such parts, each saved by the driver.
    """
    space = resolve_space(space, out, isa)
    if workload is not None and not isinstance(workload, Workload):
        raise ProfileError(f"workload must be a Workload, e.g. Workload(batch_size=1, seq_len=32, "
                           f"num_threads={available_cpus()}), got {type(workload).__name__} {workload!r}")
    workload = workload or Workload(num_threads=available_cpus())
    if workload.seq_len > space.max_positions:   # no model of the space reads it: minutes of timing nothing real
        raise ProfileError(f"seq_len {workload.seq_len} is more than the {space.max_positions} positions the "
                           f"{space.name} space's models have; profile at --seq {space.max_positions} or less")
    cpus = available_cpus()
    settings = _settings(workload, cpus, isa, quick, settings, clock)
    target = Target.current(isa)
    path = Path(out) if out else profile_path_for(target)
    prof = _open_profile(path, target, workload)
    wp = _workload_entry(prof, workload, settings, resume, space.name)
    prof.measuring = {workload.key}
    prof.record_space(space)
    roles = _wanted_ops(space, workload, rotation_bytes(prof.target, settings))
    _reuse_measurements(wp, roles, settings)
    todo = _work_list(wp, roles, settings)
    wp.refresh(settings)
    total = len(roles) * settings.blocks
    # a resumed (or repeated) run says what it keeps and measures, with a bar or not (a fleet's parts resume each
    # other: their driver says how far they are)
    if total - len(todo) and stop_after_s is None:
        print(f"resuming {path}: {total - len(todo)} of {total} measurements kept, {len(todo)} to take (an op "
              f"whose blocks were all disturbed by other processes is measured again)", file=sys.stderr, flush=True)
    if not todo:
        if not wp.complete:  # everything measured but not yet calibrated (a run interrupted right at the end)
            wp.calibration = calibrate(wp)
        prof.save(path)
        return prof
    if not (wp.complete and all(spec.key in wp.ops for spec in roles)):
        # (a complete workload whose disturbed blocks are measured again stays complete, its calibration the old one
        # until this run finishes: Ctrl-C in a repeated run left a finished profile "incomplete", unusable)
        wp.calibration = None
    warn_if_busy(workload, cpus)
    run = ProfileRun(prof, wp, roles, todo, settings, cpus, f"profile {space.name} {workload.key}", progress,
                     None if stop_after_s is None else time.monotonic() + stop_after_s)
    run.measure()
    run.finish()
    return prof


# ================================================================================================ the steps
def _settings(workload: Workload, cpus: int, isa: Optional[str], quick: bool, settings: Optional[Settings],
              clock: Optional[str]) -> Settings:
    """The settings of this run, once the workload, kernel path and clock are known to fit this machine."""
    if workload.num_threads > cpus:
        raise ProfileError(f"num_threads={workload.num_threads} is more than the {cpus} CPU(s) this process may "
                           f"run on: threads would share cores and the timings would describe nothing real. Use "
                           f"--threads {cpus} or fewer")
    if isa is not None and isa not in core().available_isas():
        raise ProfileError(f"isa {isa!r} cannot run here; this CPU and build offer {core().available_isas()}")
    settings = settings or (Settings.quick() if quick else Settings())
    if clock is not None:
        settings = replace(settings, clock=clock)
    check_clock(settings.clock, workload)
    return settings


def _open_profile(path: Path, target: Target, workload: Workload) -> Profile:
    """The profile in `path` to add to (when it exists, of this target), else a new one; without resume only the
    workload starts over (_workload_entry): the file's other workloads are this target's and are kept. A profile
    from before exact CPU targets, or of an older format, is measured again from scratch: nothing says its numbers
    are this CPU's; one a later bortengine wrote is refused (ProfileVersionError), never overwritten."""
    if not path.exists():
        return Profile(target, path=path)
    try:
        prof = Profile.load(path)
    except ProfileVersionError as e:
        if e.newer:
            raise
        warnings.warn(f"{path} is of an older profile format (version {e.version!r}) that this bortengine cannot "
                      f"read: it is measured again and replaced", ProfileMismatchWarning, stacklevel=3)
        return Profile(target, path=path)
    if not prof.target.checkable:
        warnings.warn(f"{path} was written before bortengine recorded exact CPU targets: whether its measurements "
                      f"are this CPU's cannot be checked, so they are measured again", ProfileMismatchWarning,
                      stacklevel=3)
        return Profile(target, path=path)
    found = target.confirmed_against(prof.target)
    diffs = prof.target.differences(found)
    if prof.target.apart_by_load_alone(found) and prof.target.engine_version == found.engine_version:
        # a busy core now or when it was measured (or another clock): the file's best rate is kept, and the timings
        # are the profiler's to guard (disturbed blocks are measured again)
        warnings.warn(f"{path}: this machine's calibration probe read {found.probe_gflops:.0f} GFLOP/s against the "
                      f"profile's {prof.target.probe_gflops:.0f}, its CPU otherwise the same: a busy core, so the "
                      f"profile is added to; if this is another CPU, profile into another --out",
                      ProfileMismatchWarning, stacklevel=3)
        target = replace(target, probe_gflops=max(prof.target.probe_gflops, found.probe_gflops))
    elif diffs:
        raise ProfileError(f"{path} is a profile of another target ({'; '.join(diffs)}); measurements of two "
                           f"targets cannot share a file: pass another --out")
    if prof.target.core_build != target.core_build and workload.key in prof.workloads:
        warnings.warn(f"{path} was measured with another build of the native core ({prof.target.core_build}); "
                      f"its measurements are reused: pass --fresh (resume=False) if the kernels changed",
                      ProfileMismatchWarning, stacklevel=3)
    prof.target = target
    return prof


def _workload_entry(prof: Profile, workload: Workload, settings: Settings, resume: bool, space: str
                    ) -> WorkloadProfile:
    """The workload's measurements to add to: those in the profile, unless starting over (resume=False) or they
    were taken with another clock."""
    wp = prof.workloads.get(workload.key)
    if wp is not None and resume and wp.clock != settings.clock:
        warnings.warn(f"{prof.path} holds {wp.workload} measured with the {wp.clock} clock; re-measuring it with the "
                      f"{settings.clock} clock (the two do not mix)", RuntimeWarning, stacklevel=3)
        wp = None
    if wp is None or not resume:
        wp = prof.workloads[workload.key] = WorkloadProfile(workload, mode=settings.mode, blocks=settings.blocks,
                                                            clock=settings.clock)
    if space not in wp.spaces:
        wp.spaces.append(space)
    return wp


def _wanted_ops(space: SearchSpace, workload: Workload, rotation: int) -> Roles:
    """Every op to measure, calibration first, then the residency probe, the position bias's pair, with all the roles
    it plays."""
    roles: Roles = {}
    wanted = (calibration_ops(workload) + residency_ops(space, workload, rotation) + position_bias_ops(workload)
              + required_ops(space, workload))
    for spec, r in wanted:
        roles[spec] = tuple(dict.fromkeys(roles.get(spec, ()) + r))
    return roles


def _reuse_measurements(wp: WorkloadProfile, roles: Roles, settings: Settings) -> None:
    """A full run re-measures what a quick run took; a quick run reuses full measurements. Kept ones take on the
    roles they play now too."""
    for spec, r in roles.items():
        m = wp.ops.get(spec.key)
        if m is None:
            continue
        if settings.mode == "full" and m.mode != "full":
            del wp.ops[spec.key]
        else:
            m.roles = tuple(dict.fromkeys(m.roles + r))


def _work_list(wp: WorkloadProfile, roles: Roles, settings: Settings) -> list[tuple[int, OpSpec]]:
    """Block b of every op that has fewer than b+1 clean blocks, pass by pass (a resumed run also re-measures ops
    that only have disturbed blocks)."""
    return [(b, spec) for b in range(settings.blocks) for spec in roles if _kept_blocks(wp, spec, settings) <= b]


def _kept_blocks(wp: WorkloadProfile, spec: OpSpec, settings: Settings) -> int:
    """Blocks of the op that a run with these settings keeps: its clean ones (a measurement of the other mode,
    reused as _reuse_measurements says, counts as complete)."""
    m = wp.ops.get(spec.key)
    return 0 if m is None else m.clean_blocks if m.mode == settings.mode else settings.blocks


def estimate_cost(spec: OpSpec, w: Workload, s: Settings, rotation: int) -> float:
    """A-priori seconds to measure one block of an op (only ratios matter: the progress bar rescales)."""
    call, setup = spec.flops(w) / (40e9 * w.num_threads) + 20e-6, 0.0
    if spec.kind == "forward" and spec.intermediate:  # a residency probe's encoder: built, then its layers run
        weights = layer_weight_bytes(spec.hidden, spec.intermediate, w) * spec.layers
        call = 2 * w.tokens * weights / WEIGHT_BYTES[w.dtype] / (40e9 * w.num_threads)
        setup = 3 * weights / 1e9
    elif spec.kind == "forward":
        call = 50e-6 * spec.layers
    elif spec.kind == "gemm":
        setup = weight_copies(spec, w, rotation) * (gemm_weight_bytes(spec, w) + 4) * spec.K * spec.N / 2e9
    elif spec.kind == "embeddings":
        setup = 4 * spec.vocab * spec.hidden / 1e9
    return setup + max(s.warmup_s, s.min_warmup * call) + max(s.budget_s, s.min_repeats * call)


class ProfileRun:
    """The measuring part of one profile() call: the work list block by block, the profile saved after every op,
    the run's conditions and the calibration at the end."""

    def __init__(self, prof: Profile, wp: WorkloadProfile, roles: Roles, todo: list[tuple[int, OpSpec]],
                 settings: Settings, cpus: int, label: str, progress: bool, deadline: Optional[float] = None):
        self.prof, self.wp, self.roles, self.todo, self.settings, self.cpus = prof, wp, roles, todo, settings, cpus
        self.deadline = deadline      # time.monotonic() after which the run pauses (profile's stop_after_s)
        self.workload = wp.workload
        self.rotation = rotation_bytes(prof.target, settings)
        self.meter = CpuMeter()
        self.bar = Progress([self.cost(spec) for _, spec in todo], label, enabled=progress)
        self.pool = ValuePool()
        self.probe = HostProbe(self.workload.num_threads, prof.target.isa) if settings.host_probe else None
        self.retry_clock = [0.0]
        self.probed_at = time.monotonic()

    def cost(self, spec: OpSpec) -> float:
        return estimate_cost(spec, self.workload, self.settings, self.rotation)

    def measure(self) -> None:
        """Every block of the work list, then a last try for ops whose every block was disturbed. Ctrl-C saves
        what was measured and raises ProfileInterrupted; the deadline, ProfilePaused."""
        bar = self.bar
        try:
            for b, spec in self.todo:
                bar.show(spec.key)
                m = self.wp.ops.get(spec.key)
                if m is None or m.clean_blocks <= b:  # (retries of a disturbed block may already have given it)
                    self.measure_op(spec)
                bar.step(spec.key)
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self.wp.conditions.append({**self.meter.result(), "paused": True})
                    self.prof.save()
                    raise ProfilePaused(self.prof.path, *self.saved())
            repairs = [x for x in self.roles if self.wp.ops[x.key].clean_blocks == 0]
            if repairs and self.retry_clock[0] < self.settings.retry_budget_s:
                bar.extend([self.cost(x) for x in repairs])
                for spec in repairs:
                    bar.show(spec.key + " (again: disturbed)")
                    self.measure_op(spec)
                    bar.step(spec.key)
        except KeyboardInterrupt:
            cond = self.meter.result()
            cond.update(interrupted=True)
            self.wp.conditions.append(cond)
            self.prof.save()
            if bar.enabled:
                sys.stderr.write("\n")
            raise ProfileInterrupted(self.prof.path, *self.saved()) from None
        bar.show("done", final=True)

    def saved(self) -> tuple[int, int]:
        """(measurements a resume keeps, of how many): the file's count, not this run's (a resumed run's work list
        is what was left); a block disturbed by other processes is measured again."""
        blocks = self.settings.blocks
        return (sum(min(_kept_blocks(self.wp, spec, self.settings), blocks) for spec in self.roles),
                len(self.roles) * blocks)

    def measure_op(self, spec: OpSpec) -> None:
        """One block of the op (and its retries while disturbed), added to its measurement; save the profile."""
        s, threads = self.settings, self.workload.num_threads
        run, copies = make_runner(spec, self.workload, self.pool, self.prof.target.isa, self.rotation)
        # warm-up runs every weight copy at least once: a copy's first use pays for its packing's aftermath (pages,
        # TLB entries) that a forward never pays, and quick blocks are too short to average that away
        block_settings = replace(s, min_warmup=max(s.min_warmup, copies))
        blocks = measure_with_retries(run, block_settings, threads, self.cpus, self.retry_clock, self.probe)
        del run
        m = self.wp.ops.get(spec.key)
        if m is None:
            m = self.wp.ops[spec.key] = Measurement(spec, mode=s.mode, roles=self.roles[spec], copies=copies)
        m.blocks.extend(blocks)
        m.copies = copies
        if time.monotonic() - self.probed_at >= REPROBE_EVERY_S:
            reprobe(self.prof.target.isa)       # the profile stores the best one (finish): load only slows it
            self.probed_at = time.monotonic()
        self.prof.save()

    def finish(self) -> None:
        """The run's conditions, the calibration, their warnings (at profile()'s caller); save the profile."""
        wp, threads = self.wp, self.workload.num_threads
        wp.refresh(self.settings)
        cond = self.meter.result()
        cond.update(ops=len(self.todo), mode=self.settings.mode)
        wp.conditions.append(cond)
        wp.conditions = wp.conditions[-5:]
        note = noise_note(cond, threads, self.cpus)
        if note:
            warnings.warn(note, RuntimeWarning, stacklevel=3)
        wp.calibration = calibrate(wp)
        note = calibration_note(wp.calibration)
        if note:
            warnings.warn(note, RuntimeWarning, stacklevel=3)
        # the probe again after the run: the profile keeps the best rate this process saw (load only slows it)
        target = self.prof.target
        best = max(target.probe_gflops or 0.0, reference_gflops(target.isa))
        self.prof.target = replace(target, probe_gflops=round(best, 2))
        self.prof.save()
        self.prof.forget_models()
