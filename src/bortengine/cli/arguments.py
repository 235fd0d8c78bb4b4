"""What the commands read from the command line: the argparse `type=` functions (durations, BxT shapes,
architectures, counts), which reject a malformed value with argparse's usage line, and the checks of the paths a
command names, made before its work starts so that a wrong path costs a one-line error, not minutes and a traceback.
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Optional

from bortengine.architecture import Architecture
from bortengine.errors import ModelLoadError, UsageError
from bortengine.files import read_json
from bortengine.progress import parse_duration

__all__ = ["duration", "shape", "architecture", "positive_int", "non_negative_int", "positive_float", "port",
           "nice_value", "check_model_directory", "check_output", "MODEL_DIRECTORY", "add_data_arguments",
           "data_fields", "BUILTIN_TASKS", "DATA_OPTIONS", "add_executor_arguments", "EXECUTORS"]

BUILTIN_TASKS = ("rt", "imdb")    # training.BUILTIN_TASKS, named here so the parsers import no training code
EXECUTORS = ("local", "ray")      # search.EXECUTORS, likewise

MODEL_DIRECTORY = "a Hugging Face model directory (config.json and its weights)"


# --- argparse types: each returns the value or raises ArgumentTypeError, which argparse reports with the usage --

def duration(text: str) -> float:
    """Seconds from 1800, 90s, 30m or 1.5h (the one duration syntax, bortengine.progress.parse_duration)."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def shape(text: str) -> tuple[int, int]:
    """(B, T) from BxT such as 8x128: B sequences of T tokens, T >= 2 for [CLS] and [SEP]."""
    try:
        b, t = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is BxT (sequences x tokens) like 8x128, got {text!r}") from None
    if b < 1 or t < 2:
        raise argparse.ArgumentTypeError(f"shape {text!r} needs B >= 1 and T >= 2")
    return b, t


def architecture(text: str) -> Architecture:
    """⟨D, A, H, I⟩ from D,A,H,I such as 4,12,384,1536 (Architecture.parse, which also checks H % A == 0)."""
    try:
        return Architecture.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    return _int_from(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _int_from(text, 0, "an integer >= 0")


def _int_from(text: str, least: int, wanted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def at_least_two(text: str) -> int:
    """A count of at least 2 (validation compares architectures' latencies: one has nothing to rank against)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 2, got {text!r}")
    return value


def _finite_float(text: str, zero_allowed: bool) -> float:
    wanted = "a number >= 0" if zero_allowed else "a positive number"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if not (math.isfinite(value) and (value >= 0 if zero_allowed else value > 0)):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    return _finite_float(text, zero_allowed=False)


def non_negative_float(text: str) -> float:
    return _finite_float(text, zero_allowed=True)


def nice_value(text: str) -> int:
    """A niceness to add to threads: 0 (unchanged) to 19 (the lowest priority)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 19, got {text!r}") from None
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 (unchanged) to 19 (lowest priority), got "
                                         f"{text!r}")
    return value


def kernel_path(text: str) -> str:
    """--isa: a kernel path this CPU and build can run, checked before anything loads (a server would otherwise
    fail only after it has started listening)."""
    from bortengine.engine import available_isas

    offered = available_isas()
    if text not in offered:
        raise argparse.ArgumentTypeError(f"{text!r} cannot run here; this CPU and build offer {', '.join(offered)} "
                                         f"(leave --isa out for the fastest; `bortengine info` lists them)")
    return text


def port(text: str) -> int:
    """A TCP port, 0 meaning any free one (the OS picks it)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number (0 to 65535), got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 (any free port) to 65535, got {text!r}")
    return value


# --- paths: checked when the command starts; the errors are the package's, reported on one line ----------------

def check_model_directory(path: Optional[str], option: str, holds: tuple[str, ...] = ("config.json",),
                          what: str = MODEL_DIRECTORY) -> None:
    """The directory `option` names exists and holds one of `holds` (a sentence-transformers directory: it or the
    sub-folder its modules.json names, as bortengine.load reads it), and its config.json (if any) is JSON.
    transformers would take a missing directory for a model-hub name and fail offline with a traceback."""
    from bortengine.engine import transformer_directory

    if path is None:
        return
    directory = Path(path)
    model = transformer_directory(directory) if directory.is_dir() else directory
    if not directory.is_dir() or not any((d / name).is_file() for name in holds for d in {directory, model}):
        problem = ("does not exist" if not directory.exists() else "is a file" if not directory.is_dir()
                   else f"holds no {' or '.join(holds)}")
        raise ModelLoadError(f"{option} {path} {problem}: pass {what}")
    if (model / "config.json").is_file():
        read_json(model / "config.json", ModelLoadError)


def check_output(path: Optional[str], option: str, directory: bool) -> None:
    """`option` names a place the command can write: a directory (directory=True) or a file, not the other kind,
    below a folder that is not a file. Checked before the work, so that a typo does not cost the run."""
    if path is None:
        return
    target = Path(path)
    if target.exists() and target.is_dir() != directory:
        raise UsageError(f"{option} {path} is {'a file' if directory else 'a directory'}; pass "
                         f"{'a directory' if directory else 'a file path'}")
    above = next((p for p in target.parents if p.exists()), target)
    if not above.is_dir():
        raise UsageError(f"{option} {path}: {above} is a file, so nothing can be written below it")
    where = target if target.is_dir() else above
    try:        # a file made and removed: permissions, a read-only mount and /proc-like folders alike
        with tempfile.NamedTemporaryFile(dir=where, prefix=".bortengine-write-check-"):
            pass
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot write in {where} ({e.strerror}); pass a path in a folder this "
                         f"user can write") from None


# --- the user's labelled data (training.DataSpec) -------------------------------------------------------------

DATA_OPTIONS = {"task": None, "train": None, "dev": None, "test": None, "text_column": "text",
                "text_pair_column": None, "label_column": "label"}


def add_data_arguments(parser, builtin_help: str = "a built-in task instead of --train (default rt)",
                       defaults: bool = True) -> None:
    """--train/--dev/--test and the column names: the user's labelled data, wherever a task is taken.
    defaults=False: options not given stay out of the namespace (a config file fills them)."""
    group = parser.add_argument_group(
        "data (your labelled files: CSV, TSV, JSON Lines, Parquet, or a datasets save_to_disk directory)")
    default = DATA_OPTIONS if defaults else {k: argparse.SUPPRESS for k in DATA_OPTIONS}
    group.add_argument("--task", choices=BUILTIN_TASKS, default=default["task"], help=builtin_help)
    group.add_argument("--train", default=default["train"], metavar="PATH", help="training examples")
    group.add_argument("--dev", default=default["dev"], metavar="PATH",
                       help="dev examples for model selection (default: the validation split of a DatasetDict "
                            "--train, else a stratified, seeded 10%% of --train)")
    group.add_argument("--test", default=default["test"], metavar="PATH",
                       help="test examples, scored once at the end (default: the test split of a DatasetDict --train, "
                            "else another 10%% of --train)")
    group.add_argument("--text-column", default=default["text_column"], metavar="NAME",
                       help="column of the texts (default text)")
    group.add_argument("--text-pair-column", default=default["text_pair_column"], metavar="NAME",
                       help="column of the second texts of a text-pair task (e.g. the answer to a question)")
    group.add_argument("--label-column", default=default["label_column"], metavar="NAME",
                       help="column of the labels: strings or integers, two or more classes (default label)")


def add_executor_arguments(parser, default: Optional[str] = None,
                           what: str = "where the surrogate evaluations run: local worker processes (default), or "
                                       "ray: a Ray cluster's workers") -> None:
    """--executor and --ray-address: where the work runs (extract, the pipeline's extraction and Agora, finetune
    --agora, profile)."""
    parser.add_argument("--executor", choices=EXECUTORS, default=default,
                        help=f"{what} (pip install 'bortengine[ray]'; docs/scale-out.md)")
    parser.add_argument("--ray-address", default=default, metavar="HOST:PORT",
                        help="the Ray cluster's head as `ray start --head` prints it (implies --executor ray); "
                             "default $RAY_ADDRESS, else a new local Ray instance bound to 127.0.0.1")


def data_fields(args) -> dict:
    """The data options as training.DataSpec / FinetuneConfig fields; --task and --train exclude each other and
    --dev/--test and the column names need --train."""
    if args.task and args.train:
        raise UsageError(f"give --train PATH (your data) or --task {args.task} (a built-in task), not both")
    if not args.train and (args.dev or args.test):
        raise UsageError("--dev and --test go with --train PATH")
    columns = [f"--{name.replace('_', '-')} {getattr(args, name)}" for name, default in
               (("text_column", "text"), ("text_pair_column", None), ("label_column", "label"))
               if getattr(args, name) != default]
    if not args.train and columns:    # a built-in task has its own columns: the option would be ignored
        raise UsageError(f"{', '.join(columns)}: the column options go with --train PATH (your data)")
    for option in ("train", "dev", "test"):
        path = getattr(args, option)
        if path and not Path(path).exists():
            raise UsageError(f"--{option} {path}: no such file or directory")
    return {"task": args.task or ("rt" if not args.train else None), "train": args.train, "dev": args.dev,
            "test": args.test, "text_column": args.text_column, "text_pair_column": args.text_pair_column,
            "label_column": args.label_column}
