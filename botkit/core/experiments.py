"""A/B tests' results: a step's figures by variant, and whether a variant's completion rate
differs from the control's by more than chance would explain.

The test is the two-proportion z-test with a pooled proportion, two-sided, as in any
statistics textbook (and as ``statsmodels.stats.proportion.proportions_ztest`` computes it):

    p = (x1 + x2) / (n1 + n2)
    z = (x2/n2 - x1/n1) / sqrt(p (1 - p) (1/n1 + 1/n2))
    p-value = erfc(|z| / sqrt(2))

It is pure Python (``math.erfc`` is the normal distribution's tail), so no scipy. The normal
approximation holds when each group has at least ``MIN_EACH`` completions and as many
non-completions; below that the comparison says so (``enough`` is False) and is not called
significant, whatever its p-value.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["ALPHA", "MIN_EACH", "Comparison", "VariantFigures", "by_variant", "two_proportions"]

ALPHA = 0.05  # the significance level: a p-value below it is called significant
MIN_EACH = 5  # completions and non-completions each group needs for the approximation


@dataclass(frozen=True)
class Comparison:
    """A variant's completion rate against the control's (the step's first variant)."""

    difference: float  # the variant's rate minus the control's
    z: float
    p_value: float  # two-sided
    enough: bool  # every group has MIN_EACH completions and as many non-completions

    @property
    def significant(self) -> bool:
        return self.enough and self.p_value < ALPHA

    @property
    def verdict(self) -> str:
        if not self.enough:
            return "too few to tell"
        return "significant" if self.significant else "not significant"

    @property
    def summary(self) -> str:
        """``+12.5 points, p = 0.031: significant``, as ``run.py stats`` and the console say."""
        p = "p < 0.001" if self.p_value < 0.001 else f"p = {self.p_value:.3f}"
        return f"{100 * self.difference:+.1f} points, {p}: {self.verdict}"


def two_proportions(x1: int, n1: int, x2: int, n2: int) -> Comparison | None:
    """The z-test of ``x2/n2`` against ``x1/n1``; None when a group is empty.

    >>> round(two_proportions(50, 100, 70, 100).p_value, 4)
    0.0039
    """
    if n1 <= 0 or n2 <= 0:
        return None
    if not (0 <= x1 <= n1 and 0 <= x2 <= n2):
        raise ValueError(f"successes must be within their groups: {x1}/{n1}, {x2}/{n2}")
    rate1, rate2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    error = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    enough = all(k >= MIN_EACH for k in (x1, n1 - x1, x2, n2 - x2))
    if error == 0:  # all completed, or none did: nothing tells the groups apart
        return Comparison(rate2 - rate1, 0.0, 1.0, enough)
    z = (rate2 - rate1) / error
    return Comparison(rate2 - rate1, z, math.erfc(abs(z) / math.sqrt(2)), enough)


@dataclass(frozen=True)
class VariantFigures:
    """One variant of a step: its conversations' figures (``Store.funnel``'s ``variants``),
    and its completion rate compared with the control's."""

    template: str
    reached: int
    answered: int
    went_on: int  # asked another step after this one, or finished
    gave_up: int
    timed_out: int
    completed: int
    median_answer: float | None  # seconds
    comparison: Comparison | None  # None for the control, or when a group is empty

    @property
    def completion(self) -> float | None:
        return self.completed / self.reached if self.reached else None

    def as_dict(self) -> dict[str, Any]:
        figures = asdict(self) | {"completion": self.completion}
        if self.comparison is not None:
            c = self.comparison
            figures["comparison"] |= {"significant": c.significant, "verdict": c.verdict,
                                      "summary": c.summary}
        return figures


def by_variant(templates: Sequence[str], figures: Mapping[str, Mapping[str, Any]],
               ) -> list[VariantFigures]:
    """A step's variants in their declared order (``templates``; the first is the control),
    from the store's figures by template (a variant nobody got yet has zeros), each but the
    control compared with it."""
    empty: Mapping[str, Any] = {}
    rows = []
    for template in templates:
        f = figures.get(template, empty)
        delays = sorted(f.get("delays", ()))
        rows.append(VariantFigures(
            template, f.get("reached", 0), f.get("answered", 0), f.get("went_on", 0),
            f.get("gave_up", 0), f.get("timed_out", 0), f.get("completed", 0),
            statistics.median(delays) if delays else None, None))
    control = rows[0] if rows else None
    return [row if control is None or row is control else replace(row, comparison=two_proportions(
        control.completed, control.reached, row.completed, row.reached)) for row in rows]
