"""grid.x=auto (and y): the range to sweep, found before the sweep by bisection along each direction.

The target is max(grid.auto_rise x L0, L0 + summary.basin_rise), L0 the loss at theta*: the larger of the two, so the
swept range holds the whole basin (the rise summary.json measures widths at) and its walls. Along each side of each
direction the distance first reaching the target is bracketed (from START, doubling) and bisected to RTOL; the axis
then spans [-R, R], R the largest of those distances rounded up to DIGITS significant digits, so every wall reaches
the target inside the grid and the grid stays symmetric about theta* (valley asymmetry compares equal distances).
A non-finite loss counts as above the target (a wall).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.core.errors import UserError

START = 0.25  # first distance tried along a side (filter-normalized units)
MAX_DISTANCE = 4096.0  # the loss must reach the target by this distance, else the axis is refused
RTOL = 1e-3  # bisection stops when the bracket is narrower than RTOL x its upper end
DIGITS = 3  # significant digits of the chosen range (rounded up)

LossAt = Callable[[np.ndarray], float]  # direction coefficients [count] -> the mean eval loss there


@dataclass
class Wall:
    """Where the loss first reaches the target along one side of one direction, and how many losses it took."""

    direction: int
    side: int  # +1 or -1
    distance: float
    evaluations: int


@dataclass
class AxisRange:
    """The range chosen for one grid axis from the walls of its directions."""

    axis: str
    range: list[float]
    walls: list[Wall] = field(default_factory=list)

    def record(self) -> dict[str, object]:
        """The range and every wall's distance, as stored in the store's auto_range attribute."""
        return {"range": self.range, "directions": sorted({w.direction for w in self.walls}),
                "plus": [w.distance for w in self.walls if w.side > 0],
                "minus": [w.distance for w in self.walls if w.side < 0],
                "evaluations": sum(w.evaluations for w in self.walls)}


def target_loss(centre: float, auto_rise: float, basin_rise: float) -> float:
    """The loss the range's edges reach: max(auto_rise x centre, centre + basin_rise)."""
    return max(auto_rise * centre, centre + basin_rise)


def round_up(value: float, digits: int = DIGITS) -> float:
    """value rounded up to `digits` significant digits (0.70712 -> 0.708)."""
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return float(f"{math.ceil(value / step - 1e-9) * step:.{digits}g}")


def wall_distance(loss_at: Callable[[float], float], target: float, what: str) -> tuple[float, int]:
    """The distance where loss_at first reaches target (bracketed by doubling from START, bisected to RTOL) and the
    number of evaluations; refused in one line when it does not by MAX_DISTANCE."""
    evaluations = 0

    def above(r: float) -> bool:
        nonlocal evaluations
        evaluations += 1
        value = loss_at(r)
        return not math.isfinite(value) or value >= target

    lo, hi = 0.0, START
    while not above(hi):
        lo, hi = hi, 2 * hi
        if hi > MAX_DISTANCE:
            raise UserError(f"grid.x/y=auto: the loss stays below {target:.4g} out to distance {lo:g} along {what}; "
                            "lower grid.auto_rise or give the range, e.g. grid.x=[-1,1]")
    while hi - lo > RTOL * hi:
        mid = (lo + hi) / 2
        if above(mid):
            hi = mid
        else:
            lo = mid
    return hi, evaluations


def axis_range(axis: str, directions: Sequence[int], count: int, loss_at: LossAt, target: float) -> AxisRange:
    """The symmetric range [-R, R] of one grid axis: R covers the wall on both sides of each of its directions."""
    walls = []
    for k in directions:
        for side in (1, -1):
            def along(r: float, k: int = k, side: int = side) -> float:
                coefficients = np.zeros(count)
                coefficients[k] = side * r
                return loss_at(coefficients)

            distance, evaluations = wall_distance(along, target, f"{'+' if side > 0 else '-'}d{k + 1}")
            walls.append(Wall(k, side, distance, evaluations))
    reach = round_up(max(w.distance for w in walls))
    return AxisRange(axis, [-reach, reach], walls)
