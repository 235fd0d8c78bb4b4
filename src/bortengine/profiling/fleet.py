"""Fleet profiling (`bortengine profile --executor ray`): a profile of each distinct CPU target among a Ray
cluster's nodes, measured on a node of that target and saved in this machine's profile directory under the
target's signature, so `bortengine extract --target SIGNATURE` can search for any CPU of the fleet.

Every node with a CPU first reports its target (Target.current() there, the calibration probe included); nodes whose
targets do not differ (Target.cpu_differences; a probe rate alone apart is probed again on the slower node, as a
load check does) are one target. Then one node of each target measures its profile, in a Ray task pinned to it
(a hard node affinity) that holds all of that node's CPUs, so nothing of this command runs beside the measurement;
the task starts from the profile this machine already has of the target, so only what is missing is measured. It
measures for PART_S seconds at most and sends what it has back, which the driver saves, reports (measurements done,
time left) and sends out again, until the profile is complete: Ctrl-C, a lost node or a killed task loses at most one
part, and the same command resumes from the saved profiles.
Ray (bortengine[ray]) is imported only when profile_fleet() runs (bortengine.cluster.connect).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from bortengine.cluster import CONNECT_TIMEOUT, alive_nodes, connect, error_gist
from bortengine.engine import available_cpus
from bortengine.errors import BortEngineError, ClusterError
from bortengine.profiling.errors import ProfileError, ProfileInterrupted, ProfilePaused
from bortengine.profiling.measure import profile
from bortengine.profiling.profile_file import Profile, default_profile_dir, profile_path_for
from bortengine.profiling.target import Target
from bortengine.profiling.workload import Workload
from bortengine.progress import clock as clock_of
from bortengine.search_space import SearchSpace

__all__ = ["FleetTarget", "profile_fleet", "group_targets", "target_profile_path", "fleet_table",
           "profile_of_target"]

# seconds a node measures before it sends its profile back to be saved: what an interruption can lose (a part also
# pays a few seconds of start-up: the probe, the first op's warm-up)
PART_S = 30.0


@dataclass
class FleetTarget:
    """One CPU target of the fleet: the nodes that have it, the one that measured it, where its profile went."""

    target: Target
    nodes: list[str]                  # Ray node ids
    cpus: int                         # the measuring node's CPUs (Ray's count), all held while it measured
    path: Optional[Path] = None
    seconds: float = 0.0
    done: int = 0                     # measurements saved of `total`, as the parts came back (0 of 0: none yet)
    total: int = 0
    measured_on: str = field(init=False)

    def __post_init__(self):
        self.measured_on = self.nodes[0]

    def to_dict(self) -> dict[str, Any]:
        return {"signature": self.target.signature, "target": self.target.to_dict(), "nodes": self.nodes,
                "measured_on": self.measured_on, "cpus": self.cpus, "profile": str(self.path),
                "seconds": round(self.seconds, 1)}


def _node_target(expected: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """(runs on a node) This node's target; against `expected`, on its kernel path with the probe confirmed."""
    if expected is None:
        return Target.current().to_dict()
    want = Target.from_dict(expected)
    return Target.current(want.isa).confirmed_against(want).to_dict()


def _node_profile(space: dict[str, Any], batch: int, seq: int, threads: Optional[int], dtype: str, quick: bool,
                  clock: Optional[str], start: Optional[dict[str, Any]], part_s: float, held: int) -> dict[str, Any]:
    """(runs on a node) Part of the profile of this node's target for the workload (threads: default the CPUs the
    task holds, `held`: the node's Ray CPUs, at most this process's), resumed from `start` (the driver's profile of
    the target, when it has one), measured for part_s seconds: {"profile": its dict, "complete": whether it is,
    and when not, "done"/"total": its measurements}."""
    with tempfile.TemporaryDirectory(prefix="bortengine-fleet-") as tmp:
        path = Path(tmp) / "profile.json"
        if start is not None:
            Profile.from_dict(start).save(path)
        workload = Workload(batch, seq, threads or min(available_cpus(), held), dtype)
        try:
            done = profile(SearchSpace.from_dict(space), workload, quick=quick, out=path, resume=True,
                           progress=False, clock=clock, stop_after_s=part_s)
        except ProfilePaused as e:
            return {"profile": Profile.load(path).to_dict(), "complete": False, "done": e.done, "total": e.total}
        return {"profile": done.to_dict(), "complete": True}


def group_targets(found: list[tuple[str, int, Target]],
                  confirm: Callable[[str, Target], Target]) -> list[FleetTarget]:
    """The distinct targets among (node id, CPUs, target) in order of first appearance. Two targets apart only by
    their probe rates are probed again on the slower node (confirm(node, the other target) -> that node's target
    confirmed against it): a load burst slows a probe, another CPU stays slow."""
    groups: list[FleetTarget] = []
    for node, cpus, target in found:
        for g in groups:
            if _probe_only(g.target, target):
                if target.probe_gflops < g.target.probe_gflops:
                    target = confirm(node, g.target)
                else:
                    g.target = confirm(g.measured_on, target)
            if not g.target.cpu_differences(target):
                g.nodes.append(node)
                break
        else:
            groups.append(FleetTarget(target, [node], cpus))
    return groups


def _probe_only(a: Target, b: Target) -> bool:
    """a and b differ, by their probe rates alone."""
    return bool(a.cpu_differences(b)) and not a.cpu_differences(replace(b, probe_gflops=a.probe_gflops))


def target_profile_path(target: Target, confirm: Callable[[Target], Target]) -> tuple[Path, Optional[Profile]]:
    """Where this machine keeps a remote target's profile (profile_path_for; confirm(a stored profile's target): the
    remote node's target probed again against it), and the profile there when it is of that target."""
    path = profile_path_for(target, confirm)
    try:
        found = Profile.load(path)
    except ProfileError:
        return path, None
    return path, (found if found.target.checkable and not found.target.cpu_differences(confirm(found.target))
                  else None)


def profile_fleet(space: "SearchSpace | str", *, batch: int = 1, seq: int = 128, threads: Optional[int] = None,
                  dtype: str = "float32", quick: bool = False, clock: Optional[str] = None, fresh: bool = False,
                  address: Optional[str] = None, connect_timeout: float = CONNECT_TIMEOUT,
                  report: Callable[[str], None] = lambda line: None, part_s: float = PART_S) -> list[FleetTarget]:
    """Profiles every distinct CPU target among the cluster's nodes (address: see bortengine.cluster.connect) for
    the space and workload (threads: default each measuring node's CPUs), the targets measured in parallel; saves
    each in default_profile_dir() (target_profile_path) and returns them. fresh: measure the workload anew rather
    than resume the profile this machine has of a target. report(line) hears what happens: each part saved (the
    measurements done and the time left) and each target finished. Ctrl-C: the parts under way are cancelled and
    ProfileInterrupted raised; what the finished parts measured is saved, and the same call resumes."""
    space = SearchSpace.resolve(space)
    ray, owned = connect(address, connect_timeout)

    def confirm(node: str, expected: Target) -> Target:
        ref = _pinned(ray, _node_target, node, 1).remote(expected.to_dict())
        return Target.from_dict(_result(ray, ref, f"probing node {node[:12]} again"))

    def confirmer(g: FleetTarget) -> Callable[[Target], Target]:
        """The group's target probed again on its node against a stored one, when only a slower rate parts them."""
        def again(stored: Target) -> Target:
            slower = _probe_only(stored, g.target) and g.target.probe_gflops < stored.probe_gflops
            if slower:
                g.target = confirm(g.measured_on, stored)
            return g.target
        return again

    try:
        found = _targets_of_nodes(ray)
        groups = group_targets(found, confirm)
        report(f"{len(groups)} CPU target(s) among {len(found)} node(s); measuring each on one of its nodes")
        starts = [target_profile_path(g.target, confirmer(g)) for g in groups]
        began = time.monotonic()

        def part(g: FleetTarget, start: Optional[dict[str, Any]]) -> Any:
            return _pinned(ray, _node_profile, g.measured_on, g.cpus).remote(
                space.to_dict(), batch, seq, threads, dtype, quick, clock, start, part_s, g.cpus)

        pending = {part(g, None if start is None or fresh else start.to_dict()): (g, path)
                   for g, (path, start) in zip(groups, starts)}
        first: dict[str, tuple[int, float]] = {}    # a target's node -> (done, seconds) at its first part's return
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)   # (Ctrl-C is seen between waits)
                if not ready:
                    continue
                g, path = pending.pop(ready[0])
                data = _result(ray, ready[0], f"profiling {g.target.signature} on node {g.measured_on[:12]}")
                g.path, g.seconds = Profile.from_dict(data["profile"]).save(path), time.monotonic() - began
                if data["complete"]:
                    g.done = g.total
                    report(f"{g.target.signature}: {g.path} ({g.seconds:.0f} s)")
                    continue
                g.done, g.total = data["done"], data["total"]
                # the rate since this target's first part came back (that one's count holds what a resumed profile
                # kept, and its time the part's start-up)
                done0, seconds0 = first.setdefault(g.measured_on, (g.done, g.seconds))
                rate = (g.seconds - seconds0) / (g.done - done0) if g.done > done0 else float("nan")
                left = rate * (g.total - g.done)
                report(f"{g.target.signature}: {g.done} of {g.total} measurements ({clock_of(g.seconds)}, left "
                       f"~{clock_of(left)}), saved to {g.path}")
                pending[part(g, data["profile"])] = (g, path)
        except KeyboardInterrupt:
            for ref in pending:      # the parts under way end (their nodes' CPUs freed); the saved ones stay
                ray.cancel(ref, force=True)
            raise ProfileInterrupted(default_profile_dir(), sum(g.done for g in groups),
                                     sum(g.total for g in groups)) from None
        return groups
    finally:
        if owned:
            ray.shutdown()


def _targets_of_nodes(ray: Any) -> list[tuple[str, int, Target]]:
    """(node id, CPUs, target) of every alive node that has a CPU to run a task on."""
    nodes = [(node, cpus) for node, cpus in alive_nodes(ray).items() if cpus >= 1]
    if not nodes:
        raise ClusterError("no node of the Ray cluster has a CPU to profile on")
    refs = [_pinned(ray, _node_target, node, 1).remote() for node, _ in nodes]
    targets = [_result(ray, ref, f"reading the CPU target of node {node[:12]}") for ref, (node, _) in zip(refs, nodes)]
    return [(node, cpus, Target.from_dict(t)) for (node, cpus), t in zip(nodes, targets)]


def _result(ray: Any, ref: Any, what: str) -> Any:
    """A task's result; its failure as a ClusterError saying what failed where and why (the remote error's gist)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BortEngineError):      # bortengine's own message says what to do
            raise ClusterError(f"{what} failed: {cause}") from None
        raise ClusterError(f"{what} failed: {error_gist(e)} (every node needs bortengine and its native module, of "
                           f"the driver's version)") from None


def _pinned(ray: Any, function: Callable, node: str, cpus: int) -> Any:
    """function as a Ray task that runs on `node` only, holding `cpus` of its CPUs."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return ray.remote(function).options(num_cpus=cpus, max_retries=0,
                                        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))


def fleet_table(groups: list[FleetTarget]) -> str:
    """The targets as a table: signature, nodes, probe rate, where the profile went."""
    width = max([len("target")] + [len(g.target.signature) for g in groups])
    lines = [f"{'target':<{width}}  nodes  measured on   probe GFLOP/s  profile"]
    for g in groups:
        rate = f"{g.target.probe_gflops:.0f}" if g.target.probe_gflops is not None else "-"
        lines.append(f"{g.target.signature:<{width}}  {len(g.nodes):5d}  {g.measured_on[:12]}  {rate:>13}  {g.path}")
    return "\n".join(lines)


def profile_of_target(signature: str) -> Profile:
    """The profile of a target in default_profile_dir(), by the signature it is filed under (`<signature>.json`,
    or `<signature>-N.json` given as such), as fleet profiling writes them; ProfileError naming those there."""
    path = default_profile_dir() / f"{signature}.json"
    if not path.is_file():
        have = sorted(p.stem for p in default_profile_dir().glob("*.json"))
        raise ProfileError(f"no profile of the target {signature!r} in {default_profile_dir()} (there: "
                           f"{', '.join(have) or 'none'}); measure each CPU target of a Ray cluster with: bortengine "
                           f"profile --executor ray --ray-address HEAD:PORT")
    return Profile.load(path)
