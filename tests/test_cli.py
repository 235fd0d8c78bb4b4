"""The command line: `info`, `demo` (short settings), argument errors."""
from __future__ import annotations

import pytest

import bortengine
from bortengine.cli import main


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
