"""The error model: ridge regression of the surrogate's errors over the architectures' dimensions, which the
refinement uses to choose the members worth evaluating."""
from __future__ import annotations

import math
from typing import Sequence

from bortengine.architecture import Architecture
from bortengine.search.errors import SearchError

__all__ = ["ErrorModel"]


class ErrorModel:
    """A cheap model of the surrogate's error over architectures, fitted to the evaluations made so far: ridge
    regression of ln e on a full quadratic in (ln D, ln A, ln H, ln I, ln H/A) (21 terms, standardised).

    The refinement stage of extract() uses it only to choose which further member of a group to evaluate: every
    error in the result is still measured by the surrogate. It need not be accurate, only to rank the members of
    a group better than a fixed rule does (the rule cannot know, e.g., that the surrogate punishes a narrow FFN
    more than a missing layer, or a wide head at small H). Errors ≤ 0 (possible for a custom surrogate) are
    modelled without the logarithm.
    """

    def __init__(self, ridge: float = 1e-2):
        self.ridge = float(ridge)
        self._w = None

    @staticmethod
    def features(arch: Architecture) -> list[float]:
        d, a, h, i = (math.log(x) for x in arch.tuple)
        base = [d, a, h, i, h - a]
        return base + [x * y for k, x in enumerate(base) for y in base[k:]]

    def fit(self, archs: Sequence[Architecture], errors: Sequence[float]) -> "ErrorModel":
        import numpy as np

        if len(archs) != len(errors) or not archs:
            raise SearchError(f"the error model needs errors for at least one architecture, got {len(archs)} "
                              f"architectures and {len(errors)} errors")
        y = np.asarray(errors, dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise SearchError("the error model takes finite errors only")
        self.log = bool(np.all(y > 0))
        y = np.log(y) if self.log else y
        x = np.asarray([self.features(a) for a in archs], dtype=np.float64)
        self._mu, self._sd = x.mean(0), x.std(0)
        self._sd[self._sd < 1e-12] = 1.0  # a feature constant over the evaluations carries nothing
        x = np.hstack([np.ones((len(x), 1)), (x - self._mu) / self._sd])
        reg = self.ridge * np.eye(x.shape[1])
        reg[0, 0] = 0.0  # the intercept is not shrunk
        inv = np.linalg.inv(x.T @ x + reg)
        self._w = inv @ (x.T @ y)
        # leave-one-out residuals (closed form for ridge: r_i / (1 − h_ii)): the model's error on errors it has
        # not seen, in the units it fits (ln e, or e)
        hat = np.einsum("ij,jk,ik->i", x, inv, x)
        loo = (y - x @ self._w) / np.maximum(1.0 - hat, 1e-6)
        self.spread = float(np.sqrt(np.mean(np.square(loo)))) if len(y) > x.shape[1] else math.inf
        return self

    def predict(self, arch: Architecture) -> float:
        import numpy as np

        if self._w is None:
            raise SearchError("ErrorModel.predict before fit")
        x = (np.asarray(self.features(arch)) - self._mu) / self._sd
        v = float(self._w[0] + x @ self._w[1:])
        return math.exp(min(v, 700.0)) if self.log else v
