"""The command line: `info`, `demo` (short settings), argument errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

import bortengine
from bortengine.cli import main
from conftest import NATIVE
from test_isolation import _env


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for isa in bortengine.available_isas():
        assert isa in out
    assert "default ISA" in out


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


def test_demo_bad_shape():
    with pytest.raises(SystemExit, match="BxT"):
        main(["demo", "--batch", "eight"])


def test_demo_error_is_reported(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


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
