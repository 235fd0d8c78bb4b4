"""The one training loop of the stage: distillation (distill.pretrain, distill.surrogate_loss), fine-tuning
(classification.finetune, finetune_surrogate_loss) and Agora's student trainer (agora.TextClassifierTrainer)
all step through TrainingLoop.

A step takes the next batch of the seeded, length-bucketed order (data.batch_order: a function of the seed and
the epoch, so a resumed run sees the batches an uninterrupted one would), asks the caller for the loss on it, sets
the learning rate of the Schedule and takes an optimiser step with gradients clipped at norm 1. The loop stops at
a step count or a time budget (Budget, on the process CPU clock or the wall clock; a wall-clock budget of a
whole stage, hold_stage_budget, also covers its loading before the loop and its evaluations and writing after it),
evaluates the model on dev at epoch ends and keeps the best weights (Selection), checkpoints every few minutes
(checkpoint.py: weights, optimiser state, RNG state, position; a resume is bit-identical to an uninterrupted run)
and shows progress with the time left (bortengine.progress).
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from bortengine.progress import Progress
from bortengine.training.checkpoint import TrainingCheckpoint, read_checkpoint, write_checkpoint
from bortengine.training.data import batch_order
from bortengine.training.errors import TrainingError

__all__ = ["Budget", "Schedule", "Selection", "StepOutcome", "TrainingLoop", "tensors_of", "torch_tensors",
           "shortest_time", "CLOCKS", "GRADIENT_CLIP"]

CLOCKS = ("cpu", "wall")
GRADIENT_CLIP = 1.0
STEP_WINDOW = 64    # recent steps whose longest is the next one's expected duration (batches vary in length)


class Budget:
    """Time spent on a chosen clock, accumulated across resumes.

    wall, cpu: the elapsed and the process CPU time (all threads) inside training steps (throughput, reports).
    spent: what a time budget counts. On the cpu clock the CPU time inside steps: a compute budget. On the wall
    clock, once `started` is set (TrainingLoop.hold_stage_budget: time.monotonic() at the start of the
    stage's call), the elapsed time of the whole stage: this call's since its start (loading, tokenising,
    evaluating, checkpointing included) plus `before`, the stage's elapsed time at the checkpoint a resume starts
    from; without it (the surrogates, Agora's trainer) the wall time inside steps.
    """

    def __init__(self, clock: str, wall: float = 0.0, cpu: float = 0.0, before: float = 0.0,
                 started: Optional[float] = None):
        if clock not in CLOCKS:
            raise TrainingError(f"clock must be 'cpu' (process CPU time, all threads) or 'wall' (elapsed time), "
                                f"got {clock!r}")
        self.clock, self.wall, self.cpu = clock, wall, cpu
        self.before, self.started = before, started

    @property
    def elapsed(self) -> float:
        """The stage's elapsed time (earlier calls included), or the wall time inside steps without `started`."""
        return self.wall if self.started is None else self.before + time.monotonic() - self.started

    @property
    def spent(self) -> float:
        return self.cpu if self.clock == "cpu" else self.elapsed

    @property
    def whole_stage(self) -> bool:
        """A wall-clock budget counted over the whole stage (which then keeps time for the work after training)."""
        return self.clock == "wall" and self.started is not None

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


@dataclass(frozen=True)
class Schedule:
    """The learning rate at each step: a linear warm-up, then a linear decay of the factor from 1 to 1 - decay.

    Two shapes, as the recipes were published:
    - fine-tuning (BERT; overlap=False): lr (step + 1) / warmup during the warm-up, then the decay runs from the
      end of the warm-up to total_steps, down to 0 (decay=1);
    - distillation (Bort; overlap=True): the warm-up factor min(1, (step + 1) / warmup) times a decay that runs
      from step 0 to total_steps, down to 10% (decay=0.9).
    by_budget: a time budget drives the decay too: its fraction spent counts when it is further along than the
    steps (fine-tuning), or alone when total_steps is None (distillation with no step count), so a run cut by its
    budget still ends at a low learning rate.
    """

    lr: float
    warmup_steps: int
    total_steps: Optional[int] = None
    decay: float = 1.0
    overlap: bool = False
    by_budget: bool = False

    def __post_init__(self):
        if self.warmup_steps < 1:
            raise TrainingError(f"warmup_steps must be >= 1 (the steps of the linear warm-up), got {self.warmup_steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise TrainingError(f"the learning rate must be a positive number, got {self.lr}")

    def lr_at(self, step: int, budget_fraction: float = 0.0) -> float:
        warm = self.warmup_steps
        if not self.overlap and step < warm:
            return self.lr * (step + 1) / warm
        start = 0 if self.overlap else warm
        by_steps = (step - start) / max(1, self.total_steps - start) if self.total_steps else 0.0
        frac = max(by_steps, budget_fraction) if self.by_budget else by_steps
        return self.lr * min(1.0, (step + 1) / warm) * (1.0 - self.decay * min(1.0, frac))


def shortest_time(call: Callable[[], Any], repeats: int = 2) -> float:
    """Seconds of the fastest of `repeats` calls: the first pays one-time costs (allocations, kernel choice) and a
    busy host slows any one; a time budget's estimates of the work after training scale this up."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def tensors_of(state: Mapping[str, torch.Tensor], group: str) -> dict[str, np.ndarray]:
    """A state dict as checkpoint tensors "<group>/<name>" (NumPy views; the checkpoint writer copies them)."""
    return {f"{group}/{k}": v.detach().cpu().contiguous().numpy() for k, v in state.items()}


def torch_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Checkpoint arrays as torch tensors (a state dict to load)."""
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


def _optimizer_contents(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The optimiser's state dict split: moments and step counts as tensors "optimizer/<param>/<key>", the rest
    (param groups, any non-tensor state) as JSON."""
    saved = optimizer.state_dict()
    tensors, plain = {}, {}
    for param, values in saved["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{param}/{key}"] = value.detach().cpu().contiguous().numpy()
            else:
                plain.setdefault(str(param), {})[key] = value
    return {"param_groups": saved["param_groups"], "state": plain}, tensors


def _load_optimizer(optimizer: torch.optim.Optimizer, checkpoint: TrainingCheckpoint) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in torch_tensors(checkpoint.group("optimizer")).items():
        param, key = name.split("/", 1)
        state.setdefault(int(param), {})[key] = value
    saved = checkpoint.state["optimizer"]
    for param, values in saved["state"].items():
        state.setdefault(int(param), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


class Selection:
    """Model selection on dev: evaluate(step) -> score (higher is better) at the end of every epoch from step
    `from_step` on and at the end of the run; the weights of the best score are kept (ties keep the earlier)."""

    def __init__(self, model: torch.nn.Module, evaluate: Callable[[int], float], from_step: float = 0.0):
        self.model, self.evaluate, self.from_step = model, evaluate, from_step
        self.best_score, self.best_step, self.best_state = -1.0, 0, None
        self.last_step: Optional[int] = None       # the step of the last evaluation
        self.seconds = 0.0     # of one evaluation: the caller's estimate, then the last measured (a time budget's)

    def consider(self, step: int) -> None:
        start = time.perf_counter()
        score = self.evaluate(step)
        self.seconds = time.perf_counter() - start
        self.last_step = step
        if score > self.best_score:
            self.best_score, self.best_step = score, step
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def at_epoch_end(self, step: int, total: Optional[int]) -> None:
        if step >= self.from_step and (total is None or step < total):   # the last step is the end's evaluation
            self.consider(step)

    def at_end(self, step: int) -> None:
        if self.last_step != step:
            self.consider(step)

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def contents(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state = {"best_score": self.best_score, "best_step": self.best_step, "last_step": self.last_step}
        return state, tensors_of(self.best_state, "best") if self.best_state is not None else {}

    def load(self, checkpoint: TrainingCheckpoint) -> None:
        saved = checkpoint.state["selection"]
        self.best_score, self.best_step, self.last_step = saved["best_score"], saved["best_step"], saved["last_step"]
        best = checkpoint.group("best")
        self.best_state = torch_tensors(best) if best else None


@dataclass
class StepOutcome:
    loss: torch.Tensor        # the batch's loss (the caller's; detached after the step)
    tokens: int               # real tokens in the batch
    epoch_end: bool           # the batch was the epoch's last
    extra: Any = None         # whatever the caller's loss function returned beside (e.g. the loss's parts)

    @property
    def value(self) -> float:
        return float(self.loss.detach())


LossFunction = Callable[[list[int]], tuple]   # batch indices -> (loss, real tokens[, extra])


class TrainingLoop:
    """Steps, epochs, budget, checkpoints and progress of one training run over items of the given lengths.

    params/optimizer: what the steps update; lengths: of the training items (token counts), which batch_order
    buckets by; bucket: batch_order's bucket (batches per length-sorted chunk). max_steps and/or time_budget
    (seconds on `clock`) stop the run. progress: the label of a progress line on stderr, or None for none.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], optimizer: torch.optim.Optimizer, schedule: Schedule,
                 lengths: Sequence[int], batch_size: int, seed: int, bucket: int = 64,
                 max_steps: Optional[int] = None, time_budget: Optional[float] = None, clock: str = "wall",
                 selection: Optional[Selection] = None, progress: Optional[str] = None):
        if not len(lengths):
            raise TrainingError("the training set is empty: nothing to train on")
        if batch_size < 1:
            raise TrainingError(f"batch_size must be >= 1, got {batch_size}")
        if max_steps is None and time_budget is None:
            raise TrainingError("a training run needs a stopping rule: max_steps and/or time_budget")
        self.params, self.optimizer, self.schedule = list(params), optimizer, schedule
        self.lengths, self.batch_size, self.seed, self.bucket = list(lengths), batch_size, seed, bucket
        self.max_steps, self.time_budget = max_steps, time_budget
        self.budget = Budget(clock)
        self.selection = selection
        self.step, self.epoch, self.cursor, self.tokens = 0, 0, 0, 0   # cursor: batches of `epoch` done
        self.run_tokens, self.run_seconds = 0, 0.0                     # this call's, for the throughput shown
        self.last_loss = float("nan")                                  # of this call's last step
        self.ended: Optional[str] = None   # run()'s stop reason once it ends: checkpoints before then are mid-run
        self.progress_label = progress
        self.after: Callable[[], float] = lambda: 0.0   # seconds of the caller's work after the loop (a budget's)
        self._step_seconds: deque[float] = deque(maxlen=STEP_WINDOW)
        self._order: tuple[int, list[list[int]]] = (-1, [])

    # -- the steps -------------------------------------------------------------------------------------------------
    def batches(self) -> list[list[int]]:
        """The batches of the current epoch, in order."""
        if self._order[0] != self.epoch:
            self._order = (self.epoch, batch_order(self.lengths, self.batch_size, self.seed, self.epoch, self.bucket))
        return self._order[1]

    @property
    def batches_per_epoch(self) -> int:
        return len(self.batches())

    def hold_stage_budget(self, started: float, after: Callable[[], float]) -> None:
        """A wall-clock time budget holds for the whole stage: counted from `started` (time.monotonic() at the
        start of the call: loading and tokenising count), and the loop stops early enough to leave time for its
        final evaluation and checkpoint and for after() seconds of the caller's work once it returns (evaluating,
        writing the model). No effect on the cpu clock, a compute budget of training steps alone."""
        self.budget.started, self.after = started, after

    def stop_reason(self, checkpoint: Optional["Checkpointing"] = None) -> Optional[str]:
        """"steps" or "time budget" once the run is over, else None. Under a whole-stage budget the run is over
        when one more step (with the evaluation or checkpoint it would bring) and the work after the loop would
        not fit in what is left of it."""
        if self.max_steps is not None and self.step >= self.max_steps:
            return "steps"
        if self.time_budget is not None and self.budget.spent + self._still_needed(checkpoint) >= self.time_budget:
            return "time budget"
        return None

    def _still_needed(self, checkpoint: Optional["Checkpointing"]) -> float:
        """Under a whole-stage budget, the seconds the next step and everything after the loop are expected to take:
        the longest of the recent steps, an epoch end's evaluation and a checkpoint when they would follow it, the
        final evaluation and checkpoint, and the caller's after(). Evaluations and checkpoints as last measured
        (the first checkpoint is written after the first step to measure it)."""
        if not self.budget.whole_stage:
            return 0.0
        evaluation = self.selection.seconds if self.selection is not None else 0.0
        saving = (checkpoint.seconds or 0.0) if checkpoint is not None else 0.0
        step = max(self._step_seconds, default=0.0)
        next_step = step + (evaluation if self.cursor + 1 >= len(self.batches()) else 0.0) \
            + (saving if checkpoint is not None and checkpoint.due(step) else 0.0)
        return next_step + evaluation + saving + self.after()

    def budget_fraction(self) -> float:
        """The fraction of the time budget spent; under a whole-stage budget, of the part before the work after the
        loop (so that a schedule driven by the budget ends its decay when training ends)."""
        if not self.time_budget:
            return 0.0
        if not self.budget.whole_stage:
            return self.budget.spent / self.time_budget
        return min(1.0, self.budget.spent / max(1e-9, self.time_budget - self._still_needed(None)))

    def take_step(self, loss_of: LossFunction) -> StepOutcome:
        """One optimisation step on the next batch. loss_of(indices) -> (loss, real tokens[, extra])."""
        if self.cursor >= len(self.batches()):       # the previous epoch is done: the next one's order
            self.epoch, self.cursor = self.epoch + 1, 0
        batches = self.batches()
        indices = batches[self.cursor]
        with self.budget:
            start = time.perf_counter()
            lr = self.schedule.lr_at(self.step, self.budget_fraction())
            loss, tokens, *extra = loss_of(indices)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, GRADIENT_CLIP)
            self.optimizer.step()
            self._step_seconds.append(time.perf_counter() - start)
            self.run_seconds += self._step_seconds[-1]
        self.step, self.cursor = self.step + 1, self.cursor + 1
        self.tokens, self.run_tokens = self.tokens + tokens, self.run_tokens + tokens
        return StepOutcome(loss.detach(), tokens, self.cursor == len(batches), extra[0] if extra else None)

    def run(self, loss_of: LossFunction, after_step: Optional[Callable[[StepOutcome], None]] = None,
            checkpoint: Optional["Checkpointing"] = None) -> str:
        """Steps until the step count or the budget is reached; returns which ("steps" or "time budget").

        After each step: the dev evaluation at an epoch's end (selection), a checkpoint when one is due, the
        progress line, then after_step(outcome) (an exception it raises stops the run as an interruption would:
        no final evaluation or checkpoint). At the end: the final evaluation, then the final checkpoint."""
        progress = self._progress()
        finished = False
        try:
            with _interruptions_between_steps(checkpoint is not None) as interruption:
                while (reason := self.stop_reason(checkpoint)) is None:
                    outcome = self.take_step(loss_of)
                    self.last_loss = outcome.value
                    if outcome.epoch_end and self.selection is not None:
                        self.selection.at_epoch_end(self.step, self.max_steps)
                    first = self.budget.whole_stage and checkpoint is not None and checkpoint.seconds is None
                    if checkpoint is not None and (checkpoint.due() or first):   # the first measures a save's time
                        checkpoint.save(self)
                    if progress is not None:
                        self._show(progress)
                    if after_step is not None:
                        after_step(outcome)
                    self._stop_if_interrupted(interruption, checkpoint)
                self._stop_if_interrupted(interruption, checkpoint)   # one that came while the stop was decided
            if self.selection is not None:
                self.selection.at_end(self.step)
            if reason == "time budget" and self.step == 0:
                print(f"warning: the time budget was spent before the first step ({self.budget.spent:.1f} s of "
                      f"{self.time_budget:.1f} s, on loading or an earlier run): nothing trained; give a larger "
                      f"budget", file=sys.stderr)
            finished = True
        finally:
            if progress is not None:
                if finished:     # the run is whole: a budget ends it up to a step short of its last second
                    progress.done, progress.done_cost = len(progress.costs), progress.total
                progress.show(f"step {self.step}", final=True, left=self._left())
        self.ended = reason
        if checkpoint is not None:
            checkpoint.save(self)
        return reason

    def _stop_if_interrupted(self, interruption: "_Interruption", checkpoint: Optional["Checkpointing"]) -> None:
        if interruption:
            checkpoint.save(self)     # the steps so far are kept: a resume continues from here
            interruption.deliver()

    # -- progress ----------------------------------------------------------------------------------------------------
    PROGRESS_UNITS = 1000   # of a time budget (a step count alone: one unit per step)

    def _fraction(self) -> float:
        by_steps = self.step / self.max_steps if self.max_steps else 0.0
        return min(1.0, max(by_steps, self.budget_fraction()))

    def _progress(self) -> Optional[Progress]:
        if self.progress_label is None:
            return None
        self._units = self.max_steps if self.time_budget is None else self.PROGRESS_UNITS
        # done before a resume: not in the rate (a whole-stage budget's time left is known, not estimated)
        self._units_before = 0 if self.budget.whole_stage else int(self._fraction() * self._units)
        progress = Progress(max(0, self._units - self._units_before), self.progress_label)
        if self.budget.whole_stage:       # elapsed from the call's start, as the budget counts
            progress.start = self.budget.started
        return progress

    def _show(self, progress: Progress) -> None:
        progress.done = max(0, int(self._fraction() * self._units) - self._units_before)
        progress.done_cost = float(progress.done)
        throughput = self.run_tokens / max(self.run_seconds, 1e-9)
        progress.show(f"step {self.step} loss {self.last_loss:.4f} {throughput:.0f} tok/s "
                      f"{self.budget.spent / 60:.1f} min {self.budget.clock}", left=self._left())

    def _left(self) -> Optional[float]:
        """What is left of a whole-stage budget when it, not the step count, ends the run (else None: estimated)."""
        if not self.budget.whole_stage or self.max_steps and self.step / self.max_steps > self.budget_fraction():
            return None
        return max(0.0, self.time_budget - self.budget.spent)

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def contents(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The loop's part of a checkpoint: position, clocks, optimiser, torch RNG (and the selection's)."""
        optimizer_state, tensors = _optimizer_contents(self.optimizer)
        state = {"step": self.step, "epoch": self.epoch, "cursor": self.cursor, "tokens": self.tokens,
                 "wall": self.budget.wall, "cpu": self.budget.cpu, "elapsed": self.budget.elapsed,
                 "optimizer": optimizer_state, "ended": self.ended}
        tensors["rng/torch"] = torch.get_rng_state().numpy()
        if self.selection is not None:
            state["selection"], best = self.selection.contents()
            tensors.update(best)
        return state, tensors

    def load(self, checkpoint: TrainingCheckpoint) -> None:
        """Continue from checkpoint: the loop's part (the caller restores its model and the rest)."""
        s = checkpoint.state
        self.step, self.epoch, self.cursor, self.tokens = s["step"], s["epoch"], s["cursor"], s["tokens"]
        self.budget = Budget(self.budget.clock, wall=s["wall"], cpu=s["cpu"], before=s.get("elapsed", s["wall"]),
                             started=self.budget.started)
        _load_optimizer(self.optimizer, checkpoint)
        torch.set_rng_state(torch.from_numpy(np.array(checkpoint.tensors["rng/torch"])))
        if self.selection is not None:
            self.selection.load(checkpoint)


class _Interruption:
    """A Ctrl-C (SIGINT) or kill (SIGTERM) held until the step under way ends; true once one came."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.handlers: dict[int, Callable] = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    def hold(self, signum: int, frame: Any) -> None:
        if self.signum is not None:       # a second one: the user will not wait for the step
            self.handlers[signum](signum, frame)
        self.signum = signum

    def deliver(self) -> None:
        """The held signal's own handler, now (the caller's: KeyboardInterrupt for Ctrl-C)."""
        signum, self.signum = self.signum, None
        self.handlers[signum](signum, None)


@contextlib.contextmanager
def _interruptions_between_steps(active: bool):
    """While a run that checkpoints trains: a SIGINT or SIGTERM whose handler raises (Python's KeyboardInterrupt,
    the command line's SIGTERM) is held until the step under way ends, so that the steps done are checkpointed
    before it is raised, and the resume continues where the run stopped with the result an uninterrupted run has
    (a checkpoint taken mid-step could hold half an optimizer update). Without this a run killed before its
    periodic checkpoint (every 2 minutes) lost every step. Signals left at their default (a library's SIGTERM)
    are not taken; handlers can only be set from the main thread."""
    interruption = _Interruption()
    if active and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if callable(handler):
                interruption.handlers[signum] = handler
                signal.signal(signum, interruption.hold)
    try:
        yield interruption
    finally:
        for signum, handler in interruption.handlers.items():
            signal.signal(signum, handler)


class Checkpointing:
    """Where and how often a run checkpoints, and what the caller adds to the loop's part.

    contents() -> (JSON state, tensors) of the caller: its config (state["config"]), model weights, and anything
    else a resume needs. every: wall seconds between checkpoints (0: after every step)."""

    def __init__(self, path: Path, kind: str, every: float,
                 contents: Callable[[], tuple[dict[str, Any], dict[str, np.ndarray]]]):
        self.path, self.kind, self.every, self.contents = Path(path), kind, every, contents
        self._last = time.perf_counter()
        self.seconds: Optional[float] = None     # the last save's, once one was written

    def due(self, within: float = 0.0) -> bool:
        """A checkpoint is due (or will be within `within` seconds)."""
        return time.perf_counter() + within - self._last >= self.every

    def save(self, loop: TrainingLoop) -> Optional[Path]:
        """The loop and the caller's state written; nothing before the first step, when there is nothing to keep but
        the time spent loading, which a checkpoint's clock would carry into every later attempt (a whole-stage
        budget spent that way failed every resume)."""
        if loop.step == 0:
            return None
        start = time.perf_counter()
        state, tensors = loop.contents()
        mine, my_tensors = self.contents()
        path = write_checkpoint(self.path, self.kind, {**state, **mine}, {**tensors, **my_tensors})
        self._last = time.perf_counter()
        self.seconds = self._last - start
        return path

    def read(self) -> Optional[TrainingCheckpoint]:
        """The checkpoint a resume starts from, or None for a fresh run (also for a checkpoint of step 0, which an
        older bortengine wrote: nothing to resume)."""
        checkpoint = read_checkpoint(self.path, self.kind) if self.path.is_file() else None
        return None if checkpoint is None or checkpoint.state.get("step") == 0 else checkpoint
