"""`bortengine pipeline`: the whole Bort system on the user's teacher and labelled data in one command (see
bortengine.pipeline and docs/pipeline.md). Options come from the command line or a TOML file (--config); the
command line wins where both give one. Ctrl-C stops it with a line saying how to continue."""
from __future__ import annotations

import argparse

from bortengine.cli.arguments import (add_data_arguments, add_executor_arguments, check_model_directory, duration,
                                      positive_int)
from bortengine.cli.train import prepare_torch
from bortengine.engine import DTYPES
from bortengine.errors import UsageError

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("pipeline",)
_DEFAULT = argparse.SUPPRESS    # options not given stay out of the namespace, so --config's values can fill them


def add_parsers(sub) -> None:
    p = sub.add_parser("pipeline", argument_default=_DEFAULT,
                       help="profile -> fine-tune the teacher -> extract -> distil -> fine-tune -> evaluate, on your "
                            "data, within a time budget")
    p.add_argument("--config", help="a TOML file of these options (a run writes its own to OUT/pipeline.toml)")
    p.add_argument("--teacher", metavar="DIR",
                   help="BertModel, sentence-transformers or BertForSequenceClassification directory "
                        "(default all-MiniLM-L6-v2)")
    add_data_arguments(p, builtin_help="a built-in task instead of --train", defaults=False)
    p.add_argument("--train-limit", type=positive_int, metavar="N",
                   help="use a stratified, seeded sample of N training examples")
    p.add_argument("--out", help="run directory (required; a second run of the same command continues it)")
    p.add_argument("--budget", type=duration, metavar="DURATION", help="wall-clock budget of the whole run (45m)")
    p.add_argument("--dtype", choices=DTYPES, help="what the student runs in (float32)")
    p.add_argument("--workload", metavar="BxT",
                   help="the batch x tokens the latency is optimised for (default: 1 x the task's length, the "
                        "tokens that hold 95%% of its training texts)")
    p.add_argument("--threads", type=positive_int, help="threads (default: every CPU this process may use)")
    p.add_argument("--arch", metavar="D,A,H,I", help="skip the extraction: distil this student")
    agora = p.add_mutually_exclusive_group()
    agora.add_argument("--scarce", action="store_true",
                       help="fine-tune the student with Agora whatever the size (single texts: not with "
                            "--text-pair-column)")
    agora.add_argument("--no-agora", action="store_true",
                       help="never Agora (default: Agora when the training set has at most 1,000 examples)")
    p.add_argument("--min-speedup", type=float, metavar="X",
                   help="the student must be predicted, and measured on this CPU, X times faster than the teacher "
                        "at the workload (4; measured with a 5%% margin)")
    p.add_argument("--space", help="search space name or file (default: one below the teacher)")
    p.add_argument("--seed", type=int)
    add_executor_arguments(p, default=_DEFAULT, what="where the extraction's surrogate evaluations and the "
                                                    "settings of each Agora round run: local (default), or "
                                                    "ray: a Ray cluster's workers")
    p.add_argument("--max-steps", type=positive_int, metavar="N",
                   help="train N steps in every training stage, whatever its share of the budget (quick looks and "
                        "tests: runs repeat exactly; the extraction keeps to its share)")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    prepare_torch()
    from bortengine.pipeline import PipelineConfig, read_config_file, run_pipeline

    given = vars(args)
    values = read_config_file(given["config"]) if "config" in given else {}
    values.update({k: v for k, v in given.items() if k not in ("command", "version", "config", "no_progress")})
    if "no_progress" in given:
        values["progress"] = False
    if "ray_address" in given and "executor" not in given:
        values["executor"] = "ray"        # an address says where to run, as on bortengine extract
    if "train" in given and "task" not in given:
        values.pop("task", None)          # --train on the command line replaces a config file's built-in task
    if not values.get("out"):
        raise UsageError("give --out DIR (the run directory)")
    check_model_directory(values.get("teacher"), "--teacher")
    config = PipelineConfig.from_dict(values, where=given.get("config") or "the options")
    try:
        run_pipeline(config)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted: run the same command again to continue in {config.out}") from None
    return 0
