"""Which profile a search runs on when the user names none: this CPU's own profile when it covers the search, else
one measured now (quick by default) — never a profile of another CPU target, nor one that cannot be checked (from
before exact CPU targets, like the shipped example): those are named in a ProfileMismatchWarning and in the
choice's note. `bortengine extract` without --profile and the pipeline's profile stage choose through
profile_for_search()."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bortengine.architecture import Architecture
from bortengine.profiling.errors import ProfileError
from bortengine.profiling.measure import profile
from bortengine.profiling.profile_file import Profile, default_profile_dir, find_profiles, predict_latency
from bortengine.profiling.target import Target, TargetMatch
from bortengine.profiling.timing import Settings
from bortengine.profiling.workload import Workload
from bortengine.search_space import SearchSpace


@dataclass
class ProfileChoice:
    """The profile a search runs on, whether it was measured now, and why (for the command's output)."""

    profile: Profile
    measured_now: bool
    note: str
    seconds: float = 0.0


def covers_space(prof: Profile, workload: Workload, space: SearchSpace) -> bool:
    """Whether the profile predicts every architecture of the space under the workload from measured shapes (no op
    outside what was measured). Each (A, H, I) once: the op shapes do not depend on D. (The two corners alone
    passed a profile made of other spaces whose shapes span the corners but not the ones between, and the
    extraction then refused it, run after run.)"""
    shapes = sorted({(a.heads, a.hidden, a.intermediate) for a in space})
    depth = min(space.layers)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # extrapolation is what is asked about here
            return all(not predict_latency(Architecture(depth, *dims, vocab_size=space.vocab_size), workload, prof,
                                           detail=True).extrapolated for dims in shapes)
    except (ProfileError, KeyError, ValueError):
        return False


def profile_for_search(space: SearchSpace, workload: Workload, *, quick: bool = True, progress: bool = True,
                       settings: Optional[Settings] = None) -> ProfileChoice:
    """This CPU's profile covering the space under the workload (find_profiles), else one measured now
    (profile(), quick by default; into this CPU's file, adding to it when it exists). Profiles found for this
    CPU's name that are another CPU's, or cannot be checked, warn (naming both targets and the fix) and are not
    used."""
    target = Target.current()
    mine, others = find_profiles(target)
    if mine is not None and covers_space(mine, workload, space):
        mine.check_target(stacklevel=2)   # (another engine version or build of the same CPU's profile warns)
        return ProfileChoice(mine, False, f"this CPU's profile {mine.path}")
    for prof, match in others:
        prof.check_target(match, stacklevel=2)
    start = time.monotonic()
    prof = profile(space, workload, quick=quick, progress=progress, settings=settings)
    seconds = time.monotonic() - start
    reason = _why_not(mine, others, target, workload, space, measured_into=prof.path)
    mode = settings.mode if settings else "quick" if quick else "full"
    note = (f"profiled this CPU now ({mode} mode, {seconds:.0f} s) into {prof.path}: {reason}"
            + ("; a full profile predicts more closely: bortengine profile" if mode == "quick" else ""))
    return ProfileChoice(prof, True, note, seconds)


def _why_not(mine: Optional[Profile], others: list[tuple[Profile, TargetMatch]], target: Target,
             workload: Workload, space: SearchSpace, measured_into: Optional[Path]) -> str:
    """Why no profile found could serve: what each candidate lacked (this CPU's own named once when the new
    measurements went into its file)."""
    reasons = [f"{prof.path} is from before exact CPU targets (it cannot be checked against this CPU)"
               if not match.checkable else
               f"{prof.path} is of another CPU target ({'; '.join(match.differences)})" for prof, match in others]
    if mine is not None:
        which = ("the profile there did not" if mine.path == measured_into else
                 f"this CPU's profile {mine.path} does not")
        reasons.insert(0, f"{which} cover the {space.name} space at {workload}")
    return "; ".join(reasons) or f"no profile of this CPU ({target.signature}) in {default_profile_dir()}"
