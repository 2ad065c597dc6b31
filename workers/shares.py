"""Static shares of one deployment's quota, held by the processes that send to it.

When a job is scaled out, several processes send to one deployment. Each meters its own
*share* of the quota with its own window copy (``Ledger.set_share``): the deployment's
window then holds at most the sum of the shares, so no margin is needed for credit in
flight, and no admission waits on a round trip to anyone.

The quota is cut into ``UNITS`` units; a process holds some (in flows, as leases of a
Prefect global concurrency limit of ``UNITS`` slots, so that no two hold the same unit
and a dead process's units come back when its leases expire). Each process aims at an
even split among the processes present (``target``). The pure rules here keep the sum of
what the processes may use within the quota at every instant, also while units change hands:

- a process admits within ``min(held, target)`` units (``in_force``): above its target it
  is shrinking, and what it sent lately still sits in the deployment's window;
- it gives a unit back only once its window copy holds less than what it keeps
  (``releasable``): what it sent before can then no longer overfill the window of
  whoever takes the unit, who may use it at once;
- each unit is a lease of its own: a lease is given back whole, and a shrinking or leaving
  process must be able to give back one unit as soon as its window no longer needs it (with
  larger leases it would sit on a whole piece until its window emptied).

Time does not appear: the window copy's fullness (``Ledger.fullness``) carries it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: The quota is shared in this many units (a process's share moves in steps of 1/32).
UNITS = 32


def target(members: int, units: int = UNITS) -> int:
    """The units each of ``members`` processes aims at (rounded up: the last unit goes to whoever
    takes it first; the limit refuses the others)."""
    return math.ceil(units / max(1, members))


def in_force(held: int, aim: int, units: int = UNITS) -> float:
    """The share of the quota a process holding ``held`` units and aiming at ``aim`` may use now."""
    return max(0, min(held, aim)) / units


def needed(fullness: float, units: int = UNITS) -> int:
    """Units that still cover what the window copy holds (``fullness``: a share of the quota)."""
    return min(units, max(0, math.ceil(fullness * units - 1e-9)))


def releasable(leases: Sequence[int], aim: int, fullness: float, units: int = UNITS) -> list[int]:
    """Which leases (by index; each of ``leases[i]`` units) to give back now.

    Down to ``aim`` at most, and never below what the window copy still holds (``needed``);
    the largest leases first, each only if it fits whole within what may go.
    """
    may_go = sum(leases) - max(aim, needed(fullness, units))
    chosen: list[int] = []
    for index in sorted(range(len(leases)), key=lambda i: -leases[i]):
        if 0 < leases[index] <= may_go:
            chosen.append(index)
            may_go -= leases[index]
    return sorted(chosen)
