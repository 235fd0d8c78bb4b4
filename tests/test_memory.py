"""Peak memory while loading BERT-base: at most 1.2x its fp32 weights + 64 MiB of RSS for the whole process.

Why it holds: weights are read one tensor at a time with file reads (no memory map), each layer is handed to the
native encoder, which packs it, and dropped before the next is read; embeddings are referenced, not copied.
Measured as VmHWM (the peak RSS of the process's own address space) of a fresh interpreter, interpreter and
libraries included. Not ru_maxrss: Linux carries that over from the parent across fork + exec, so a child of a
big pytest process would report the parent's size.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bortengine.engine.weights import read_safetensors_header
from conftest import NATIVE
from test_isolation import PRELUDE, _env

MiB = 1024 * 1024


@pytest.mark.slow
@pytest.mark.skipif(not NATIVE, reason="native core not built (the NumPy stand-in keeps float64 copies)")
def test_peak_rss_loading_bert_base(make_model):
    path = make_model(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                      seed=30)
    weights = sum(e.nbytes for e in read_safetensors_header(path / "model.safetensors").values()
                  if e.dtype == "F32")
    code = PRELUDE + f"""
import json, numpy as np
engine = bortengine.load({str(path)!r})
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
peak_load = int(status["VmHWM"].split()[0]) * 1024
out = engine(np.array([[101, 2000, 102]]))
print(json.dumps({{"peak_load": peak_load, "packed": engine._encoder.packed_bytes}}))
"""
    result = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    budget = 1.2 * weights + 64 * MiB
    assert stats["peak_load"] <= budget, (
        f"peak RSS {stats['peak_load'] / MiB:.0f} MiB while loading {weights / MiB:.0f} MiB of fp32 weights; "
        f"budget {budget / MiB:.0f} MiB (packed {stats['packed'] / MiB:.0f} MiB)")
