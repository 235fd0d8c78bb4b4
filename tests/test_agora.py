"""Agora's loop on tiny non-text data (numpy learners, Gaussian transformation): the round bookkeeping, Θ
shrinking, resume, and the robustness cases of issue #6. No torch; well under a second each."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from bortengine.agora import (AgoraConfig, AgoraError, GaussianNoise, best_position, evaluate_rounds, fit_setting,
                              parse_settings, run_agora, scarce_subset)
from bortengine.training import read_checkpoint, write_checkpoint

# Shapes: N points, F = 2 features. Two Gaussian blobs; the truth is the sign of x0 + x1.


def blobs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2))
    y = (x.sum(axis=1) > 0).astype(np.int64)
    return [row for row in x], y


class Centroids:
    """Nearest class mean: a 'student' whose only hyper-parameter `shrink` pulls the means towards 0."""

    def __init__(self, means: np.ndarray):
        self.means = means                                     # [L,F]

    def predict(self, points):
        x = np.stack(points)                                   # [N,F]
        return np.argmin(((x[:, None, :] - self.means[None]) ** 2).sum(-1), axis=1)


def save_centroids(model, directory):
    """save_model of the loop: a round's student as arrays in the training checkpoint format (never a pickle)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_checkpoint(directory / "model.safetensors", "centroids", {}, {"means": model.means})


def load_centroids(directory):
    return Centroids(read_checkpoint(directory / "model.safetensors", "centroids").tensors["means"])


class CentroidTrainer:
    def __init__(self):
        self.calls = []

    def fit(self, setting, points, labels, seed, dev=None):
        self.calls.append((dict(setting), len(points), seed))
        x = np.stack(points)
        means = np.stack([x[labels == c].mean(axis=0) if np.any(labels == c) else np.zeros(2) for c in (0, 1)])
        return Centroids(means * (1.0 - setting.get("shrink", 0.0)))


class Oracle:
    labels = None

    def predict(self, points):
        return (np.stack(points).sum(axis=1) > 0).astype(np.int64)


THETA = [{"shrink": 0.0}, {"shrink": 0.5}, {"shrink": 0.9}]


def run(tmp_path=None, **overrides):
    train = blobs(20, 0)
    dev = blobs(60, 1)
    trainer = overrides.pop("trainer", None) or CentroidTrainer()
    runner = overrides.pop("runner", None)
    config = AgoraConfig(settings=overrides.pop("settings", THETA), seed=0,
                         out_dir=str(tmp_path) if tmp_path else None, **overrides)
    return run_agora(config, trainer, train, dev, Oracle(), GaussianNoise(scale=0.2), save_model=save_centroids,
                     load_model=load_centroids, runner=runner), trainer


def test_rounds_shrink_theta_and_grow_training_set():
    result, trainer = run()
    assert [r.theta_left for r in result.rounds] == [2, 1, 0]
    assert result.stopped_by == "theta empty"
    assert len(trainer.calls) == 3 + 2 + 1
    # the worst setting (shrink 0.9 scores no better than the others) is dropped first; seeds follow the setting
    assert {c[2] for c in trainer.calls} <= {0, 1, 2}
    first, second = result.rounds[0], result.rounds[1]
    assert second.train_size == first.train_size + first.generated
    assert first.generated == 4 * first.dev_mistakes > 0
    assert result.rounds[-1].generated == 0 and "last round" in result.rounds[-1].note
    assert 0.0 <= first.label_agreement <= 1.0
    assert result.final.test_accuracy is None       # the loop never measures test


def timeless(record, node: bool = True) -> dict:
    """A round's record without its clock (the round's and each setting's seconds) and, with node=False, without
    where each setting ran: what a repeated run must reproduce."""
    row = record if isinstance(record, dict) else record.to_dict()
    drop = {"seconds"} | (set() if node else {"node"})
    return row | {"seconds": 0, "settings_trained": [{k: v for k, v in s.items() if k not in drop}
                                                     for s in row["settings_trained"]]}


def test_round_budget_and_seeded_reproducibility():
    a, _ = run(rounds=2, per_mistake=3)
    b, _ = run(rounds=2, per_mistake=3)
    assert len(a.rounds) == 2 and a.stopped_by == "round budget"
    assert [timeless(r) for r in a.rounds] == [timeless(r) for r in b.rounds]
    assert {s["node"] for r in a.rounds for s in r.settings_trained} == {"local"}
    assert a.executor == "local: in this process, one setting after another"


class ReversedRunner:
    """A settings runner that finishes a round's settings in the opposite order, as parallel workers may, keeps
    every model, and says they ran "elsewhere"."""

    capacity = 3

    def run_round(self, trainer, runs, work, on_result):
        done = {}
        for run in reversed(runs):
            model, result = fit_setting(trainer, run, work)
            done[run.index] = (model, replace(result, node="elsewhere"))
            on_result(done[run.index][1])
        results = [done[run.index][1] for run in runs]
        return results, done[runs[best_position(results)].index][0]

    def describe(self):
        return "elsewhere, backwards"


def test_a_runner_that_finishes_the_settings_in_another_order_gives_the_same_run(tmp_path):
    """Where and in which order the settings of a round run does not change the run: the same records (but for
    the nodes), the same student; ties still go to the earlier setting of Θ; and a run interrupted on one runner
    resumes on the other."""
    reference, _ = run(tmp_path / "here", rounds=2)
    elsewhere, _ = run(tmp_path / "there", rounds=2, runner=ReversedRunner())
    assert [timeless(r, node=False) for r in elsewhere.rounds] == [timeless(r, node=False) for r in reference.rounds]
    assert np.array_equal(elsewhere.model.means, reference.model.means)
    assert {s["node"] for r in elsewhere.rounds for s in r.settings_trained} == {"elsewhere"}
    assert elsewhere.executor == "elsewhere, backwards"
    assert json.loads((tmp_path / "there" / "agora.json").read_text())["executor"] == "elsewhere, backwards"
    twins = [{"shrink": 0.9, "twin": 0}, {"shrink": 0.9, "twin": 1}, {"shrink": 0.0, "twin": 2}]
    tied, _ = run(settings=twins, rounds=1, runner=ReversedRunner())
    first = tied.rounds[0].settings_trained
    assert first[0]["dev_accuracy"] == first[1]["dev_accuracy"] and tied.rounds[0].best_setting == twins[0]

    class StoppedInRound2(CentroidTrainer):
        def fit(self, setting, points, labels, seed, dev=None):
            if len(points) > 20:                              # round 2: the training set has grown
                raise KeyboardInterrupt
            return super().fit(setting, points, labels, seed, dev)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", rounds=2, runner=ReversedRunner(), trainer=StoppedInRound2())
    resumed, trainer = run(tmp_path / "cut", rounds=2)            # in process
    assert len(trainer.calls) == 2                                # round 2 alone
    assert [timeless(r, node=False) for r in resumed.rounds] == [timeless(r, node=False) for r in reference.rounds]
    assert [{s["node"] for s in r.settings_trained} for r in resumed.rounds] == [{"elsewhere"}, {"local"}]


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    full, _ = run(tmp_path / "full")

    class Interrupt(Exception):
        pass

    class Failing(CentroidTrainer):
        def fit(self, setting, points, labels, seed, dev=None):
            if len(self.calls) == 4:                          # in round 2, after round 1's state was written
                raise Interrupt
            return super().fit(setting, points, labels, seed, dev)

    with pytest.raises(Interrupt):
        run(tmp_path / "cut", trainer=Failing())
    resumed, trainer = run(tmp_path / "cut")
    assert len(trainer.calls) == 2 + 1                        # round 1 not repeated
    assert [r.dev_accuracy for r in resumed.rounds] == [r.dev_accuracy for r in full.rounds]
    assert [r.train_size for r in resumed.rounds] == [r.train_size for r in full.rounds]
    # a finished run called again returns its last student without training
    again, trainer = run(tmp_path / "cut")
    assert trainer.calls == [] and again.model is not None
    rows = evaluate_rounds(tmp_path / "cut", blobs(50, 2), load_centroids)
    assert [r["round"] for r in rows] == [1, 2, 3] and all(0.5 < r["test_accuracy"] <= 1 for r in rows)


def test_state_of_another_run_is_refused(tmp_path):
    run(tmp_path, rounds=1)
    with pytest.raises(AgoraError, match="different Agora run"):
        run(tmp_path, rounds=1, per_mistake=2)


def test_out_dir_needs_a_way_to_save_the_students(tmp_path):
    """Round students are kept by the caller's save_model (HF directories, arrays), never pickled by the loop."""
    with pytest.raises(AgoraError, match="save_model"):
        run_agora(AgoraConfig(settings=THETA, out_dir=str(tmp_path)), CentroidTrainer(), blobs(20, 0),
                  blobs(60, 1), Oracle(), GaussianNoise())
    run(tmp_path, rounds=1)
    with pytest.raises(AgoraError, match="load_model"):
        evaluate_rounds(tmp_path, blobs(50, 2))


def test_empty_theta():
    with pytest.raises(AgoraError, match="Θ is empty"):
        run(settings=[])


def test_dev_with_single_class():
    train = blobs(20, 0)
    x, _ = blobs(10, 1)
    with pytest.raises(AgoraError, match="single class"):
        run_agora(AgoraConfig(settings=THETA), CentroidTrainer(), train, (x, np.ones(10, np.int64)), Oracle(),
                  GaussianNoise())


def test_labeller_whose_labels_do_not_match():
    class Wrong:
        def predict(self, points):
            return np.full(len(points), 7)

    with pytest.raises(AgoraError, match="outside the task"):
        run_agora(AgoraConfig(settings=THETA), CentroidTrainer(), blobs(20, 0), blobs(60, 1), Wrong(),
                  GaussianNoise())

    class Named(Oracle):
        labels = ["spam", "ham"]

    with pytest.raises(AgoraError, match="do not match the task"):
        run_agora(AgoraConfig(settings=THETA, label_names=["negative", "positive"]), CentroidTrainer(),
                  blobs(20, 0), blobs(60, 1), Named(), GaussianNoise())

    class NoPredict:
        pass

    with pytest.raises(AgoraError, match="predict"):
        run_agora(AgoraConfig(settings=THETA), CentroidTrainer(), blobs(20, 0), blobs(60, 1), NoPredict(),
                  GaussianNoise())


def test_transformation_that_returns_nothing():
    result = run_agora(AgoraConfig(settings=THETA), CentroidTrainer(), blobs(20, 0), blobs(60, 1), Oracle(),
                       lambda points, rng, n: [[] for _ in points])
    assert all(r.generated == 0 for r in result.rounds)
    assert "returned no points" in result.rounds[0].note
    assert len({r.train_size for r in result.rounds}) == 1
    with pytest.raises(AgoraError, match="one list of new points per input point"):
        run_agora(AgoraConfig(settings=THETA), CentroidTrainer(), blobs(20, 0), blobs(60, 1), Oracle(),
                  lambda points, rng, n: [])


def test_cap_on_new_points():
    result, _ = run(max_new_per_round=5)
    assert all(r.generated <= 5 for r in result.rounds)


def test_gaussian_noise_shapes_and_spread():
    rng = np.random.default_rng(0)
    points = [np.zeros(3), np.ones(3)]
    out = GaussianNoise(scale=0.5, std=np.array([1.0, 2.0, 4.0]))(points, rng, 400)
    assert len(out) == 2 and len(out[0]) == 400 and out[0][0].shape == (3,)
    spread = np.stack(out[0]).std(axis=0)
    np.testing.assert_allclose(spread, [0.5, 1.0, 2.0], rtol=0.15)


def test_parse_settings():
    assert parse_settings("lr=2e-4,epochs=8;lr=4e-4,epochs=4, batch_size=16") == [
        {"lr": 2e-4, "epochs": 8.0}, {"lr": 4e-4, "epochs": 4.0, "batch_size": 16}]
    assert parse_settings('[{"lr": 0.001}]') == [{"lr": 0.001}]
    assert len(parse_settings(None)) >= 2
    with pytest.raises(AgoraError):
        parse_settings("lr")


def test_scarce_subset_is_stratified_and_seeded():
    class E:
        def __init__(self, label):
            self.label = label

    examples = [E(1)] * 600 + [E(0)] * 600              # ordered by label, like the committed RT split
    a = scarce_subset(examples, 500, 0)
    assert len(a) == 500 and sum(e.label for e in a) == 250
    assert scarce_subset(examples, None, 0) == examples


def test_import_does_not_load_torch():
    code = "import sys, bortengine.agora; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_agora_needs_a_labeller(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bortengine", "finetune", "--agora", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--labeller" in proc.stderr


def test_summarize_and_plot(tmp_path):
    from bortengine.agora import summarize

    def write(name, plain, final, rounds=2):
        d = tmp_path / name
        d.mkdir()
        rows = [{"round": k + 1, "dev_accuracy": 0.7, "test_accuracy": plain if k == 0 else final,
                 "seconds": 120.0 * (k + 1)} for k in range(rounds)]
        # a resumed run: its last call only finished the loop, the rounds' own times are what it cost
        (d / "result.json").write_text(json.dumps({"plain_test_accuracy": plain, "agora_test_accuracy": final,
                                                   "rounds": rows, "wall_seconds_this_call": 4.0}))
        return d

    runs = [write("a", 0.70, 0.74), write("b", 0.68, 0.73)]
    refs = [write("r", 0.78, 0.78, rounds=1)]
    out = summarize(runs, refs, tmp_path / "plot.png")
    assert out["gain"]["mean"] == pytest.approx(0.045)
    assert out["gap_closed"] == pytest.approx(0.045 / 0.09)
    assert out["minutes_per_run"]["values"] == pytest.approx([6.0, 6.0])     # (120 + 240) s, not the last call's 4 s
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_summarize_refuses_what_is_not_a_run(tmp_path, capsys):
    from bortengine.agora import AgoraError, main, summarize

    log = tmp_path / "seed-0.log"
    log.write_text("a log, not a run directory")
    with pytest.raises(AgoraError, match="not a finished Agora run directory"):
        summarize([log])
    assert main([str(tmp_path / "missing")]) == 2
    assert "not a finished Agora run directory" in capsys.readouterr().err


class ConfidentOracle(Oracle):
    """The oracle with logits: its confidence grows with the distance |x0 + x1| from the class boundary."""

    def logits(self, points):
        s = 4.0 * np.stack(points).sum(axis=1)
        return np.stack([-s, s], axis=1)                      # [N,2]


def test_min_confidence_drops_points_the_labeller_is_unsure_of():
    kept_all, _ = run(rounds=2)
    result = run_agora(AgoraConfig(settings=THETA, rounds=2, seed=0, min_confidence=0.9), CentroidTrainer(),
                       blobs(20, 0), blobs(60, 1), ConfidentOracle(), GaussianNoise(scale=0.2))
    first = result.rounds[0]
    assert first.unconfident > 0 and first.generated + first.unconfident == kept_all.rounds[0].generated
    assert result.rounds[1].train_size == first.train_size + first.generated
    # a threshold nothing reaches leaves the training set unchanged, with a note
    none = run_agora(AgoraConfig(settings=THETA, rounds=2, min_confidence=1.0), CentroidTrainer(), blobs(20, 0),
                     blobs(60, 1), type("Flat", (Oracle,), {"logits": lambda self, p: np.zeros((len(p), 2))})(),
                     GaussianNoise(scale=0.2))
    assert none.rounds[0].generated == 0 and "below confidence" in none.rounds[0].note
    with pytest.raises(AgoraError, match="logits"):
        run(min_confidence=0.9)                               # Oracle has predict only
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(AgoraError, match="min_confidence must lie in"):
            run_agora(AgoraConfig(settings=THETA, min_confidence=bad), CentroidTrainer(), blobs(20, 0),
                      blobs(60, 1), ConfidentOracle(), GaussianNoise())


def test_select_fraction_keeps_selection_apart_from_generation():
    seen_dev, sources = [], []

    class Recording(CentroidTrainer):
        def fit(self, setting, points, labels, seed, dev=None):
            seen_dev.append({tuple(p) for p in dev[0]})
            return super().fit(setting, points, labels, seed, dev)

    def transform(points, rng, n):
        sources.extend(tuple(p) for p in points)
        return GaussianNoise(scale=0.2)(points, rng, n)

    dev = blobs(60, 1)
    result = run_agora(AgoraConfig(settings=THETA, seed=0, select_fraction=0.5), Recording(), blobs(20, 0), dev,
                       Oracle(), transform)
    select = seen_dev[0]
    assert all(s == select for s in seen_dev) and len(select) == 30       # the same half in every fit
    assert sum(int(dev[1][k]) for k, p in enumerate(dev[0]) if tuple(p) in select) == round(dev[1].sum() / 2)
    assert sources and not set(sources) & select             # no point is generated around the selection part
    first = result.rounds[0]
    assert first.mistake_dev_accuracy is not None and first.dev_mistakes == round((1 - first.mistake_dev_accuracy) * 30)
    again = run_agora(AgoraConfig(settings=THETA, seed=0, select_fraction=0.5), CentroidTrainer(), blobs(20, 0),
                      dev, Oracle(), GaussianNoise(scale=0.2))
    assert [r.dev_accuracy for r in again.rounds] == [r.dev_accuracy for r in result.rounds]   # seeded split
    for bad in (0.0, 1.0, 2.0):
        with pytest.raises(AgoraError, match="select_fraction must lie in"):
            run(select_fraction=bad)
    x, y = blobs(10, 1)
    y = np.array([0] * 9 + [1])                               # one point of class 1: it cannot be on both sides
    with pytest.raises(AgoraError, match=r"class 1 has 1 dev example\(s\).* or fine-tune without Agora "
                                         r"\(`bortengine pipeline --no-agora`\)"):
        run_agora(AgoraConfig(settings=THETA, select_fraction=0.5), CentroidTrainer(), blobs(20, 0), (x, y),
                  Oracle(), GaussianNoise())


def test_new_options_left_unset_keep_the_fingerprint_of_earlier_runs():
    from dataclasses import asdict

    config = AgoraConfig(settings=THETA, seed=3)
    # the fields of the earliest runs: the options added since (and the time budget, never part of a run's
    # identity) are left out of the fingerprint while unset
    keys = {k: v for k, v in asdict(config).items()
            if k not in ("out_dir", "trainer_settings", "min_confidence", "select_fraction", "time_budget")}
    import hashlib

    assert config.fingerprint() == hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert AgoraConfig(settings=THETA, seed=3, select_fraction=0.5).fingerprint() != config.fingerprint()
    assert AgoraConfig(settings=THETA, seed=3, time_budget=60.0).fingerprint() == config.fingerprint()


def test_distill_on_generated_needs_a_weight_and_a_known_choice(tmp_path):
    from bortengine.agora import finetune_agora

    with pytest.raises(AgoraError, match="needs a distillation weight"):
        finetune_agora("no-labeller", str(tmp_path), distill_on="generated", distill_weight=0.0)
    with pytest.raises(AgoraError, match="distill_on must be"):
        finetune_agora("no-labeller", str(tmp_path), distill_on="originals", distill_weight=0.5)
    proc = subprocess.run([sys.executable, "-m", "bortengine", "finetune", "--agora", "--labeller", "x",
                           "--agora-distill-on", "originals", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "--agora-distill-on" in proc.stderr


def test_recipes_fill_what_is_not_given():
    from bortengine.agora import RECIPES, resolve_recipe

    scarce = resolve_recipe()
    assert scarce == {**RECIPES["scarce"], "settings": [dict(x) for x in RECIPES["scarce"]["settings"]]}
    assert scarce["per_mistake"] == 128 and scarce["distill_on"] == "generated" and scarce["select_fraction"] == 0.5
    paper = resolve_recipe("paper")
    assert (paper["per_mistake"], paper["fraction"], paper["distill_weight"], paper["select_fraction"]) == \
        (4, 0.25, 0.0, None)
    mixed = resolve_recipe("scarce", per_mistake=8, select_fraction=0)       # 0: none of dev kept apart
    assert mixed["per_mistake"] == 8 and mixed["select_fraction"] is None and mixed["fraction"] == 0.4
    hard = resolve_recipe("scarce", distill_weight=0.0)                       # the recipe's "generated" is moot then
    assert hard["distill_weight"] == 0.0 and hard["distill_on"] == "all"
    assert resolve_recipe("paper", distill_weight=0.5, distill_on="generated")["distill_on"] == "generated"
    # the recipe's Θ is what the measured runs' --settings parsed to, so both spellings are one run (fingerprint)
    from bortengine.agora import parse_settings
    theta = parse_settings("lr=3e-4,epochs=6;lr=6e-4,epochs=6")
    assert json.dumps(scarce["settings"]) == json.dumps(theta)
    assert AgoraConfig(settings=scarce["settings"]).fingerprint() == AgoraConfig(settings=theta).fingerprint()
    scarce["settings"][0]["lr"] = 1.0                                         # a copy: the recipe is unchanged
    assert RECIPES["scarce"]["settings"][0]["lr"] == 3e-4
    with pytest.raises(AgoraError, match="recipe must be one of"):
        resolve_recipe("best")


def test_cli_recipe_is_checked(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bortengine", "finetune", "--agora", "--labeller", "x",
                           "--recipe", "best", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "--recipe" in proc.stderr


class SlowTrainer(CentroidTrainer):
    """Each fit takes 0.3 s of wall time (sleeping), like a fine-tune of fixed cost."""

    def fit(self, setting, points, labels, seed, dev=None):
        import time

        time.sleep(0.3)
        return super().fit(setting, points, labels, seed, dev)


def test_a_time_budget_makes_the_round_whose_successor_would_not_fit_the_last():
    import time

    start = time.monotonic()
    # round 1 trains the 3 settings of Θ (0.9 s); round 2 would train 2 on more points (>= 0.6 s): past 1.2 s
    result, _ = run(trainer=SlowTrainer(), time_budget=1.2)
    assert result.stopped_by == "time budget"
    assert [r.round for r in result.rounds] == [1]
    assert result.rounds[0].generated == 0           # the last round generates nothing no round would train on
    assert time.monotonic() - start < 1.2 + 0.5
    unbounded, _ = run(trainer=SlowTrainer(), time_budget=None, rounds=2)
    assert [r.round for r in unbounded.rounds] == [1, 2]
