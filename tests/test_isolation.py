"""The inference path never imports torch or transformers: `import bortengine`, load(), encode(), classify() and
`python -m bortengine info` are run in fresh interpreters that then check sys.modules."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import bortengine
from conftest import NATIVE

TESTS = Path(__file__).resolve().parent


def _env() -> dict:
    env = dict(os.environ)
    src = str(Path(bortengine.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, str(TESTS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


# Used when the native module is not built: the same stand-in as conftest.py.
PRELUDE = textwrap.dedent("""
    import sys
    import bortengine
    if not %r:
        import numpy_encoder
        sys.modules["bortengine._core"] = numpy_encoder
""" % NATIVE)


def run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_inference_path_imports_no_torch(minilm, small_classifier):
    out = run(f"""
        import bortengine
        engine = bortengine.load({str(minilm)!r})
        v = engine.encode(["A man is eating food.", "A man is eating a piece of bread."])
        engine(**engine.tokenize(["hello"]))
        bortengine.load({str(small_classifier)!r}).classify(["good", "bad"])
        bortengine.cpu_info()
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "sentence_transformers"))
        assert not heavy, heavy
        print(round(float(v[0] @ v[1]), 4))
    """)
    assert out.strip() == "0.7553"


def test_cli_info_imports_no_torch():
    out = run("""
        import runpy
        sys.argv = ["bortengine", "info"]
        try:
            runpy.run_module("bortengine", run_name="__main__")
        except SystemExit as e:
            assert not e.code, e.code
        assert "torch" not in sys.modules
    """)
    assert "isa" in out.lower()
