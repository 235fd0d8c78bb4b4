"""The inference engine: load() a Hugging Face encoder directory (BERT, RoBERTa, XLM-R, CamemBERT, DistilBERT,
ELECTRA, MPNet) and run it on the native kernels.

Everything a service needs to serve a model, and nothing else: the model's config, its safetensors weights, its
tokenizer, its pooling, the Engine that composes them, and what the native module tells about this CPU. Torch-free
(numpy, safetensors, tokenizers and the native module only); every other stage builds on this one, never the
reverse.
"""
from __future__ import annotations

from bortengine.engine.batching import DEFAULT_MAX_BATCH_TOKENS, BatchRecord
from bortengine.engine.config import INT8_RECORD, ModelConfig
from bortengine.engine.native import available_cpus, available_isas, core, core_build, cpu_info, forward_ops
from bortengine.engine.outputs import ClassificationResult, EncoderOutput, RankedDocument, TokenEntity, softmax
from bortengine.engine.pooling import POOLING_CONFIG_KEYS, Pooling, sentence_transformers_config, transformer_directory
from bortengine.engine.runtime import DTYPES, Engine, bf16_runs_fast, load, tokenized_on_loop, traced_forwards
from bortengine.engine.tokenization import TextTokenizer, TokenizedTexts, as_text_list, characters
from bortengine.engine.weights import (QUANTIZABLE_LAYER_WEIGHTS, SCALE_SUFFIX, BertWeights, Checkpoint, TensorEntry,
                                       int8_kernels, int8_stored_bf16, read_safetensors_header,
                                       write_safetensors)

__all__ = [
    "load", "Engine", "EncoderOutput", "ClassificationResult", "ModelConfig", "Pooling", "TextTokenizer",
    "BertWeights", "Checkpoint", "as_text_list", "softmax", "traced_forwards", "available_cpus", "available_isas",
    "cpu_info", "core", "core_build", "QUANTIZABLE_LAYER_WEIGHTS", "SCALE_SUFFIX", "BatchRecord",
    "DEFAULT_MAX_BATCH_TOKENS", "tokenized_on_loop", "TokenizedTexts", "characters", "TokenEntity", "RankedDocument",
    "DTYPES", "TensorEntry", "read_safetensors_header", "write_safetensors", "transformer_directory",
    "POOLING_CONFIG_KEYS", "int8_kernels", "int8_stored_bf16", "forward_ops", "INT8_RECORD", "bf16_runs_fast",
    "sentence_transformers_config",
]
