"""`bortengine export`: a pretrain, finetune or Agora run (or an HF model directory of any family and layout
bortengine.load reads) -> a model directory bortengine.load reads, checked engine against torch; --dtype int8 (bf16)
then stores the encoder layers' linear weights pre-quantized (as BF16): layers x 6 tensors in every family, but
those of the layers an int8 calibration on the user's texts (--calibrate) takes out of int8. A folder of model
directories (a pipeline run) is refused with their names."""
from __future__ import annotations

from pathlib import Path

from bortengine.cli.arguments import check_model_directory, check_output
from bortengine.cli.train import prepare_torch, print_result
from bortengine.engine import DTYPES
from bortengine.errors import UsageError

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("export",)

RUN_DIRECTORY = ("a pretrain or finetune run directory (checkpoint.safetensors), an Agora run directory "
                 "(state.safetensors) or a model directory (config.json)")


def add_parsers(sub) -> None:
    ex = sub.add_parser("export", help="a pretrain/finetune/Agora run -> a directory bortengine.load reads")
    ex.add_argument("run", help="run directory of pretrain, finetune or finetune --agora (its last round's "
                                "student), or an HF model directory of a family bortengine.load runs (BERT, "
                                "RoBERTa, XLM-R, CamemBERT, DistilBERT, ELECTRA, MPNet), in any layout it reads "
                                "(model.safetensors or shards; a sentence-transformers 0_Transformer/ sub-folder): "
                                "copied as it is")
    ex.add_argument("--out", required=True, help="output model directory: new or empty")
    ex.add_argument("--no-check", action="store_true", help="skip the engine-vs-torch check")
    ex.add_argument("--dtype", choices=DTYPES, default="float32",
                    help="int8: store the encoder layers' linear weights pre-quantized (per-channel s8 + scales), "
                         "as bortengine.load(dtype='int8') runs them; bf16: store them as BF16 (half the bytes), "
                         "as bortengine.load(dtype='bf16') runs them")
    ex.add_argument("--calibrate", nargs="+", default=None, metavar="PATH",
                    help="with --dtype int8: your texts (.txt files, folders of them, or .jsonl/.csv/.tsv/.parquet "
                         "with a text column), on which the export measures int8 against float32 and takes out of "
                         "int8 (bf16 or float32) the fewest layers that hold every token's cosine >= --min-cosine "
                         "(bortengine.export.calibrate_int8; recorded in config.json, applied by load)")
    ex.add_argument("--calibrate-text-column", default="text", metavar="NAME",
                    help="the column holding the text in --calibrate tables (default 'text')")
    ex.add_argument("--min-cosine", type=float, default=None,
                    help="the calibration's per-token cosine target (default 0.98)")
    ex.add_argument("--calibrate-fallback", choices=("auto", "bf16", "float32"), default=None,
                    help="what the layers taken out of int8 run in (default auto: bf16 where this CPU's bf16 GEMMs "
                         "outrun float32's, else float32)")


def run(args) -> int:
    from bortengine.export import export_run

    prepare_torch()
    _check_run(args.run, args.out)
    check_output(args.out, "--out", directory=True)
    if Path(args.out).resolve() == Path(args.run).resolve():
        raise UsageError(f"--out {args.out} is the run directory itself; export writes a new model directory")
    texts = _calibration_texts(args)   # read (and refused) before anything is exported
    report = export_run(args.run, args.out, check=not args.no_check)
    if texts is not None:
        from bortengine.export import DEFAULT_MIN_COSINE, calibrate_int8

        target = DEFAULT_MIN_COSINE if args.min_cosine is None else args.min_cosine
        calibration = calibrate_int8(args.out, texts, min_cosine=target, fallback=args.calibrate_fallback or "auto")
        report["int8_calibration"] = calibration.summary()
    if args.dtype != "float32":  # after the float32 check: the torch model is float
        report[args.dtype] = converted = _convert(args.out, args.dtype, check=not args.no_check)
        if not args.no_check:
            report["check_passed"] = report.get("check_passed", True) and converted["max_abs_vs_at_load"] <= 1e-5
    print_result(report)
    return 0 if report.get("check_passed", True) else 1


def _calibration_texts(args) -> "list[str] | None":
    """The texts of --calibrate (None without it); usage errors for options that need it or --dtype int8."""
    if args.calibrate is None:
        if args.min_cosine is not None or args.calibrate_text_column != "text" or args.calibrate_fallback:
            raise UsageError("--min-cosine, --calibrate-text-column and --calibrate-fallback go with --calibrate PATH "
                             "[PATH ...]")
        return None
    if args.dtype != "int8":
        raise UsageError(f"--calibrate chooses the layers an int8 model runs out of int8: it goes with --dtype int8, "
                         f"not --dtype {args.dtype}")
    if args.min_cosine is not None and not 0 < args.min_cosine < 1:
        raise UsageError(f"--min-cosine must be in (0, 1), e.g. 0.98; got {args.min_cosine}")
    from bortengine.training import TrainingError, corpus_documents

    try:
        return [text for _, text in corpus_documents(args.calibrate, args.calibrate_text_column)]
    except TrainingError as e:
        raise UsageError(f"--calibrate: {e}") from None


def _check_run(run: str, out: str) -> None:
    """run is a run or model directory (a sentence-transformers one may keep config.json in the sub-folder its
    modules.json names, as bortengine.load reads it), before anything is loaded; a folder of model directories (a
    pipeline run: model/ and teacher/) is a usage error naming them."""
    from bortengine.engine import transformer_directory
    from bortengine.training import AGORA_STATE_FILE, CHECKPOINT_FILE, OLD_FILES, model_subdirectories

    holds = (CHECKPOINT_FILE, "config.json", AGORA_STATE_FILE)
    if any((Path(run) / name).is_file() for name in OLD_FILES):   # an older bortengine's run: export_run says so
        return
    model = transformer_directory(run) if Path(run).is_dir() else Path(run)
    inside = model_subdirectories(model)
    if inside and not any((model / name).is_file() for name in holds):
        raise UsageError(f"{run} is not a run or model directory itself: it holds the model directories "
                         f"{', '.join(map(str, inside))}; export one of them, e.g. bortengine export {inside[0]} "
                         f"--out {out}")
    check_model_directory(run, "run directory", holds=holds, what=RUN_DIRECTORY)  # (it finds the sub-folder too)


def _convert(out: str, dtype: str, check: bool) -> dict:
    """Rewrite the float export at `out` with its linear weights in dtype (int8: pre-quantized; bf16: BF16); with
    check, the outputs of load(out, dtype) must equal those of the float export converted at load (the engine's
    own int8 or bf16 path), measured before the rewrite."""
    import numpy as np

    from bortengine.engine import load
    from bortengine.export import bf16_checkpoint, quantize_checkpoint

    rewrite = quantize_checkpoint if dtype == "int8" else bf16_checkpoint
    if not check:
        return rewrite(out)
    at_load = load(out, dtype=dtype)
    vocab = at_load.config.vocab_size   # a small one (random test models): not ids 0..4, the special tokens
    ids = np.random.default_rng(0).integers(*((1000, 2000) if vocab > 2000 else (5, vocab)), size=(2, 16))
    reference = at_load(ids).last_hidden_state
    summary = rewrite(out)
    got = load(out, dtype=dtype)(ids).last_hidden_state
    summary["max_abs_vs_at_load"] = float(np.abs(got - reference).max())
    return summary
