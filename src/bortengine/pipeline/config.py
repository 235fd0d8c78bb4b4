"""What a pipeline run is: its options (the same from the command line, a TOML file or Python), the split of its
time budget over the stages, and the file in the run directory that records both, so a second run of the same
command continues the first and a run with other options is refused instead of mixed into it.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from bortengine.engine import DTYPES
from bortengine.errors import BortEngineError
from bortengine.files import paths_as_text

__all__ = ["PipelineConfig", "PipelineError", "STAGES", "BUDGET_SHARES", "CONFIG_FILE", "SCARCE_EXAMPLES",
           "read_config_file", "write_config_file"]

CONFIG_FILE = "pipeline.toml"
STAGES = ("profile", "teacher", "extract", "distil", "finetune", "evaluate")
# The budget's split: what is left of it when a stage starts, times the stage's share of the shares still to come,
# so a stage that ends early leaves its time to the next ones and a resumed run re-plans from the time left.
# Distillation gets most: the student's accuracy grows with it longest; profiling reuses a profile when this CPU
# has one and otherwise takes its share for a quick profile; the evaluation takes seconds (10 s of its 90 s in a
# 15-minute run of MiniLM on Rotten Tomatoes), and what it leaves is the one share no later stage can use. The
# extraction's share holds the re-ranking of its shortlist (pipeline.stages.extract_stage): which student is
# distilled moved test accuracy by up to 3.5 points on Rotten Tomatoes, more than the minutes of distillation and
# fine-tuning it takes from them (docs/pipeline.md)
BUDGET_SHARES = {"profile": 0.03, "teacher": 0.17, "extract": 0.21, "distil": 0.31, "finetune": 0.23,
                 "evaluate": 0.05}
SCARCE_EXAMPLES = 1000        # at most this many training examples: fine-tune the student with Agora
# the options whose change makes another run (the budget, threads of training and progress may change on resume)
_PATHS = ("out", "teacher", "train", "dev", "test")
_RUN_DEFINING = ("teacher", "task", "train", "dev", "test", "text_column", "text_pair_column", "label_column",
                 "train_limit", "dtype", "workload", "arch", "scarce", "no_agora", "seed", "space", "max_steps",
                 "min_speedup")


class PipelineError(BortEngineError):
    """The pipeline cannot run as asked: conflicting options, a run directory of another run, a config file that
    cannot be read."""


@dataclass
class PipelineConfig:
    """The options of `bortengine pipeline` (a TOML config file holds the same keys)."""

    out: str
    teacher: Optional[str] = None          # BertModel, sentence-transformers or classifier directory; default MiniLM
    task: Optional[str] = None             # a built-in task ("rt", "imdb") instead of train
    train: Optional[str] = None
    dev: Optional[str] = None
    test: Optional[str] = None
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    train_limit: Optional[int] = None      # a stratified, seeded sample of N training examples
    budget: float = 45 * 60.0              # seconds, wall clock, the whole run
    dtype: str = "float32"                 # what the student is extracted for and served in
    workload: Optional[str] = None         # batch x tokens the latency is optimised for; default 1 x the task's
    #                                        length (the tokens that hold 95% of its training texts)
    threads: Optional[int] = None          # default: every CPU this process may use
    arch: Optional[str] = None             # "D,A,H,I": skip the extraction, distil this student
    scarce: bool = False                   # Agora even with more than SCARCE_EXAMPLES examples
    no_agora: bool = False                 # never Agora
    seed: int = 0
    space: Optional[str] = None            # search space; default: one below the teacher
    min_speedup: float = 4.0               # the student must be predicted and measured this much faster
    max_steps: Optional[int] = None        # cap on every training stage's steps (tests, quick looks)
    progress: bool = True
    executor: str = "local"                # where the extraction's evaluations and Agora's settings run: "local"/"ray"
    ray_address: Optional[str] = None      # the Ray cluster (host:port); default $RAY_ADDRESS, else a local instance

    def __post_init__(self) -> None:
        paths_as_text(self)     # train=Path(...) is a path too
        # absolute: pipeline.toml then names the same files from any directory (--config), and a resumed run given
        # ./data.csv, data.csv or the absolute path (or teacher/ for teacher) is the same run
        for name in _PATHS:
            value = getattr(self, name)
            if isinstance(value, str) and value:
                setattr(self, name, os.path.abspath(value))

    def check(self) -> None:
        """The options, before anything is loaded."""
        self._check_types()
        if self.task and self.train:
            raise PipelineError(f"give train (your data) or task {self.task!r} (a built-in task), not both")
        if not self.task and not self.train:
            raise PipelineError("no data: give --train PATH (your labelled file) or --task rt|imdb")
        for role in ("train", "dev", "test"):
            path = getattr(self, role)
            if path and not Path(path).exists():
                raise PipelineError(f"--{role} {path}: no such file or directory")
        if (self.dev or self.test) and not self.train:
            raise PipelineError("--dev and --test go with --train PATH")
        if self.scarce and self.no_agora:
            raise PipelineError("--scarce (always Agora) and --no-agora (never) exclude each other")
        if self.scarce and self.text_pair_column:
            # Agora's transformations make new single texts from training texts; it has none for a pair of texts
            raise PipelineError(f"--scarce (Agora) makes single texts, not pairs, so it cannot fine-tune a text-pair "
                                f"task (--text-pair-column {self.text_pair_column}); drop --scarce: the student of "
                                f"a pair task is fine-tuned on its training pairs and the teacher's soft labels of "
                                f"them, whatever the size of its data")
        if self.dtype not in DTYPES:
            raise PipelineError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not (isinstance(self.budget, (int, float)) and math.isfinite(self.budget) and self.budget > 0):
            raise PipelineError(f"budget must be a positive number of seconds, got {self.budget!r}")
        if not self.min_speedup >= 1:
            raise PipelineError(f"min_speedup must be >= 1 (how much faster the student must be), got "
                                f"{self.min_speedup}")
        if self.workload is not None:
            self.shape()
        self._check_run_options()
        self._check_executor()

    def _check_run_options(self) -> None:
        """What would otherwise fail stages into the run (arch at the extraction, after the teacher's fine-tuning;
        threads and space at the profile), or come out of the OS as a bare error (out)."""
        from bortengine.architecture import Architecture
        from bortengine.engine import available_cpus
        from bortengine.search_space import SearchSpace, SearchSpaceError

        if self.arch is not None:
            try:
                Architecture.parse(self.arch)
            except ValueError as e:
                raise PipelineError(f"arch: {e}") from None
        cpus = available_cpus()
        if self.threads is not None and not 1 <= self.threads <= cpus:
            raise PipelineError(f"threads must be 1 to {cpus} (the CPUs this process may run on), or left out for "
                                f"all of them; got {self.threads}")
        if self.space is not None:
            try:
                SearchSpace.resolve(self.space)
            except SearchSpaceError as e:
                raise PipelineError(f"space: {e}") from None
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise PipelineError(f"out {out} is a file; give the run's directory (a new one, or a run to continue)")

    def _check_types(self) -> None:
        """Each option of the type its field says: a config file can hold min_speedup = "4" or no_agora = "false"
        (a string, which is true), which would fail deep in a stage or do the opposite of what was meant."""
        kinds = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}
        for f in fields(self):
            annotation, value = str(f.type), getattr(self, f.name)
            optional = annotation.startswith("Optional[")
            kind = annotation[len("Optional["):-1] if optional else annotation
            if (value is None and optional) or kind not in kinds:
                continue
            if not isinstance(value, kinds[kind]) or (isinstance(value, bool) and kind != "bool"):
                wanted = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}[kind]
                how = ("; seconds here (a config file or --budget takes 45m too)" if f.name == "budget"
                       else "; in a config file write it without quotes")
                raise PipelineError(f"{f.name} must be {wanted}{' (or left out)' if optional else ''}, got "
                                    f"{value!r} ({type(value).__name__}){how}"
                                    if kind != "str" else f"{f.name} must be {wanted}, got {value!r}")

    def _check_executor(self) -> None:
        """The executor's name, and a Ray cluster's address answering (a wrong one is found now, not after the
        teacher's fine-tuning)."""
        if self.executor not in ("local", "ray"):
            raise PipelineError(f"executor must be local or ray, got {self.executor!r}")
        if self.ray_address and self.executor != "ray":
            raise PipelineError(f"ray_address ({self.ray_address}) goes with executor = \"ray\"")
        address = self.ray_address or os.environ.get("RAY_ADDRESS")
        if self.executor == "ray" and address:
            from bortengine.cluster import probe_ray_address
            from bortengine.errors import ClusterError

            try:
                probe_ray_address(address)
            except ClusterError as e:
                raise PipelineError(str(e)) from None

    def shape(self) -> tuple[int, int]:
        """(B, T) of the workload given (the pipeline's default is the task's: RunContext.workload)."""
        try:
            b, t = (int(x) for x in str(self.workload).lower().split("x"))
        except ValueError:
            raise PipelineError(f"workload is BxT (sequences x tokens) like 1x128, got {self.workload!r}") from None
        if b < 1 or t < 2:
            raise PipelineError(f"workload {self.workload!r} needs B >= 1 and T >= 2")
        return b, t

    def data_fields(self) -> dict[str, Any]:
        """training.DataSpec's fields."""
        return {"train": self.train, "dev": self.dev, "test": self.test, "text_column": self.text_column,
                "text_pair_column": self.text_pair_column, "label_column": self.label_column,
                "train_limit": self.train_limit, "seed": self.seed}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: "PipelineConfig") -> list[str]:
        """The run-defining options in which other differs."""
        return [k for k in _RUN_DEFINING if getattr(self, k) != getattr(other, k)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "the config") -> "PipelineConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PipelineError(f"{where}: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The options of a TOML file (keys as PipelineConfig's fields, '-' or '_'; budget also as '45m'; paths relative to
    the file's folder)."""
    try:
        import tomllib
    except ImportError:    # Python 3.10
        raise PipelineError("reading a config file needs Python >= 3.11 (tomllib)") from None

    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        raise PipelineError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        raise PipelineError(f"config file {path} is not valid TOML: {e}") from None
    values = {k.replace("-", "_"): v for k, v in values.items()}
    if isinstance(values.get("budget"), str):
        from bortengine.progress import parse_duration

        try:
            values["budget"] = parse_duration(values["budget"])
        except ValueError as e:
            raise PipelineError(f"config file {path}: budget: {e}") from None
    # a relative path in the file is relative to the file (as a project's config names its data beside it), not to
    # wherever the command runs
    for key in _PATHS:
        if isinstance(values.get(key), str) and values[key]:
            given = Path(values[key]).expanduser()     # "~/data.csv" is the home directory's, as in a shell
            values[key] = str(given if given.is_absolute() else Path(path).parent / given)
    return values


def write_config_file(config: PipelineConfig, path: str | Path) -> Path:
    """The run's options as TOML (None values left out), for reproducing the run: `--config` reads it back."""
    from bortengine.files import atomic_write_text

    lines = ["# bortengine pipeline: the options of this run (bortengine pipeline --config this-file)"]
    for key, value in config.to_dict().items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key} = {text}")
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return Path(path)
