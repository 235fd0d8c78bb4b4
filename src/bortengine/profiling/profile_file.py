"""A profile: the measurements of one CPU target, per workload, saved as human-readable JSON (one file per
target, in the cache directory or shipped with the package), and the predictions read from it
(predict_latency)."""
from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from bortengine.engine import available_cpus
from bortengine.files import atomic_write_json, cache_dir, directory_lock, read_json
from bortengine.profiling.calibration import calibration_note
from bortengine.profiling.disturbance import now
from bortengine.profiling.errors import ProfileError, ProfileMismatchWarning, ProfileVersionError
from bortengine.profiling.latency import EXTRAPOLATION_NOTE, LatencyModel, Prediction
from bortengine.profiling.measurements import WorkloadProfile, op_order, read_keyed
from bortengine.profiling.target import Target, TargetMatch
from bortengine.profiling.workload import Workload
from bortengine.search_space import SPACES, SearchSpace, SearchSpaceError, architecture_dims

FORMAT = "bortengine-profile"
FORMAT_VERSION = 1
PACKAGE_PROFILES = Path(__file__).resolve().parent / "profiles"


class Profile:
    """The measurements of one CPU target, per workload. Saved as human-readable JSON.

    Build with profile(), read with load_profile() or Profile.load(), show with table().
    """

    def __init__(self, target: Target, workloads: Optional[dict[str, WorkloadProfile]] = None,
                 path: Optional[Path] = None, created: Optional[str] = None,
                 spaces: Optional[dict[str, dict[str, Any]]] = None):
        self.target = target
        self.workloads: dict[str, WorkloadProfile] = workloads or {}
        # the spaces measured that are not shipped ones (a file's, a pipeline's "below-D-A-H-I"), by name, so that
        # the commands this profile prints (`--space NAME`) find them again (resolve_space)
        self.spaces: dict[str, dict[str, Any]] = spaces or {}
        self.path = path
        self.created = created or now()
        self._models: dict[str, LatencyModel] = {}
        # the workloads a profile() run is measuring into this object: a save takes the file's copy of every other
        # one (None: no run; a save then takes in only the workloads this object lacks)
        self.measuring: Optional[set[str]] = None

    def __repr__(self) -> str:
        return f"Profile({self.target.signature}, workloads={list(self.workloads)}, path={self.path})"

    # -- coverage ---------------------------------------------------------------------------------------------
    def covers(self, workload: Workload) -> bool:
        wp = self.workloads.get(workload.key)
        return wp is not None and wp.complete

    def for_workload(self, workload: Workload, space: Optional[str] = None) -> WorkloadProfile:
        """The measurements of workload; ProfileError, saying the command that measures them (for `space`, the
        search space of the caller, when given), when the profile has none or an interrupted run's part."""
        wp = self.workloads.get(workload.key)
        if wp is None:
            have = ", ".join(str(self.workloads[k].workload) for k in self.workloads) or "none"
            raise ProfileError(f"the profile {self._where()} does not cover the workload {workload} (it has: "
                               f"{have}); measure it with: {self.command_for(workload, space, elsewhere=True)}")
        if not wp.complete:
            raise ProfileError(f"the profile {self._where()} of workload {workload} is incomplete (interrupted: "
                               f"{len(wp.ops)} ops measured); finish it with: "
                               f"{self.command_for(workload, space, elsewhere=True)}")
        return wp

    def model(self, workload: Workload, space: Optional[str] = None) -> LatencyModel:
        if workload.key not in self._models:
            self._models[workload.key] = LatencyModel(self.for_workload(workload, space), self.target,
                                                      remedy=self.command_for(workload, space))
        return self._models[workload.key]

    def record_space(self, space: SearchSpace) -> None:
        """Keep the definition of a space that is not a shipped one, for `bortengine profile --space NAME` later."""
        if space.name.lower() not in SPACES:
            self.spaces[space.name] = space.to_dict()

    def forget_models(self) -> None:
        """Drop the latency models built so far (after the measurements changed)."""
        self._models.clear()

    def _where(self) -> str:
        return str(self.path) if self.path else f"of {self.target.signature}"

    def command_for(self, workload: Workload, space: Optional[str] = None, elsewhere: bool = False) -> str:
        """The command that measures workload into this profile: for `space` (the caller's search space), else the
        space the profile measured, and into its file unless that is where `bortengine profile` writes by default
        (or a profile shipped in the package, which is not rewritten: the new one goes to the cache, which is read
        first). Said by every error that asks for a measurement: the bare command would profile the default space
        into the cache, and the same error would come back. elsewhere: also say where it must run when this machine
        cannot measure it (a profile of another CPU target: on a machine of it, or over a Ray cluster holding one;
        more threads than this process has CPUs)."""
        wp = self.workloads.get(workload.key)
        spaces = [space] if space else list(wp.spaces) if wp is not None and wp.spaces else [
            name for other in self.workloads.values() for name in other.spaces]
        command = workload.command() + (f" --space {spaces[0]}" if spaces else "")
        if wp is not None and wp.mode == "quick":   # (without it the command starts a full profile from scratch)
            command += " --quick"
        if self.path is not None:
            path = Path(self.path).resolve()
            shipped = {p.resolve() for p in shipped_profiles()}
            if path != default_profile_path(self.target).resolve() and path not in shipped:
                command += f" --out {self.path}"
        if not elsewhere:
            return command
        here = _this_machine(self.target.isa)
        if here is None or here.signature != self.target.signature:
            return (f"{command} on a machine of the target {self.target.signature} (this one is "
                    f"{here.signature if here else 'another'}), or over a Ray cluster that has one: "
                    f"{workload.command()} --executor ray --ray-address ADDRESS"
                    + (f" --space {spaces[0]}" if spaces else ""))
        cpus = available_cpus()
        if workload.num_threads > cpus:
            return (f"{command} on a machine with {workload.num_threads} CPUs; this process may use {cpus}, so "
                    f"here search a workload of at most --threads {cpus}")
        return command

    # -- files ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "created": self.created, "updated": now(),
                "target": self.target.to_dict(), **({"spaces": self.spaces} if self.spaces else {}),
                "workloads": {k: wp.to_dict() for k, wp in sorted(self.workloads.items())}}

    def save(self, path: Optional[str | os.PathLike] = None) -> Path:
        """Write atomically (a temporary file, then rename), so an interrupted save never leaves half a file.
        Another process may have saved workloads of the same target into the file since this profile was read
        (two `bortengine profile` runs at once, or an extraction profiling into the cache): under a lock on the
        directory, those it does not hold are taken in first, so neither run's measurements are lost."""
        path = Path(path or self.path or default_profile_path(self.target))
        path.parent.mkdir(parents=True, exist_ok=True)
        with directory_lock(path):
            self._take_in_others(path)
            atomic_write_json(path, self.to_dict(), indent=1)
        self.path = path
        return path

    def _take_in_others(self, path: Path) -> None:
        """The workloads and space definitions of the profile in `path` that this one lacks, when it is of the same
        target (its signature, both checkable: the probe rates of two runs on a busy machine may differ); during a
        profile() run, every workload but those it measures (two runs at once into one file each kept the other's
        workload as it first read it, and the last save put back that copy: one op of a finished workload)."""
        try:
            saved = Profile.load(path) if path.is_file() else None
        except ProfileError:
            return   # not a profile (yet): nothing to keep
        if saved is None or not (saved.target.checkable and self.target.checkable
                                 and saved.target.signature == self.target.signature):
            return
        for key, wp in saved.workloads.items():
            if key not in self.workloads or self.measuring is not None and key not in self.measuring:
                self.workloads[key] = wp
                self._models.pop(key, None)
        for name, definition in saved.spaces.items():
            self.spaces.setdefault(name, definition)

    @classmethod
    def from_dict(cls, data: Any, path: Optional[Path] = None) -> "Profile":
        where = str(path) if path else "profile"
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ProfileError(f"{where} is not a bortengine profile (no \"format\": \"{FORMAT}\" field)")
        version = data.get("version")
        if version != FORMAT_VERSION:
            newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
            fix = ("a later bortengine wrote it: upgrade bortengine to read it, or profile into another --out (this "
                   "file's measurements are kept)" if newer else
                   "measure it again with `bortengine profile` (the same command replaces this file)")
            raise ProfileVersionError(f"{where} has profile format version {version!r}; this bortengine reads "
                                      f"version {FORMAT_VERSION}: {fix}", version, newer)
        try:
            target = Target.from_dict(data["target"])
            workloads = read_keyed(data.get("workloads", {}), WorkloadProfile.from_dict, lambda wp: wp.workload.key,
                                   "workload entry {key!r} describes {actual!r}")
        except ProfileError as e:
            raise ProfileError(f"{where} is malformed: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            raise ProfileError(f"{where} is malformed ({type(e).__name__}: {detail}); re-profile with "
                               f"`bortengine profile`") from None
        spaces = data.get("spaces", {})
        if not isinstance(spaces, Mapping) or not all(isinstance(v, Mapping) for v in spaces.values()):
            raise ProfileError(f"{where} is malformed: \"spaces\" must map names to search space definitions")
        return cls(target, workloads, path=path, created=data.get("created"), spaces=dict(spaces))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Profile":
        path = Path(path)
        if path.is_dir():
            found = sorted(p.name for p in path.glob("*.json"))[:3]
            inside = f" (it holds {', '.join(found)})" if found else ""
            raise ProfileError(f"{path} is a directory{inside}; a profile is one JSON file: pass its path, e.g. "
                               f"{path / (found[0] if found else 'profile.json')}")
        try:
            data = read_json(path, ProfileError, missing_ok=True)
        except OSError as e:
            raise ProfileError(f"cannot read profile {path}: {e.strerror or e}") from None
        if data is None:
            raise ProfileError(f"no profile at {path}; make one with: bortengine profile --out {path}")
        return cls.from_dict(data, path=path)

    def match(self) -> TargetMatch:
        """This profile's target against this machine (TargetMatch.of)."""
        return TargetMatch.of(self.target)

    def check_target(self, match: Optional[TargetMatch] = None, stacklevel: int = 2) -> TargetMatch:
        """Warn (ProfileMismatchWarning) if the profile describes another CPU, kernel path or engine build, or
        cannot be checked (from before exact CPU targets); the warning names both targets and how to re-profile."""
        match = match or self.match()
        message = self.mismatch_message(match)
        if message:
            warnings.warn(message, ProfileMismatchWarning, stacklevel=stacklevel + 1)
        elif self.target.core_build != match.found.core_build:
            warnings.warn(
                f"the profile {self._where()} was measured with another build of the engine's native core "
                f"(core build {self.target.core_build} vs {match.found.core_build}); if the kernels changed, "
                f"re-profile with: {self.commands()}", ProfileMismatchWarning, stacklevel=stacklevel + 1)
        return match

    def mismatch_message(self, match: TargetMatch) -> Optional[str]:
        """Why this profile does not describe this machine, naming both targets and the command to re-profile;
        None when it does (the engine's build aside)."""
        differences = self.target.differences(match.found)
        unchecked = ("it was written before bortengine recorded exact CPU targets (no calibration probe rate), so "
                     "whether it describes this CPU cannot be checked: CPUs of two generations can report the same "
                     "name and flags and run the engine over 2x apart")
        if differences:
            head = (f"the profile {self._where()} was measured on another target ({'; '.join(differences)}): its "
                    f"latencies describe that machine, not this one" + ("" if match.checkable else f"; {unchecked}"))
            if self.target.apart_by_load_alone(match.found) and match.found.probe_gflops < self.target.probe_gflops:
                head += " (or this machine is busy: its probe ran slow; if so, run again when it is quiet)"
        elif not match.checkable:
            head = f"the profile {self._where()}: {unchecked}"
        else:
            return None
        return f"{head}\n{match.describe_both()}\nRe-profile this machine with: {self.commands()}"

    def commands(self) -> str:
        """The commands that measure this profile's workloads and spaces on the machine running them."""
        commands = [self.command_for(wp.workload) for wp in self.workloads.values()]
        return "; ".join(dict.fromkeys(commands)) or "bortengine profile"

    # -- display ----------------------------------------------------------------------------------------------
    def table(self) -> str:
        """The profile as text: target, then per workload the calibration and one row per op."""
        t = self.target
        lines = [f"profile {self._where()}", f"target:  {t.signature}: {t.describe()}",
                 f"probe:   {t.probe or 'none (from before exact CPU targets)'}", f"created: {self.created}"]
        if not self.workloads:
            lines.append("(no workloads measured)")
        for key, wp in sorted(self.workloads.items()):
            lines += ["", *_workload_table(key, wp)]
        return "\n".join(lines)


def _this_machine(isa: str) -> Optional[Target]:
    """This machine's target on the kernel path isa; None when it has no such path (another CPU's)."""
    try:
        return Target.current(isa)
    except (ValueError, RuntimeError):
        return None


def _workload_table(key: str, wp: WorkloadProfile) -> list[str]:
    """A workload's lines of Profile.table(): how and when it was measured, its calibration, one row per op."""
    w = wp.workload
    lines = [f"workload {w}  [{key}]  mode {wp.mode}, {wp.blocks} block(s), {wp.clock} clock, spaces "
             f"{', '.join(wp.spaces) or '-'}, {'complete' if wp.complete else 'INCOMPLETE'}"]
    for c in wp.conditions[-1:]:
        lines.append(f"  measured {c.get('started', '?')}: {c.get('seconds', 0):.0f} s, load average "
                     f"{c.get('loadavg_start', '?')}, other processes used {c.get('foreign_cpus', 0):.2f} "
                     f"CPU(s), steal {c.get('steal_cpus', 0):.2f}")
    if wp.calibration:
        cal = wp.calibration
        calls = ", ".join(f"{k} {v * 1e3:.1f} µs" for k, v in cal["call_ms"].items())
        lines.append(f"  calibration: fixed {cal['fixed_ms'] * 1e3:.1f} µs/forward, sync "
                     f"{cal['sync_ms'] * 1e3:.2f} µs/op; empty calls: {calls}")
        note = calibration_note(cal)
        if note:
            lines.append(f"  WARNING: {note}")
    lines.append(f"  {'op':<40} {'role':<22} {'median ms':>10} {'IQR %':>6} {'min ms':>9} {'n':>5} "
                 f"{'out':>4} {'GFLOP/s':>8}  flags")
    for k, m in sorted(wp.ops.items(), key=op_order):
        b = m.best
        flops = m.spec.flops(w)
        gf = f"{flops / (b.median_ms * 1e-3) / 1e9:8.1f}" if flops else f"{'':8}"
        flags = []
        if m.noisy:
            flags.append("NOISY")
        if m.mode != wp.mode:
            flags.append(m.mode)
        if m.mode == wp.mode and m.clean_blocks < wp.blocks:
            flags.append(f"{m.clean_blocks}/{wp.blocks} clean blocks")
        lines.append(f"  {k:<40} {','.join(m.roles):<22} {b.median_ms:10.4f} {100 * b.spread:6.1f} "
                     f"{b.min_ms:9.4f} {b.n:5d} {b.outliers:4d} {gf}  {' '.join(flags)}")
    return lines


# ======================================================================================== where profiles live
def default_profile_dir() -> Path:
    """$BORTENGINE_PROFILE_DIR, else $XDG_CACHE_HOME/bortengine/profiles, else ~/.cache/bortengine/profiles."""
    return cache_dir("profiles", "BORTENGINE_PROFILE_DIR")


def default_profile_path(target: Optional[Target] = None) -> Path:
    """The cache directory's file named by the target's signature (see profile_path_for for the one profile()
    writes to by default)."""
    target = target or Target.current()
    return default_profile_dir() / f"{target.signature}.json"


def shipped_profiles() -> list[Path]:
    """Example profiles shipped in the package (bortengine/profiling/profiles/*.json)."""
    return sorted(PACKAGE_PROFILES.glob("*.json"))


def candidate_paths(target: Target) -> list[Path]:
    """Files that may hold the target's profile, in the order they are tried: in the cache directory, then among
    the shipped ones, those named by its signature (then `<signature>-N.json`: other CPUs behind the same
    signature), then by the signature of versions before exact targets."""
    paths = []
    for root in (default_profile_dir(), PACKAGE_PROFILES):
        for name in dict.fromkeys((target.signature, target.legacy_signature)):
            numbered = sorted(root.glob(f"{name}-[0-9]*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1])
                              if p.stem.rsplit("-", 1)[1].isdigit() else 0)
            paths += [root / f"{name}.json", *numbered]
    return [p for p in dict.fromkeys(paths) if p.is_file()]


def find_profiles(target: Optional[Target] = None) -> tuple[Optional[Profile], list[tuple[Profile, TargetMatch]]]:
    """This machine's profile among the cached and shipped ones (the first of candidate_paths that describes this
    CPU: same target, probe rate within the tolerance, of this core build if one is, else of another; None if none
    does), and the others found (of another CPU
    behind the same name, or from before exact targets) with how they compare. Unreadable files are skipped, with a
    warning for one of the cache directory (the user's own measurements, which silently gave way to a shipped
    profile)."""
    target = target or Target.current()
    others: list[tuple[Profile, TargetMatch]] = []
    of_another_build = None
    for path in candidate_paths(target):
        try:
            prof = Profile.load(path)
        except ProfileError as e:
            if path.parent != PACKAGE_PROFILES:
                warnings.warn(f"{e} (skipped: this machine's profile is looked for among the other files, and "
                              f"`bortengine profile` measures into a new one beside it)", ProfileMismatchWarning,
                              stacklevel=2)
            continue
        match = prof.match()
        if match.same_cpu:
            # a profile of this core build before one of an older build (a cached profile older than the shipped
            # one re-measured for this build); the older one still beats measuring, with its warning
            if prof.target.core_build == target.core_build:
                return prof, others
            of_another_build = of_another_build or (prof, list(others))
            continue
        others.append((prof, match))
    return of_another_build or (None, others)


def profile_path_for(target: Target, confirm: Optional[Callable[[Target], Target]] = None) -> Path:
    """Where profile() keeps the target's measurements by default: the cache directory's file that describes it,
    else `<signature>.json` when free or from before exact targets (re-measured), else the first free
    `<signature>-N.json` (another CPU behind the same signature keeps its file: a VM that runs on two generations).
    confirm(a stored profile's target): the target with its probe re-run against it (default: this machine's,
    Target.confirmed_against; fleet profiling re-probes the remote node)."""
    confirm = confirm or target.confirmed_against
    path = default_profile_path(target)
    for candidate in [path, *sorted(path.parent.glob(f"{target.signature}-[0-9]*.json"))]:
        try:
            found = Profile.load(candidate)
        except ProfileError:
            continue
        if TargetMatch(found.target, confirm(found.target)).same_cpu:
            return candidate
    n = 1
    while path.exists() and _checked_target(path):
        n += 1
        path = path.with_name(f"{target.signature}-{n}.json")
    return path


def resolve_space(spec: "str | os.PathLike | SearchSpace", profile_path: Optional[str | os.PathLike] = None,
                  isa: Optional[str] = None) -> SearchSpace:
    """A search space by name (a shipped one), file, or the name of one a profile was measured for: the profile at
    profile_path (default: this CPU's, where profile() writes) keeps those that are not shipped (a file's, a
    pipeline run's "below-D-A-H-I"), so the re-profile commands profiles and latency suites print work as given."""
    try:
        return SearchSpace.resolve(spec)
    except SearchSpaceError as unknown:
        if isinstance(spec, SearchSpace):
            raise
        path = Path(profile_path) if profile_path else profile_path_for(Target.current(isa))
        try:
            recorded = Profile.load(path).spaces.get(str(spec)) if path.is_file() else None
        except ProfileError as e:
            # the space may be in it: its damage is the error to fix ("unknown search space" sent the user astray)
            raise SearchSpaceError(f"{unknown}; it is not a shipped space, and the profile that would record it "
                                   f"cannot be read: {e}") from None
        if recorded is None:
            raise
        try:
            return SearchSpace.from_dict(recorded, default_name=str(spec))
        except SearchSpaceError as e:
            raise SearchSpaceError(f"{path}: the space {str(spec)!r} it records: {e}") from None


def _checked_target(path: Path) -> bool:
    """Whether the file holds a profile whose target can be checked (one from before exact targets does not)."""
    try:
        return Profile.load(path).target.checkable
    except ProfileError:
        return True     # not a readable profile: leave the file alone


def load_profile(path: Optional[str | os.PathLike] = None, *, check_target: bool = True) -> Profile:
    """Read a profile. Without a path: this CPU's profile in the cache directory or among the shipped ones (one
    that describes this CPU, else the first found for its name: a warning then says it is another CPU's or cannot
    be checked).

    check_target: warn (ProfileMismatchWarning) when the profile describes another CPU, kernel path or engine
    version than the one running, or cannot be checked (from before exact CPU targets), naming both targets and
    how to re-profile; pass False when predicting for a deployment target on purpose.
    """
    if path is None:
        target = Target.current()
        mine, others = find_profiles(target)
        if mine is None and not others:
            raise ProfileError(f"no profile of this CPU ({target.signature}) in {default_profile_dir()} or among "
                               f"the shipped examples; make one with: bortengine profile")
        prof, match = (mine, None) if mine is not None else others[0]
    else:
        prof, match = Profile.load(path), None
    if check_target:
        prof.check_target(match, stacklevel=2)
    return prof


def predict_latency(architecture: Any, workload: Workload, profile: Profile, *, detail: bool = False,
                    float32_layers: int = 0, bf16_layers: int = 0, position_bias: bool = False) -> float | Prediction:
    """Predicted forward latency (ms) of the engine for the architecture under the workload, from the profile.

    architecture: an Architecture, or a tuple (D, A, H, I) (pooler head, vocab 30522). detail=True returns the
    Prediction (the parts, and which op shapes were interpolated or extrapolated). float32_layers, bf16_layers: of
    an int8 workload, how many encoder layers the model runs in float32 or bf16 instead (an int8 calibration:
    load(float32_layers=..., bf16_layers=...)); of a bf16 one, float32_layers. Those layers are priced by the
    float32 (bf16) workload of the same shape, which the profile must then cover too (parts "float32_layers",
    "bf16_layers": what they add over the workload's own layers). position_bias: the model's attention adds a
    relative position bias (MPNet: its config's relative_attention_num_buckets), priced by the profile's pair of attentions with and
    without one.
    """
    if not isinstance(profile, Profile):
        raise ProfileError(f"profile must be a Profile (see load_profile()), got {type(profile).__name__}")
    if not isinstance(workload, Workload):
        raise ProfileError(f"workload must be a Workload, got {type(workload).__name__}")
    if workload.num_threads > profile.target.logical_cpus:
        warnings.warn(f"workload {workload} asks for more threads than the {profile.target.logical_cpus} CPU(s) of "
                      f"the profiled target", RuntimeWarning, stacklevel=2)
    max_positions = getattr(architecture, "max_positions", None)
    if max_positions is not None and workload.seq_len > max_positions:
        raise ProfileError(f"workload sequences of {workload.seq_len} tokens exceed the architecture's "
                           f"max_positions={max_positions}")
    if not isinstance(position_bias, bool):
        raise ProfileError(f"position_bias must be True or False, got {position_bias!r}")
    p = profile.model(workload).predict(architecture, position_bias=position_bias)
    if float32_layers or bf16_layers:
        p = _with_layers(p, architecture, workload, profile, {"float32": float32_layers, "bf16": bf16_layers},
                         position_bias)
    if p.extrapolated:
        warnings.warn(EXTRAPOLATION_NOTE, RuntimeWarning, stacklevel=2)
    return p if detail else p.total_ms


def _with_layers(p: Prediction, architecture: Any, workload: Workload, profile: Profile,
                 counts: dict[str, int], position_bias: bool = False) -> Prediction:
    """p (every layer in the workload's dtype) with counts[dtype] of them priced as that dtype's workload's layer."""
    depth = architecture_dims(architecture)[0]
    for dtype, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ProfileError(f"{dtype}_layers must be a count of layers >= 0, got {n!r}")
    if sum(counts.values()) > depth:
        raise ProfileError(f"{' + '.join(f'{d}_layers={n}' for d, n in counts.items())} is more than the "
                           f"architecture's {depth} layers")
    if counts.get("bf16") and workload.dtype != "int8":
        raise ProfileError(f"bf16_layers prices layers of an int8 model; the workload is {workload.dtype}")
    for dtype, n in counts.items():
        if not n or dtype == workload.dtype:
            continue
        other = replace(workload, dtype=dtype)
        if not profile.covers(other):
            raise ProfileError(f"the model runs {n} of its layers in {dtype} (an int8 calibration), which the profile "
                               f"{profile.path or profile.target.signature} prices from the {dtype} workload "
                               f"{other}; it has none: measure it with: {profile.command_for(other)}")
        theirs = profile.model(other).predict(architecture, position_bias=position_bias)
        extra = n * (theirs.layer_ms - p.layer_ms)
        p = replace(p, total_ms=p.total_ms + extra, parts={**p.parts, f"{dtype}_layers": extra},
                    interpolated=p.interpolated + theirs.interpolated,
                    extrapolated=p.extrapolated + theirs.extrapolated)
    return p
