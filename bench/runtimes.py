"""The runtimes compared by the benchmark: bortengine, ONNX Runtime (fp32, BERT-fused graph) and PyTorch eager.

Each runtime splits one forward into prepare (convert inputs, untimed), run (timed) and last_hidden_state (back to
numpy, untimed), so the timings compare the forwards and not the conversions. All of them are given the same
weights (one Hugging Face directory) and the same number of threads.

Shapes: B = batch, T = tokens per sequence, H = hidden size.
"""
from __future__ import annotations

import gc
import hashlib
import inspect
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from cases import (CACHE_DIR, ENGINE, ENGINE_BF16, ENGINE_INT8, ORT, ORT_INT8, ORT_UNFUSED_ATTENTION, REFERENCE,
                   TORCH_BF16, TORCH_EAGER, TORCH_SDPA, EncoderInputs, ModelCase)

ONNX_OPSET = 17


class RuntimeUnavailable(Exception):
    """The runtime cannot run here (e.g. the native module is not built yet); its rows are skipped."""


class RuntimeNotForModel(RuntimeUnavailable):
    """The runtime does not exist for this model (e.g. transformers has no sdpa attention for MPNet): the model's
    rows of it are skipped, the other models' run."""


def engine_status() -> tuple[bool, str]:
    """(True, "") if bortengine.load and the native module import, else (False, why not)."""
    try:
        import bortengine
        from bortengine import _core  # noqa: F401

        bortengine.load  # noqa: B018
    except Exception as exc:  # noqa: BLE001 - any failure means "not built yet", reported verbatim
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def engine_info() -> dict:
    """ISA and kernel the engine runs with, for the report."""
    ok, why = engine_status()
    if not ok:
        return {"available": False, "reason": why}
    from bortengine import _core

    info = {"available": True, "version": getattr(_core, "__version__", "?"), "module": native_module_stamp()}
    for key, fn in (("default_isa", _core.default_isa), ("kernel", _core.kernel_name),
                    ("available_isas", _core.available_isas)):
        try:
            info[key] = fn()
        except Exception as exc:  # noqa: BLE001 - the report notes it instead of failing the run
            info[key] = f"error: {exc}"
    return info


def native_module_stamp() -> dict | None:
    """Path, size and mtime of the loaded _core file: a rebuild during a run (in-place builds overwrite the file
    that the process has mapped) would mix results of two builds, or crash; the report compares start and end."""
    try:
        from bortengine import _core

        st = os.stat(_core.__file__)
    except Exception:  # noqa: BLE001 - not built: nothing to stamp
        return None
    return {"path": _core.__file__, "size": st.st_size, "mtime": st.st_mtime}


class EngineRuntime:
    """bortengine.load(dir, num_threads=n, dtype=...): float32, int8 or bf16 (the ENGINE_INT8 / ENGINE_BF16 rows)."""

    NAMES = {"float32": ENGINE, "int8": ENGINE_INT8, "bf16": ENGINE_BF16}

    def __init__(self, model_dir: Path, threads: int, dtype: str = "float32"):
        ok, why = engine_status()
        if not ok:
            raise RuntimeUnavailable(f"bortengine not available: {why}")
        import bortengine

        self.name = self.NAMES[dtype]
        self.engine = bortengine.load(str(model_dir), num_threads=threads, dtype=dtype)

    def prepare(self, inputs: EncoderInputs):
        return inputs

    def run(self, inputs: EncoderInputs):
        return self.engine(**inputs.feeds())

    def last_hidden_state(self, output) -> np.ndarray:
        return np.asarray(output.last_hidden_state)


class TorchRuntime:
    """The family's transformers model class (AutoModel: BertModel, RobertaModel, DistilBertModel, ...) in eval mode
    under torch.inference_mode, attention "eager" or "sdpa"; with bf16, under
    torch.autocast("cpu", dtype=torch.bfloat16) (the float32 weights, matmuls in bf16: PyTorch's usual bf16 path on
    CPU, oneDNN's AVX512_BF16/AMX kernels where the CPU has them; the TORCH_BF16 rows)."""

    def __init__(self, model_dir: Path, threads: int, attention: str, bf16: bool = False):
        import torch
        from transformers import AutoModel

        set_torch_threads(threads)
        self.name = TORCH_BF16 if bf16 else {"eager": TORCH_EAGER, "sdpa": TORCH_SDPA}[attention]
        self.bf16 = bf16
        self.torch = torch
        try:
            self.model = AutoModel.from_pretrained(str(model_dir), attn_implementation=attention).eval()
        except ValueError as exc:  # e.g. MPNet: transformers has no sdpa attention for it
            if attention == "eager":
                raise
            first = str(exc).split(". ")[0]  # the rest is transformers' advice to file an issue
            raise RuntimeNotForModel(f"transformers runs no {attention!r} attention for {model_dir.name}: {first}")
        got = getattr(self.model.config, "_attn_implementation", attention)
        if got != attention:  # transformers may fall back silently; then the row would not be what it says
            raise RuntimeError(f"asked transformers for attention {attention!r}, got {got!r}")

    def prepare(self, inputs: EncoderInputs) -> dict:
        return {name: self.torch.from_numpy(array) for name, array in inputs.feeds().items()}

    def run(self, tensors: dict):
        with self.torch.inference_mode(), self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.bf16):
            return self.model(**tensors).last_hidden_state

    def last_hidden_state(self, output) -> np.ndarray:
        return output.float().numpy()


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:  # only settable before torch's first parallel region; later calls raise
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


# --- ONNX Runtime -----------------------------------------------------------------------------------------------

def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def onnx_cache_key(model: ModelCase) -> str:
    """Changes with the weights, the config and every tool that shapes the exported or fused graph."""
    import onnx
    import onnxruntime
    import torch
    import transformers

    path = model.path()
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    parts = {
        "config": (path / "config.json").read_text(),
        "weights": [_file_digest(w) for w in weights],
        "torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__, "opset": ONNX_OPSET, "exporter": "torchscript/AutoModel",
        "inputs": list(model.input_names), "optimizer": "bert/num_heads/hidden_size/opt_level=default",
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def export_onnx(model_dir: Path, out: Path, input_names: tuple[str, ...]) -> None:
    """HF model (AutoModel: the family's class) -> ONNX (legacy TorchScript exporter: the BERT fusions of onnxruntime
    match its graph).

    Inputs `input_names` (input_ids, attention_mask, and token_type_ids for the families that read them, as
    onnxruntime's own exports of RoBERTa, XLM-R and DistilBERT have) [B,T] int64 with dynamic B and T; output
    last_hidden_state [B,T,H]. Exported from "eager" attention, the pattern the Attention fusion recognises.
    """
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    names = list(input_names)

    class LastHiddenState(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, *inputs):
            return self.encoder(**dict(zip(names, inputs))).last_hidden_state

    b, t = 2, 16  # a padded example so the traced graph keeps the mask path
    pad = model.config.pad_token_id or 0
    ids = torch.randint(5, model.config.vocab_size, (b, t))  # 5..: no special id (RoBERTa's padding id is 1)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, t // 2:] = 0
    ids[mask == 0] = pad
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(b, t, dtype=torch.long)}
    dynamic = {n: {0: "batch", 1: "seq"} for n in names + ["last_hidden_state"]}
    tmp = out.with_suffix(".tmp")
    kwargs = dict(input_names=names, output_names=["last_hidden_state"], dynamic_axes=dynamic,
                  opset_version=ONNX_OPSET, do_constant_folding=True)

    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter's deprecation notice and the tracer's notes about the mask code (constant for inputs
        # without past key values) are expected; the fusion check and the accuracy check guard the result.
        warnings.simplefilter("ignore")
        torch.onnx.export(LastHiddenState(model), tuple(example[n] for n in names), str(tmp), **kwargs)
    os.replace(tmp, out)


def fused_op_counts(path: Path) -> Counter:
    """Op types of the graph that ORT will run (read from the file, so a cached model is checked too)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return Counter(node.op_type for node in graph.node)


def check_fusion(counts: Counter, num_layers: int, where: Path, family: str = "bert") -> dict:
    """Raise unless every layer got fused Attention, two SkipLayerNormalization and a bias-GELU.

    An unfused graph runs ~2x slower than ORT's real BERT path and would make the comparison meaningless. A family
    of cases.ORT_UNFUSED_ATTENTION (MPNet) must get the other two fusions and no Attention: the summary says its
    attention is unfused and why, and a later onnxruntime that fuses it fails here, so the exception is revisited.
    """
    attention = counts["Attention"] + counts["MultiHeadAttention"]
    skip_ln = counts["SkipLayerNormalization"] + counts["SkipSimplifiedLayerNormalization"]
    gelu = counts["BiasGelu"] + counts["FastGelu"] + counts["GemmFastGelu"]
    summary = {"Attention": attention, "SkipLayerNormalization": skip_ln, "BiasGelu": gelu,
               "EmbedLayerNormalization": counts["EmbedLayerNormalization"], "MatMul": counts["MatMul"]}
    unfused = ORT_UNFUSED_ATTENTION.get(family)
    want_attention = 0 if unfused else num_layers
    if attention != want_attention or skip_ln < 2 * num_layers - 1 or gelu != num_layers:
        raise RuntimeError(
            f"onnxruntime BERT fusion of {where.name} ({family}, {num_layers} layers) is not as expected: {summary}; "
            f"expected Attention={want_attention}, SkipLayerNormalization>={2 * num_layers - 1}, "
            f"BiasGelu={num_layers}. All op types: {dict(counts)}"
            + (f". Attention was expected unfused: {unfused}; if onnxruntime now fuses it, drop {family!r} from "
               f"cases.ORT_UNFUSED_ATTENTION" if unfused else ""))
    if unfused:
        summary["attention_unfused"] = unfused
    return summary


def optimized_onnx(model: ModelCase) -> tuple[Path, dict]:
    """Exported and BERT-fused ONNX file of a model (cached in bench/.cache/onnx/), with its fused op counts.

    model_type "bert" for every family: onnxruntime's optimizer has no RoBERTa, DistilBERT, ELECTRA or MPNet type
    (its `bert` fusions carry the RoBERTa and DistilBERT variants of the patterns), and its own model list
    (onnxruntime/transformers/huggingface_models.py) optimizes roberta-base, xlm-roberta-base and distilbert with
    model_type "bert".
    """
    from onnxruntime.transformers.optimizer import optimize_model

    sizes = model.sizes()
    key = onnx_cache_key(model)
    folder = CACHE_DIR / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / f"{model.name}-{key}.onnx"
    fused = folder / f"{model.name}-{key}-bert-fused.onnx"
    if not fused.exists():
        if not raw.exists():
            export_onnx(model.path(), raw, model.input_names)
        optimizer = optimize_model(str(raw), model_type="bert", num_heads=sizes["num_attention_heads"],
                                   hidden_size=sizes["hidden_size"])
        print(f"\n[bench] onnxruntime fusion of {model.name}: {optimizer.get_fused_operator_statistics()}")
        tmp = fused.with_suffix(".tmp")
        optimizer.save_model_to_file(str(tmp))
        os.replace(tmp, fused)
        raw.unlink()  # only the fused graph runs; the raw export is rebuilt if the fused file goes
    summary = check_fusion(fused_op_counts(fused), sizes["num_hidden_layers"], fused, model.family)
    return fused, summary


def quantized_onnx(model: ModelCase) -> Path:
    """ONNX Runtime's dynamic int8 quantization (s8 weights per tensor, u8 activations quantized at run time) of
    the BERT-fused graph, the usual way to run BERT in int8 with ORT (cached next to the fused file)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fused, _ = optimized_onnx(model)
    out = fused.with_name(fused.stem + "-int8.onnx")
    if not out.exists():
        import onnx

        tmp = out.with_suffix(".tmp.onnx")
        # DefaultTensorType: the fused contrib ops (Attention, SkipLayerNormalization) have no shape inference,
        # so the quantizer is told their outputs are float.
        quantize_dynamic(str(fused), str(tmp), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        os.replace(tmp, out)
    return out


class OrtRuntime:
    """CPUExecutionProvider on the BERT-fused graph (or its int8 quantization); intra-op threads = n, inter-op 1,
    all graph optimizations."""

    def __init__(self, model: ModelCase, threads: int, int8: bool = False):
        import onnxruntime as ort

        self.name = ORT_INT8 if int8 else ORT
        self.path, self.fusion = optimized_onnx(model)
        if int8:
            self.path = quantized_onnx(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def prepare(self, inputs: EncoderInputs) -> dict:
        return inputs.feeds()

    def run(self, feeds: dict):
        return self.session.run(["last_hidden_state"], feeds)[0]

    def last_hidden_state(self, output) -> np.ndarray:
        return output


def make_runtime(name: str, model: ModelCase, threads: int):
    if name == ENGINE:
        return EngineRuntime(model.path(), threads)
    if name == ENGINE_INT8:
        return EngineRuntime(model.path(), threads, dtype="int8")
    if name == ENGINE_BF16:
        return EngineRuntime(model.path(), threads, dtype="bf16")
    if name == ORT:
        return OrtRuntime(model, threads)
    if name == ORT_INT8:
        return OrtRuntime(model, threads, int8=True)
    if name == TORCH_EAGER:
        return TorchRuntime(model.path(), threads, "eager")
    if name == TORCH_SDPA:
        return TorchRuntime(model.path(), threads, "sdpa")
    if name == TORCH_BF16:
        return TorchRuntime(model.path(), threads, "sdpa", bf16=True)
    raise ValueError(f"unknown runtime {name!r}")


class RuntimePool:
    """Runtimes and reference outputs of the model being benchmarked; switching model frees the previous one's.

    Holding one model at a time keeps BERT-base's four copies of the weights (one per runtime) from piling up
    with the other models', which would push the machine into memory pressure and distort the timings.
    """

    def __init__(self, threads: int):
        self.threads = threads
        self.model: ModelCase | None = None
        self.runtimes: dict[str, object] = {}
        self.failures: dict[str, Exception] = {}
        self.references: dict[str, np.ndarray] = {}

    def _switch(self, model: ModelCase) -> None:
        if self.model != model:
            self.runtimes.clear()
            self.failures.clear()
            self.references.clear()
            gc.collect()
            self.model = model

    def get(self, model: ModelCase, name: str):
        """The runtime, built once per model; a build failure is remembered and re-raised for later rows."""
        self._switch(model)
        if name in self.failures:
            raise self.failures[name]
        if name not in self.runtimes:
            try:
                self.runtimes[name] = make_runtime(name, model, self.threads)
            except Exception as exc:
                self.failures[name] = exc
                raise
        return self.runtimes[name]

    def reference(self, model: ModelCase, shape, inputs: EncoderInputs) -> np.ndarray:
        """last_hidden_state [B,T,H] of PyTorch eager on these inputs (computed once per shape)."""
        self._switch(model)
        if shape.name not in self.references:
            runtime = self.get(model, REFERENCE)
            self.references[shape.name] = runtime.last_hidden_state(runtime.run(runtime.prepare(inputs))).copy()
        return self.references[shape.name]
