"""Fleet profiling (profiling.fleet, `bortengine profile --executor ray`) on a real Ray cluster of two nodes bound to
127.0.0.1 whose CPU targets differ (the second node's workers run another kernel path, BORTENGINE_ISA): one
profile per target, each measured on a node of it and filed on the driver under its signature, then `bortengine
extract --target` searching for the other one. The grouping of nodes into targets (a probe rate alone apart is
probed again on the slower node) is checked on targets built here.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import replace

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # before ray is imported: loopback stays loopback
ray = pytest.importorskip("ray", reason="fleet profiling needs ray: pip install 'bortengine[ray]'")

from bortengine import profiling as P  # noqa: E402
from bortengine.engine import core  # noqa: E402
from bortengine.profiling.fleet import group_targets  # noqa: E402
from test_search import TINY, synthetic  # noqa: E402


def _other_isa() -> str:
    """A kernel path this CPU runs other than the default (the fastest such, scalar only when nothing else is)."""
    native = core()
    others = [isa for isa in native.available_isas() if isa != native.default_isa()]
    return next((isa for isa in others if isa != "scalar"), others[0] if others else "")


@pytest.fixture(scope="module")
def two_targets():
    """A head node on the default kernel path and a node whose processes run on another (BORTENGINE_ISA is read by
    the node's workers: they inherit the raylet's environment)."""
    other = _other_isa()
    if not other:
        pytest.skip("this CPU runs one kernel path only: no second target to make")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                      "include_dashboard": False})
    old = os.environ.get("BORTENGINE_ISA")
    try:
        os.environ["BORTENGINE_ISA"] = other
        c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        if old is None:
            del os.environ["BORTENGINE_ISA"]
        else:
            os.environ["BORTENGINE_ISA"] = old
        c.wait_for_nodes()
        yield c, other
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


def test_each_cpu_target_is_profiled_on_its_node_and_extract_searches_for_one(two_targets, tmp_path, monkeypatch,
                                                                              capsys):
    from bortengine.cli import main

    cluster, other = two_targets
    monkeypatch.setenv("BORTENGINE_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    space = tmp_path / "tiny.json"
    space.write_text(json.dumps(TINY.to_dict()))
    argv = ["profile", "--executor", "ray", "--ray-address", cluster.address, "--space", str(space), "--batch", "1",
            "--seq", "16", "--threads", "1", "--quick", "--no-progress"]
    for wrong, message in [(["--out", str(tmp_path / "p.json")], "--out cannot go with --executor ray"),
                           (["--executor", "local"], "goes with --executor ray")]:
        assert main(argv + wrong) == 2 and message in capsys.readouterr().err
    assert main(argv + ["--threads", "64"]) == 2      # more threads than the node's CPUs: the node says so
    err = capsys.readouterr().err
    assert " failed: num_threads=64 is more than the " in err and "Traceback" not in err, err
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 CPU target(s) among 2 node(s)" in out and "bortengine extract --target" in out
    here = core().default_isa()
    files = {P.Profile.load(path).target.isa: path for path in (tmp_path / "profiles").glob("*.json")}
    assert set(files) == {here, other}
    workload = P.Workload(1, 16, 1)
    for isa, path in files.items():
        prof = P.Profile.load(path)
        assert path.stem == prof.target.signature and prof.covers(workload) and prof.target.checkable
        assert prof.target.signature in out and str(path) in out
    assert not ray.is_initialized()
    # again: a target's profile is resumed on its node into the same file, what was measured clean kept (a resumed
    # profile measures again only the ops whose blocks were all disturbed: docs/profiler.md). (A probe rate read
    # more than 15% faster than the stored one's counts as another CPU, as on one machine: a file of its own.)
    before = {isa: P.Profile.load(path).workloads[workload.key].ops for isa, path in files.items()}
    assert main(argv) == 0
    again = dict(re.findall(r"^(\S+): (\S+\.json) \(\d+ s\)$", capsys.readouterr().out, re.M))
    assert len(again) == 2
    for isa, path in files.items():
        if again[P.Profile.load(path).target.signature] == str(path):
            after = P.Profile.load(path).workloads[workload.key].ops
            kept = [key for key, m in before[isa].items() if m.clean_blocks]
            assert kept and all(after[key].to_dict() == before[isa][key].to_dict() for key in kept), isa
    # the extraction for the other target: its profile; this CPU runs that kernel path, so it times the finalists
    signature = P.Profile.load(files[other]).target.signature
    extract = ["extract", "--space", str(space), "--batch", "1", "--seq", "16", "--surrogate", "analytic", "--cache",
               str(tmp_path / "cache"), "--no-progress", "--measure", "1", "--quick-measure"]
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)              # a busy machine's timing
        warnings.simplefilter("error", P.ProfileMismatchWarning)     # chosen on purpose: no warning
        code = main(extract + ["--threads", "1", "--target", signature, "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "winner ⟨" in out and "measured ⟨" in out, out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["profile"]["target"]["isa"] == other and report["measurement"]["rows"]
    # the same target profiled on a busy core (its probe rate 0.6x this one's, all else equal): a load apart, not
    # another CPU; the finalists are timed here and the output says why
    busy = P.Profile.load(files[other])
    busy_target = replace(busy.target, probe_gflops=round(busy.target.probe_gflops * 0.6, 2))
    assert busy_target.signature == signature and busy_target.apart_by_load_alone(busy.match().found)
    busy.target = busy_target
    busy.save()
    code = main(extract + ["--threads", "1", "--target", signature, "--out", str(tmp_path / "out-busy")])
    out = capsys.readouterr().out
    assert code == 0 and "calibration probe ran faster than the profile's (the profile of " in out, out
    assert "on a busy core, or this CPU clocks higher; the finalists are timed here" in out, out
    assert json.loads((tmp_path / "out-busy" / "report.json").read_text())["measurement"]["rows"]
    # another CPU's profile: the workload's threads are that CPU's, the finalists are not timed on this one
    foreign = synthetic(TINY)                   # a "GenuineTest Test CPU" of 2 logical CPUs
    foreign.save(tmp_path / "profiles" / f"{foreign.target.signature}.json")
    code = main(extract + ["--target", foreign.target.signature, "--out", str(tmp_path / "out2")])
    out = capsys.readouterr().out
    assert code == 0 and "describes another CPU than this one: the finalists are not timed" in out, out
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert report["measurement"] is None and report["settings"]["workload"]["num_threads"] == 2
    assert main(extract + ["--target", "no-such-cpu", "--out", str(tmp_path / "out3")]) == 2
    err = capsys.readouterr().err
    assert "no profile of the target 'no-such-cpu'" in err and signature in err


def test_a_fleet_profile_comes_back_in_parts_that_are_saved_and_resumed(two_targets, tmp_path, monkeypatch):
    """The nodes measured their whole profiles before anything came back: nothing was shown while they ran, and
    Ctrl-C (or a lost task) threw away every measurement. Now each node sends what it has every part_s seconds:
    saved, reported with the time left; an interruption keeps the parts that came back, and the same call
    resumes from them."""
    from bortengine.profiling.fleet import profile_fleet

    cluster, _ = two_targets
    monkeypatch.setenv("BORTENGINE_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    lines: list[str] = []

    def stop_at_the_first_part(line: str) -> None:
        lines.append(line)
        if " measurements (" in line:
            raise KeyboardInterrupt

    run = dict(batch=1, seq=16, threads=1, quick=True, address=cluster.address, part_s=0.2)
    with pytest.raises(P.ProfileInterrupted, match=r"interrupted: [1-9]\d* of \d+ measurements saved to "):
        profile_fleet(TINY, report=stop_at_the_first_part, **run)
    part = next(line for line in lines if " measurements (" in line)
    path = tmp_path / "profiles" / part.rsplit("saved to ", 1)[1]
    saved = P.Profile.load(path)
    workload = P.Workload(1, 16, 1)
    assert not saved.covers(workload) and saved.workloads[workload.key].ops     # a part: measured, not complete
    assert not ray.is_initialized()
    lines.clear()
    groups = profile_fleet(TINY, report=lines.append, **run)
    assert all(P.Profile.load(g.path).covers(workload) for g in groups) and len(groups) == 2
    assert any(re.search(r" of \d+ measurements \(\d+:\d\d, left ~(\d+:\d\d|\?:\?\?)\), saved to ", line)
               for line in lines), lines
    resumed = P.Profile.load(path).workloads[workload.key].ops
    assert all(resumed[key].blocks[:len(m.blocks)] == m.blocks for key, m in saved.workloads[workload.key].ops.items()
               if m.clean_blocks)                                              # the part's measurements kept
    # --fresh measures the workload anew; the profile's other workloads stay (the save takes in what it does not
    # hold). Each run's files are the ones it names: a probe rate read 15% apart files a target anew (a busy machine)
    short = P.Workload(1, 8, 1)
    with_short = {g.target.signature: g.path for g in profile_fleet(TINY, **{**run, "seq": 8})}
    assert all(P.Profile.load(p).covers(short) for p in with_short.values())
    for g in profile_fleet(TINY, fresh=True, **run):
        again = P.Profile.load(g.path)
        assert again.covers(workload)
        if g.path == with_short.get(g.target.signature):
            assert again.covers(short)
        if g.path == path:
            assert all(again.workloads[workload.key].ops[key].blocks != m.blocks for key, m in resumed.items())


def test_nodes_apart_only_by_a_probe_rate_are_probed_again():
    base = P.Target(vendor="GenuineTest", model="Test CPU", flags=("avx2",), logical_cpus=2, isa="avx2",
                    kernel="gemm_f32_avx2", engine_version="0", probe=P.PROBE, probe_gflops=100.0)
    asked = []

    def confirm(node, expected):
        asked.append(node)
        return replace(base, probe_gflops=95.0 if node == "b" else 50.0)   # b was slowed by load; c is slower

    found = [("a", 2, base), ("b", 2, replace(base, probe_gflops=60.0)), ("c", 2, replace(base, probe_gflops=50.0)),
             ("d", 2, replace(base, isa="scalar", kernel="gemm_f32_scalar")), ("e", 2, replace(base, model="Other"))]
    groups = group_targets(found, confirm)
    assert [g.nodes for g in groups] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert asked == ["b", "c"]          # only rates apart are probed again, on the slower node
