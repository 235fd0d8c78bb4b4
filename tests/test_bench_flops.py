"""The benchmark's FLOP count (bench/cases.encoder_flops), on which its ceiling lines rest, against PyTorch's own
FLOP counter on a transformers BertModel run over each sequence alone (no padding: the work a padding-free engine
does); and that the FMA probe, the report's arithmetic ceiling, builds and runs."""
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from cases import encoder_flops  # noqa: E402


@pytest.mark.parametrize("hidden,heads,inter,layers,lengths", [
    (64, 4, 128, 2, [5]),
    (96, 3, 200, 3, [1, 17, 40]),      # head dim 32, odd intermediate, a 1-token sequence
])
def test_encoder_flops_match_torch_flop_counter(hidden, heads, inter, layers, lengths):
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter,
                        num_hidden_layers=layers, max_position_embeddings=64, attn_implementation="eager")
    model = BertModel(config, add_pooling_layer=False).eval()
    counted = 0
    with torch.no_grad():
        for n in lengths:
            ids = torch.randint(0, 50, (1, n))
            with FlopCounterMode(display=False) as counter:
                model(input_ids=ids)
            counted += counter.get_total_flops()
    assert encoder_flops(config.to_dict(), np.array(lengths)) == counted


def test_fma_probe_builds_and_measures():
    import fma_peak

    try:
        ymm = fma_peak.measure("ymm", 1, 0.05)
    except fma_peak.ProbeUnavailable as exc:
        pytest.skip(str(exc))
    if ymm is None:
        pytest.skip("no AVX2+FMA on this CPU")
    zmm = fma_peak.measure("zmm", 1, 0.05)
    assert ymm > 1.0 and (zmm is None or zmm > 1.0)  # GFLOP/s; None where the CPU has no AVX-512
