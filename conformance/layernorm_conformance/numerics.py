"""Comparing results with the reference under the tolerance table, and remembering the worst error ratio."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from layernorm_core.tolerances import Quantity, Tolerance, error_ratio, tolerance

QUANTITY: dict[str, Quantity] = {
    "y": "output",
    "mean": "stats",
    "rstd": "stats",
    "dx": "grad",
    "dweight": "grad",
    "dbias": "grad",
}
"""The tolerance row each named result is held to."""


def widened(tol: Tolerance, factor: float) -> Tolerance:
    """``tol`` with every term multiplied by ``factor`` (two results each within tol of the truth: factor 2)."""
    return replace(tol, rtol=tol.rtol * factor, atol=tol.atol * factor, cond=tol.cond * factor)


class Numerics:
    """Compares named results with expected ones and keeps, per name, the worst ratio seen.

    The worst ratio is the JSON record's "max error seen vs tolerance"; a ratio <= 1 passes.
    """

    def __init__(self) -> None:
        self.ratios: dict[str, float] = {}

    @property
    def worst(self) -> float | None:
        """The largest ratio seen so far, or None when nothing was compared."""
        return max(self.ratios.values()) if self.ratios else None

    def ratio(
        self,
        name: str,
        actual: npt.ArrayLike,
        expected: npt.ArrayLike,
        dtype: str,
        condition: npt.ArrayLike | float = 0.0,
        factor: float = 1.0,
        scale: float | None = None,
        unit: float | None = None,
    ) -> float:
        """The error ratio of ``actual`` (result ``name`` of a ``dtype`` input), recorded, not asserted."""
        a, e = np.asarray(actual), np.asarray(expected)
        if a.shape != e.shape:
            raise AssertionError(f"{name}: shape {a.shape}, expected {e.shape}")
        tol = widened(tolerance(dtype, QUANTITY[name]), factor)
        value = error_ratio(a, e, tol, condition, scale=scale, unit=unit)
        self.ratios[name] = max(self.ratios.get(name, 0.0), value)
        return value

    def check(
        self,
        actual: Mapping[str, npt.ArrayLike],
        expected: Mapping[str, npt.ArrayLike],
        dtype: str,
        condition: npt.ArrayLike | float = 0.0,
        *,
        scales: Mapping[str, float] | None = None,
        units: Mapping[str, float] | None = None,
        factor: float = 1.0,
        label: str = "",
    ) -> None:
        """Compare every named result; fail listing each one over its tolerance.

        ``condition`` is the rows' condition (`row_condition`); ``scales`` the magnitude atol is relative to, by
        result name, where it is not the result's own RMS (the mean's and dx's: `Problem.scales`); ``units`` the
        cond term's, where it may exceed that (y's and dweight's: `Problem.units`).
        """
        missing = set(expected) - set(actual)
        if missing:
            raise AssertionError(f"{label}missing results: {sorted(missing)}")
        failures = []
        for name, value in expected.items():
            scale, unit = (scales or {}).get(name), (units or {}).get(name)
            r = self.ratio(name, actual[name], value, dtype, condition, factor, scale, unit)
            if not r <= 1.0:
                # the fewest digits (3 at least) that show r over 1: 1.0004, not "1"
                shown = next((f"{r:.{d}g}" for d in range(3, 18) if float(f"{r:.{d}g}") > 1), f"{r}")
                failures.append(f"{name}: error {shown}x the {dtype} {QUANTITY[name]} tolerance")
        if failures:
            raise AssertionError(label + "; ".join(failures))


def bitwise_equal(a: npt.ArrayLike, b: npt.ArrayLike) -> bool:
    """Same shape, dtype and bytes (NaNs with the same payload compare equal)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
