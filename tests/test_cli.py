"""The command line: `info`, `demo` (short settings), and the one error convention of every command (a
BortEngineError is one line `bortengine <command>: error: ...`, exit 2; a malformed argument is argparse's usage
and error, exit 2; never a traceback). The training commands' cases are in tests/test_training_cli.py."""
from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bortengine
from bortengine.cli import demo, main
from bortengine.cli.arguments import architecture, duration, shape
from conftest import NATIVE
from test_isolation import _env


def assert_error_line(capsys, command: str, code: int) -> str:
    """The command failed with exit code 2 and exactly one line on stderr, in the convention; returns the line."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"bortengine {command}: error: "), err
    return lines[0]


def assert_usage_error(capsys, argv: list[str], command: str) -> str:
    """argparse rejected the arguments: exit code 2, the command's usage, its error line last; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"usage: bortengine {command}"), err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"bortengine {command}: error: argument ") and "Traceback" not in err, err
    return last


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for isa in bortengine.available_isas():
        assert isa in out
    assert "default ISA" in out
    core = bortengine.engine.core()
    assert core.int8_kernel_name() in out and core.bf16_kernel_name() in out
    for isa in bortengine.available_isas():  # every kernel a path could be forced to, best first
        assert f"{isa} ({', '.join(core.int8_kernel_names(isa))})" in out
        assert f"{isa} ({', '.join(core.bf16_kernel_names(isa))})" in out


def test_info_bad_argument(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "--fast"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --fast" in capsys.readouterr().err


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert bortengine.__version__ in capsys.readouterr().out
    assert main([]) == 1
    assert "demo" in capsys.readouterr().out


def test_demo_short(capsys):
    assert main(["demo", "--threads", "1", "--batch", "1x8", "2x16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "0.7553 (expected 0.7553) ok" in out
    assert "max abs diff" in out and "MISMATCH" not in out
    assert "1x8" in out and "2x16" in out and "speed-up" in out
    assert out.strip().endswith("demo passed")


SHORT_DEMO = ["--threads", "1", "--batch", "1x8", "--repeats", "1"]


@pytest.mark.parametrize("kind", ["classifier", "plain BertModel without token types"])
def test_demo_own_model_is_checked_against_transformers(small_classifier, make_model, capsys, kind):
    """--model DIR: MiniLM's published cosine is not asked of the user's model; every output it has is checked
    against transformers on the same weights, on sentences and (with token types) on sentence pairs."""
    classifier = kind == "classifier"
    path = small_classifier if classifier else make_model(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, head="none",
        type_vocab_size=1, seed=6)
    assert main(["demo", "--model", str(path), *SHORT_DEMO]) == 0
    out = capsys.readouterr().out
    assert "(expected 0.7553)" not in out and "for information; all-MiniLM-L6-v2 gives 0.7553" in out
    checked = ["last_hidden_state", "embeddings"] + (["pooler_output", "logits"] if classifier else [])
    for name in checked:
        assert re.search(rf"\n\s+{name}\s+max abs diff \S+ \(tolerance 1e-04\) ok\n", out), name
    assert ("logits" in out) == classifier and ("pooler_output" in out) == classifier
    assert ("and 4 sentence pairs" in out) == classifier  # type_vocab_size 2 vs 1
    assert "MISMATCH" not in out and out.strip().endswith("demo passed")


def test_demo_own_model_check_can_fail(small_classifier, make_model, capsys):
    """The check reports MISMATCH and fails when transformers runs other weights of the same shapes (another seed)."""
    other = make_model(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
                       head="classifier", num_labels=3, seed=4)
    reference = demo._load_reference(other, 1, bortengine.load(other, num_threads=1))
    assert demo._check_outputs(bortengine.load(small_classifier, num_threads=1), reference) is False
    out = capsys.readouterr().out
    for name in ("last_hidden_state", "pooler_output", "embeddings", "logits"):
        assert re.search(rf"{name}\s+max abs diff \S+ \(tolerance 1e-04\) MISMATCH", out), name


def test_demo_own_int8_export_says_it_is_not_checked(small_model, tmp_path, capsys):
    """transformers would read a pre-quantized checkpoint's int8 weights as floats: the demo says so, checks
    nothing and does not claim to have passed."""
    from bortengine.export import quantize_checkpoint

    model = tmp_path / "int8"
    shutil.copytree(small_model, model)
    quantize_checkpoint(model)
    assert main(["demo", "--model", str(model), *SHORT_DEMO]) == 0
    out = capsys.readouterr().out
    assert "pre-quantized int8 checkpoint" in out and "[4/5] skipped (no reference)" in out
    assert out.strip().endswith("demo done; the model was NOT checked against transformers (see step 3)")


@pytest.mark.parametrize("argv, says", [(["--batch", "eight"], "BxT"), (["--batch", "8x1"], "T >= 2"),
                                        (["--repeats", "0"], "positive integer")])
def test_demo_bad_arguments(capsys, argv, says):
    assert says in assert_usage_error(capsys, ["demo", *argv], "demo")


@pytest.mark.parametrize("kind", ["empty directory", "empty config.json", "broken config.json", "a file"])
def test_demo_bad_model_is_reported(tmp_path, capsys, kind):
    model = tmp_path / "model"
    if kind == "a file":
        model.write_text("")
    else:
        model.mkdir()
        if kind != "empty directory":
            (model / "config.json").write_text("" if kind == "empty config.json" else "{")
    assert_error_line(capsys, "demo", main(["demo", "--model", str(model)]))


def test_demo_error_is_reported(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in assert_error_line(capsys, "demo", 2)


@pytest.mark.parametrize("command", ["profile", "profile-validate"])
def test_profile_bad_arguments(capsys, command):
    assert "invalid int value" in assert_usage_error(capsys, [command, "--batch", "one"], command)


def test_profile_bad_files(tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    assert "not valid JSON" in assert_error_line(capsys, "profile", main(["profile", "--show", str(empty)]))
    code = main(["profile-validate", "--out", str(empty)])
    assert "not valid JSON" in assert_error_line(capsys, "profile-validate", code)
    code = main(["profile", "--quick", "--out", str(empty / "profile.json")])
    assert "is a file" in assert_error_line(capsys, "profile", code)
    code = main(["profile-validate", "--out", str(empty), "--report", str(tmp_path)])
    assert "is a directory" in assert_error_line(capsys, "profile-validate", code)
    # a folder nothing can be written in (root writes everywhere else): refused before measuring, not a traceback
    # after it
    if Path("/proc/self").is_dir():
        code = main(["profile", "--quick", "--space", "minilm", "--out", "/proc/profile.json"])
        assert "--out /proc/profile.json: cannot write in /proc" in assert_error_line(capsys, "profile", code)
    code = main(["profile", "--quick", "--space", "minilm", "--seq", "100000", "--out", str(tmp_path / "p.json")])
    assert "seq_len 100000 is more than the 512 positions the minilm space's models have" in \
        assert_error_line(capsys, "profile", code)


def test_profile_interrupt_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from bortengine import profiling

    def interrupted(*args, **kwargs):
        raise profiling.ProfileInterrupted(tmp_path / "p.json", 3, 9)

    monkeypatch.setattr(profiling, "profile", interrupted)
    assert main(["profile", "--space", "minilm", "--quick", "--out", str(tmp_path / "p.json")]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("bortengine profile: interrupted: 3 of 9") and err.endswith("again to resume")


# A real extraction whose surrogate evaluations each take two minutes, on two spawned worker processes.
_SLOW_EXTRACTION = """
import sys
from bortengine.cli import extract, main
from bortengine.search import AnalyticSurrogate
extract.resolve_surrogate = lambda *args, **kwargs: AnalyticSurrogate(delay=120)
sys.exit(main(sys.argv[1:]))
"""


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:          # exited meanwhile
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_killed_extraction_ends_its_workers_and_says_how_to_resume(tmp_path):
    """SIGTERM (systemd, docker, CI) stops a command as Ctrl-C does: its worker processes end with it (they were
    left running, re-parented to init, for minutes), one line says so, exit code 143."""
    from test_search import synthetic

    from bortengine.search_space import MINILM_SPACE

    profile = synthetic(MINILM_SPACE).save(tmp_path / "profile.json")
    argv = ["extract", "--space", "minilm", "--profile", str(profile), "--batch", "1", "--seq", "16", "--threads",
            "2", "--surrogate", "analytic", "--workers", "2", "--cache", str(tmp_path / "cache"), "--measure", "0",
            "--no-progress", "--out", str(tmp_path / "out")]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_EXTRACTION, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 120
        while len(children := _children(proc.pid)) < 2:    # the two workers (and pythons's resource tracker)
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        time.sleep(2)                                        # evaluations under way
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 143
    finally:
        proc.kill()
    lines = proc.stderr.read().strip().splitlines()
    assert lines[-1].startswith("bortengine extract: terminated (SIGTERM)"), lines
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in children):
        assert time.monotonic() < deadline, f"worker processes outlived the command: {children}"
        time.sleep(0.1)


def test_extract_errors(tmp_path, capsys):
    assert "--eps" in assert_usage_error(capsys, ["extract", "--eps", "small", "--out", str(tmp_path)], "extract")
    empty = tmp_path / "empty.json"
    empty.write_text("")
    code = main(["extract", "--profile", str(empty), "--out", str(tmp_path / "out")])
    assert "not valid JSON" in assert_error_line(capsys, "extract", code)


def test_warnings_on_the_console_are_lines_of_the_command():
    """The default format printed the warning's Python source line (`  prof = profile(space, workload, ...`)."""
    script = ("import warnings, sys\nfrom bortengine.cli import info, main\n"
              "def run(args):\n    warnings.warn('the profile is old', RuntimeWarning)\n    return 0\n"
              "info.run = run\nsys.exit(main(['info']))\n")
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "bortengine info: warning: the profile is old (RuntimeWarning)\n"


def test_out_of_memory_is_an_error_line_not_a_traceback(capsys, monkeypatch):
    """Sizes the machine cannot hold (profile --batch 100000 --seq 512: the native core's std::bad_alloc; a space
    file of 10^6-wide models: NumPy's) ended in a MemoryError traceback."""
    from bortengine.cli import info

    def too_big(args):
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(info, "run", too_big)
    line = assert_error_line(capsys, "info", main(["info"]))
    assert "out of memory (std::bad_alloc)" in line and "ask for smaller ones" in line


@pytest.mark.parametrize("argv, says", [
    (["pretrain", "--arch", "4,7,1000,768", "--out", "x"], "argument --arch: Architecture hidden=1000"),
    (["finetune", "--time-budget", "soon", "--out", "x"], "argument --time-budget: a duration"),
    (["export", "missing-run", "--out", "x"], "error: run directory missing-run does not exist"),
])
def test_errors_from_the_console_are_one_line(tmp_path, argv, says):
    proc = subprocess.run([sys.executable, "-m", "bortengine", *argv], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"bortengine {argv[0]}: error: ")


texts = st.one_of(st.text(), st.from_regex(r"\s*-?[0-9]{0,4}(\.[0-9]+)?\s*[smhxSMHX]?\s*[0-9]{0,3}", fullmatch=True),
                  st.lists(st.integers(-2, 600), min_size=1, max_size=5).map(lambda v: ",".join(map(str, v))))


@settings(max_examples=300, deadline=None)
@given(texts)
def test_argument_types_parse_or_reject(text):
    """The duration, BxT shape and architecture types return a value or raise ArgumentTypeError, nothing else."""
    for parse in (duration, shape, architecture):
        try:
            parse(text)
        except argparse.ArgumentTypeError as e:
            assert str(e)


def test_argument_types_values():
    assert duration("1.5h") == 5400 and duration("90s") == 90 and shape("8X128") == (8, 128)
    assert architecture("4,12,384,1536").tuple == (4, 12, 384, 1536)
    for parse, text in ((duration, "-1"), (duration, "nan"), (shape, "0x8"), (architecture, "4,7,1000,768")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_commands_have_one_shape():
    from bortengine.cli import COMMAND_MODULES

    names = [name for module in COMMAND_MODULES for name in module.COMMANDS]
    assert len(names) == len(set(names)) == 10
    assert "pipeline" in names and "serve" in names
    assert all(callable(module.add_parsers) and callable(module.run) for module in COMMAND_MODULES)


@pytest.mark.skipif(not NATIVE, reason="$BORTENGINE_ISA is read by the native core, which is not built")
def test_bortengine_isa_environment(minilm):
    code = f"""
import bortengine
print(bortengine.cpu_info()["isa"])
try:
    print(bortengine.load({str(minilm)!r}).isa)
except bortengine.InvalidInputError as e:
    print("InvalidInputError", e)
"""
    last = bortengine.available_isas()[-1]
    good = subprocess.run([sys.executable, "-c", code], env={**_env(), "BORTENGINE_ISA": last},
                          capture_output=True, text=True, timeout=120)
    assert good.stdout.split() == [last, last], good.stderr
    bad = subprocess.run([sys.executable, "-c", code], env={**_env(), "BORTENGINE_ISA": "avx9"},
                         capture_output=True, text=True, timeout=120)
    lines = bad.stdout.splitlines()
    assert lines[0] == "None" and lines[1].startswith("InvalidInputError") and "BORTENGINE_ISA" in lines[1], bad.stderr
    info = subprocess.run([sys.executable, "-m", "bortengine", "info"], env={**_env(), "BORTENGINE_ISA": "avx9"},
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "default ISA:    none" in info.stdout


@pytest.mark.skipif(not NATIVE, reason="$BORTENGINE_AMX is read by the native core, which is not built")
def test_bortengine_amx_environment(minilm):
    """BORTENGINE_AMX=0 keeps the process off AMX tiles: it runs as a CPU of the same ISA without them (int8 on the
    VNNI kernel, with FFN out on it too). Elsewhere it changes nothing."""
    code = f"""
import bortengine
engine = bortengine.load({str(minilm)!r}, dtype="int8")
print(" ".join(f for f in bortengine.cpu_info()["flags"] if f.startswith("amx")) or "-")
print(engine.kernels["ffn_in"], engine.kernels["ffn_out"])
"""
    runs = {value: subprocess.run([sys.executable, "-c", code], env={**_env(), "BORTENGINE_AMX": value},
                                  capture_output=True, text=True, timeout=120) for value in ("0", "1")}
    (amx_off, kernels_off), (amx_on, kernels_on) = (r.stdout.splitlines() for r in runs.values())
    assert amx_off == "-", runs["0"].stderr
    ffn_in, ffn_out = kernels_off.split()
    assert "amx" not in ffn_in and ffn_out == ffn_in  # FFN out stays int8 without tiles
    tiles = "amx_int8" in amx_on.split()
    assert ("amx" in kernels_on.split()[0]) == tiles and (kernels_on.split()[1].startswith("gemm_bf16_amx")) == tiles
