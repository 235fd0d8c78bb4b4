"""Agora's settings on a Ray cluster (search.RaySettingsRunner) against the in-process runner: on a real cluster of
two nodes of one CPU each bound to 127.0.0.1 (the fixture of tests/test_ray_executor.py), the same run (a tiny text
student distilling a tiny labeller, 2 rounds, 3 settings, half of dev kept for selection) gives the same settings'
dev accuracies, the same choices and the same final student, its settings spread over both nodes; a run interrupted
in round 2 on either runner (in process, or Ctrl-C to a driver on the cluster, whose tasks are cancelled) resumes on
the other and ends as if never interrupted; a worker killed mid-fine-tune is replaced and the fine-tune run again;
the command line (`bortengine finetune --agora --executor ray --ray-address`) reaches the cluster, and a wrong
address fails at once with the cluster's message.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # (see tests/test_ray_executor.py)
ray = pytest.importorskip("ray", reason="Agora on Ray needs ray: pip install 'bortengine[ray]'")

from bortengine.agora import (AgoraConfig, EngineLabeller, NearestNeighbourSwap, TextClassifierTrainer,  # noqa: E402
                              load_engine_classifier, run_agora, save_classifier)
from bortengine.search import RaySettingsRunner  # noqa: E402
from test_agora import timeless  # noqa: E402
from test_cli import assert_error_line  # noqa: E402
from test_ray_executor import cluster, no_ray_address  # noqa: E402,F401 - the fixtures

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["negative", "positive"]
GOOD = ["wonderful", "moving", "clever", "beautiful", "great", "funny", "warm", "sharp"]
BAD = ["dull", "boring", "awful", "painful", "weak", "silly", "flat", "tedious"]
SETTINGS = [{"lr": 2e-3, "epochs": 2, "batch_size": 4}, {"lr": 5e-4, "epochs": 3, "batch_size": 4},
            {"lr": 1e-3, "epochs": 2, "batch_size": 8}]


def reviews(n: int, seed: int) -> tuple[list[str], list[int]]:
    """n short reviews, half of each class: two words of the class's list and one of the other's (so a tiny
    student makes mistakes for Agora to grow around)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        own, other = (GOOD, BAD) if i % 2 else (BAD, GOOD)
        a, b = rng.choice(own, 2, replace=False)
        texts.append(f"a {a} and {b} film , a little {rng.choice(other)} .")
        labels.append(i % 2)
    return texts, labels


def inputs(student: Path, labeller: Path, trainer_class=TextClassifierTrainer):
    """The run's pieces but its runner: the trainer (soft labels of the labeller on the generated points only, one
    thread), the train and dev sets, the labeller and the transformation (nearest neighbours in a random table)."""
    from tokenizers import Tokenizer

    from bortengine.testing import minilm_path
    from bortengine.training import load_teacher

    train, dev = reviews(16, 0), reviews(16, 1)
    size = Tokenizer.from_file(str(minilm_path() / "tokenizer.json")).get_vocab_size()
    table = np.random.default_rng(0).standard_normal((size, 16)).astype(np.float32)
    trainer = trainer_class(load_teacher(str(student)), student, max_length=16, threads=1,
                            teacher=EngineLabeller(labeller, LABELS, num_threads=1), distill_weight=1.0,
                            gold_texts=train[0], labels=LABELS)
    return trainer, train, dev, EngineLabeller(labeller, LABELS, num_threads=1), \
        NearestNeighbourSwap(table, minilm_path(), k=3)


def agora(student: Path, labeller: Path, out: Path, runner=None, trainer=None):
    default, train, dev, judge, swap = inputs(student, labeller)
    config = AgoraConfig(settings=SETTINGS, rounds=2, per_mistake=2, seed=3, out_dir=str(out), label_names=LABELS,
                         select_fraction=0.5)
    return run_agora(config, trainer or default, train, dev, judge, swap, save_model=save_classifier,
                     load_model=load_engine_classifier, runner=runner)


@pytest.fixture(scope="module")
def models(make_model):
    student = make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48)
    labeller = make_model(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                          head="classifier", num_labels=2, seed=7)
    return student, labeller


@pytest.fixture(scope="module")
def in_process(models, tmp_path_factory):
    """The run on the default runner: one setting after another in this process."""
    return agora(*models, tmp_path_factory.mktemp("agora") / "local")


def same_run(result, reference) -> None:
    """The same settings' accuracies, choices, training sets and final student (to the bit), wherever it ran."""
    import torch

    assert [timeless(r, node=False) for r in result.rounds] == [timeless(r, node=False) for r in reference.rounds]
    assert result.train_size == reference.train_size and result.stopped_by == reference.stopped_by
    ours, theirs = result.model.model.state_dict(), reference.model.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def nodes(result, rounds=(1, 2)) -> set[str]:
    return {s["node"] for r in result.rounds if r.round in rounds for s in r.settings_trained}


def test_the_settings_on_ray_give_the_same_run_spread_over_both_nodes(cluster, models, in_process, tmp_path):
    assert in_process.rounds[0].generated > 0 and len(in_process.rounds[0].settings_trained) == 3
    assert nodes(in_process) == {"local"}
    with RaySettingsRunner(cluster.address) as runner:
        assert runner.capacity == 2 and runner.threads == 1
        on_ray = agora(*models, tmp_path / "ray", runner=runner)
    same_run(on_ray, in_process)
    ids = nodes(on_ray)
    assert len(ids) == 2 and all(len(n) == 56 for n in ids), ids
    assert on_ray.executor == (f"ray: the Ray cluster at {cluster.address}, 2 node(s), 2 CPU(s); 2 fine-tune(s) at "
                               f"a time of 1 thread(s)")
    assert all(s["seconds"] > 0 for r in on_ray.rounds for s in r.settings_trained)
    saved = [json.loads(line) for line in (tmp_path / "ray" / "rounds.jsonl").read_text().splitlines()]
    assert {s["node"] for r in saved for s in r["settings_trained"]} == ids
    assert not ray.is_initialized()        # the connection the runner opened is closed with it


class InterruptedInRound2:
    """The trainer, stopped by Ctrl-C when round 2 starts (its training set has grown)."""

    def __init__(self, inner, train0: int):
        self.inner, self.train0 = inner, train0

    def fit(self, setting, points, labels, seed, dev=None):
        if len(points) > self.train0:
            raise KeyboardInterrupt
        return self.inner.fit(setting, points, labels, seed, dev)


def test_a_run_interrupted_in_process_resumes_on_ray(cluster, models, in_process, tmp_path):
    trainer = inputs(*models)[0]
    with pytest.raises(KeyboardInterrupt):
        agora(*models, tmp_path, trainer=InterruptedInRound2(trainer, 16))
    assert [json.loads(line)["round"] for line in (tmp_path / "rounds.jsonl").read_text().splitlines()] == [1]
    with RaySettingsRunner(cluster.address) as runner:
        resumed = agora(*models, tmp_path, runner=runner)
    same_run(resumed, in_process)
    assert nodes(resumed, rounds=(1,)) == {"local"} and len(nodes(resumed, rounds=(2,)) - {"local"}) >= 1


DRIVER = """
import signal
import sys
signal.signal(signal.SIGINT, signal.default_int_handler)   # Ctrl-C, even when started as a background job
sys.path.insert(0, {tests!r})
import time
from pathlib import Path
from bortengine.agora import TextClassifierTrainer
from bortengine.search import RaySettingsRunner
from test_agora_ray import agora, inputs

class Slow(TextClassifierTrainer):
    # (defined in __main__, so Ray sends the class itself to its workers) every fine-tune on more than
    # {slow_from} points first waits {sleep} s
    def fit(self, setting, texts, labels, seed, dev=None):
        if len(texts) > {slow_from}:
            time.sleep({sleep})
        return super().fit(setting, texts, labels, seed, dev)

trainer = inputs(Path({student!r}), Path({labeller!r}), Slow)[0]
with RaySettingsRunner({address!r}) as runner:
    try:
        agora(Path({student!r}), Path({labeller!r}), Path({out!r}), runner=runner, trainer=trainer)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
print("done", flush=True)
"""


def _driver(models, address: str, out: Path, slow_from: int, sleep: float) -> subprocess.Popen:
    """A driver process running the Agora run on the cluster, each fine-tune on more than slow_from points
    waiting `sleep` seconds first."""
    student, labeller = models
    code = DRIVER.format(tests=str(ROOT / "tests"), student=str(student), labeller=str(labeller), address=address,
                         out=str(out), slow_from=slow_from, sleep=sleep)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _fits_running() -> list:
    """The processes running a fine-tune of Agora on the cluster (a Ray worker names itself after its task)."""
    import psutil

    return [p for p in psutil.process_iter(["cmdline"])
            if any("fit_setting_task" in a for a in p.info["cmdline"] or [])]


def test_a_killed_worker_is_replaced_and_its_fine_tune_run_again(cluster, models, in_process, tmp_path):
    """SIGKILL to a worker in the middle of a fine-tune: Ray runs that fine-tune again, and the run ends as the
    reference."""
    driver = _driver(models, cluster.address, tmp_path, slow_from=0, sleep=4.0)
    try:
        end = time.monotonic() + 300
        while not (running := _fits_running()):
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < end, "no fine-tune started on the cluster"
            time.sleep(0.2)
        time.sleep(1.0)
        victim = running[0].pid
        os.kill(victim, signal.SIGKILL)
        out, err = driver.communicate(timeout=300)
    finally:
        driver.kill()
    assert driver.returncode == 0 and "done" in out, err[-3000:]
    assert victim not in {p.pid for p in _fits_running()}
    again = agora(*models, tmp_path)                  # finished: its records and last student, nothing trained
    assert [timeless(r, node=False) for r in again.rounds] == [timeless(r, node=False) for r in in_process.rounds]
    assert _weights(tmp_path / "round-2") == _weights(Path(in_process.config["out_dir"]) / "round-2")


def _weights(directory: Path) -> dict[str, bytes]:
    """A saved student's tensors, as bytes: equal to the bit or not."""
    from safetensors.numpy import load_file

    return {k: v.tobytes() for k, v in load_file(str(directory / "model.safetensors")).items()}


def test_a_run_interrupted_on_ray_by_ctrl_c_resumes_in_process(cluster, models, in_process, tmp_path):
    """Ctrl-C to a driver whose round-2 fine-tunes run (and would for minutes) on the cluster: it stops at once,
    its tasks cancelled (their processes gone), round 1 kept; the run resumed in process ends as the reference."""
    student, labeller = models
    driver = _driver(models, cluster.address, tmp_path, slow_from=16, sleep=300)
    try:
        end = time.monotonic() + 300
        while not _fits_running() or not (tmp_path / "state.safetensors").is_file():  # round 2 is running
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < end, "round 2 did not start on the cluster"
            time.sleep(0.2)
        time.sleep(2.0)
        interrupted = time.monotonic()
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 130 and "interrupted" in out, err[-3000:]
    assert time.monotonic() - interrupted < 30            # it did not wait for the fine-tunes to end
    end = time.monotonic() + 20
    while _fits_running():
        assert time.monotonic() < end, "the cancelled fine-tunes still run"
        time.sleep(0.2)
    assert [json.loads(line)["round"] for line in (tmp_path / "rounds.jsonl").read_text().splitlines()] == [1]
    resumed = agora(student, labeller, tmp_path)
    same_run(resumed, in_process)
    assert len(nodes(resumed, rounds=(1,)) - {"local"}) >= 1 and nodes(resumed, rounds=(2,)) == {"local"}


# -- the command line ------------------------------------------------------------------------------------------------
def _data(tmp_path: Path) -> list[str]:
    """--train/--dev/--test files of reviews, as options."""
    import csv

    options = []
    for role, (n, seed) in {"train": (24, 0), "dev": (16, 1), "test": (8, 2)}.items():
        texts, labels = reviews(n, seed)
        path = tmp_path / f"{role}.csv"
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *((t, LABELS[y]) for t, y in zip(texts, labels))])
        options += [f"--{role}", str(path)]
    return options


def _command(models, tmp_path: Path) -> list[str]:
    student, labeller = models
    return ["finetune", "--agora", "--model", str(student), "--student-arch", "none", "--labeller", str(labeller),
            *_data(tmp_path), "--out", str(tmp_path / "run"), "--recipe", "paper", "--rounds", "2",
            "--settings", "lr=2e-3,epochs=2,batch_size=4;lr=5e-4,epochs=2,batch_size=4", "--per-mistake", "2",
            "--threads", "1", "--no-progress"]


def test_the_finetune_command_runs_agoras_settings_on_the_cluster(cluster, models, tmp_path, capsys):
    from bortengine.cli import main

    assert main([*_command(models, tmp_path), "--ray-address", cluster.address]) == 0
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    assert summary["executor"].startswith(f"ray: the Ray cluster at {cluster.address}, 2 node(s)")
    ran = {s["node"] for r in summary["rounds"] for s in r["settings_trained"]}
    assert ran and all(len(n) == 56 for n in ran), ran
    assert not ray.is_initialized()


def test_the_executor_options_are_checked_before_anything_loads(models, tmp_path, capsys):
    """A wrong address fails within seconds with the cluster's message, before the student or labeller is read;
    the options that contradict each other are refused."""
    from bortengine.cli import main

    with socket.create_server(("127.0.0.1", 0)) as s:
        closed = s.getsockname()[1]              # nothing listens there once closed
    start = time.monotonic()
    code = main([*_command(models, tmp_path), "--executor", "ray", "--ray-address", f"127.0.0.1:{closed}"])
    line = assert_error_line(capsys, "finetune", code)
    assert f"cannot reach a Ray cluster at 127.0.0.1:{closed}" in line and "ray start --head" in line
    assert time.monotonic() - start < 10 and not (tmp_path / "run" / "rounds.jsonl").exists()
    code = main([*_command(models, tmp_path), "--executor", "local", "--ray-address", "127.0.0.1:6379"])
    assert "goes with the ray executor" in assert_error_line(capsys, "finetune", code)
    code = main(["finetune", "--out", str(tmp_path / "plain"), "--executor", "ray"])
    assert "--executor and --ray-address go with --agora" in assert_error_line(capsys, "finetune", code)
    assert not ray.is_initialized()
