"""Long work (profile, validate, extract, pretrain, finetune, Agora): a one-line progress bar with the time left, and
the durations their time budgets are given in.

Each step has an a-priori cost (only ratios matter); the time left is the elapsed time rescaled by the fraction
of the total cost done, or what is left of a time budget when the caller says so. On a terminal the line is
redrawn in place; in a log (not a terminal) a line is written at most every 10 seconds, and always for the final
state.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Optional, Sequence, Union

__all__ = ["Progress", "clock", "parse_duration"]


class Progress:
    def __init__(self, costs: Union[Sequence[float], int], label: str, enabled: bool = True, stream=None):
        self.costs = [1.0] * costs if isinstance(costs, int) else [float(c) for c in costs]
        self.label = label
        self.total = sum(self.costs) or 1.0
        self.stream = stream or sys.stderr
        self.wanted = enabled
        self.enabled = enabled and bool(self.costs)
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.done_cost, self.done = 0.0, 0
        self.last_print = -math.inf
        # when the work stops at a time budget (time.monotonic()): the time left is at most what is left of it (an
        # extraction planning 44 evaluations in 1:12 said "left ~8:10")
        self.deadline: Optional[float] = None

    def extend(self, costs: Union[Sequence[float], int]) -> None:
        """More steps than planned (retries, repairs)."""
        self.costs.extend([1.0] * costs if isinstance(costs, int) else costs)
        self.total = sum(self.costs) or 1.0
        self.enabled = self.wanted and bool(self.costs)

    def step(self, what: str = "") -> None:
        """One step done; `what` names it (or the next)."""
        if self.done < len(self.costs):
            self.done_cost += self.costs[self.done]
        self.done += 1
        self.show(what)

    def finish(self, what: str = "") -> None:
        """The work is done, perhaps in fewer steps than planned (a search that stopped early): the steps not taken
        leave the plan, and the final line is drawn (n/n, 100%)."""
        del self.costs[self.done:]
        self.total = sum(self.costs) or 1.0
        self.done_cost = self.total
        self.show(what, final=True)

    def show(self, what: str = "", final: bool = False, left: Optional[float] = None) -> None:
        """Draw the line; `left`: the seconds left when the caller knows them (a time budget's), instead of the
        elapsed time rescaled by the fraction done."""
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self.start
        frac = min(1.0, self.done_cost / self.total)
        if left is None:
            left = elapsed / frac * (1 - frac) if frac > 0 else float("nan")
            if self.deadline is not None:
                left = min(left, max(0.0, self.deadline - now)) if math.isfinite(left) else \
                    max(0.0, self.deadline - now)
        if not self.tty and not final and now - self.last_print < 10.0:
            return
        self.last_print = now
        width = 28
        bar = "#" * int(round(width * frac)) + "-" * (width - int(round(width * frac)))
        text = (f"{self.label} [{bar}] {self.done}/{len(self.costs)} {100 * frac:3.0f}%  elapsed "
                f"{clock(elapsed)}  left ~{clock(left)}  {what}")
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(150) + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def clock(seconds: float) -> str:
    """m:ss, or ?:?? when unknown."""
    if not math.isfinite(seconds):
        return "?:??"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: Union[str, float, int]) -> float:
    """Seconds from 1800, '1800', '90s', '30m' or '1.5h'. Raises ValueError saying what it takes."""
    t = str(text).strip().lower()
    try:
        seconds = float(t[:-1]) * DURATION_UNITS[t[-1]] if t and t[-1] in DURATION_UNITS else float(t)
    except ValueError:
        raise ValueError(f"a duration is seconds or a number with s/m/h (1800, 90s, 30m, 1.5h), got {text!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be finite and not negative, got {text!r}")
    return seconds
