"""Peak resident memory of a fresh process running bortengine on BERT-base, against 1.2 x weights + 64 MiB."""
from cases import MEMORY_MODEL
from protocol import run_memory


def test_memory_bert_base(benchmark, report, threads):
    run_memory(benchmark, report, threads, MEMORY_MODEL, batch=1, tokens=128)
