"""Common random numbers for the simulator: one seeded stream per component, indexed by (session, step).

Comparing two policies by rolling each out in the same world is only as sharp as the noise they share.
Here every random number the world uses is a pure function of

    (stream key, component, session round, step, user)

so a policy meets exactly the same session starts, choice shocks, taste drift and session-end draws as
any other policy, whatever it shows and whichever sessions happen to still be running. A shared
generator consumed step by step cannot give that: the number of draws at a step depends on how many
sessions are still active, and every later draw shifts.

Layout. For each (component, round, step) the users are cut into blocks of ``BLOCK`` rows; block b is
drawn from its own generator ``default_rng([*key, component, round, step, b])`` as a (BLOCK, width)
array, and a user's numbers are its row. Only the blocks that hold the requested users are drawn, so
the vectorised rollout (all users of a round at once) and the gymnasium environment (one session at a
time) read identical numbers at the cost of at most one block per call.

Components (``Component``):

- ``START``: the session-start taste noise, normal (d,);
- ``DRAWS``: uniforms (K,) for a slate of K independent draws (inverse CDF);
- ``PL``: Gumbel noise (I,) keyed by item, for Plackett–Luce slates (Gumbel-top-K);
- ``CHOICE``: Gumbel noise (1 + I,) keyed by item (column 0 = "no engagement"): the same item shown
  to the same user at the same step gets the same utility shock under every policy;
- ``KIND``: Gumbel noise (4,) for the engagement type (pv/cart/fav/buy);
- ``DRIFT``: normal (d,) taste drift;
- ``END``: one uniform for the session-end draw;
- ``USER``: one uniform, used by the gymnasium environment to draw which user a session belongs to.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

import numpy as np

__all__ = ["BLOCK", "Component", "NoiseStreams"]

BLOCK = 32
"""Users per generator block."""


class Component(IntEnum):
    START = 0
    DRAWS = 1
    PL = 2
    CHOICE = 3
    KIND = 4
    DRIFT = 5
    END = 6
    USER = 7


_GUMBEL = (Component.PL, Component.CHOICE, Component.KIND)
_NORMAL = (Component.START, Component.DRIFT)


class NoiseStreams:
    """The random numbers of one family of rollouts, keyed by ``key`` (a tuple of non-negative ints).

    Two rollouts built on equal keys see equal numbers; different keys give independent streams.
    """

    def __init__(self, key: Sequence[int]) -> None:
        if any(int(k) < 0 for k in key):
            raise ValueError(f"stream keys must be non-negative integers, got {tuple(key)}")
        self.key = tuple(int(k) for k in key)

    def draw(
        self,
        component: Component,
        round_: int,
        step: int,
        rows: np.ndarray,
        width: int,
        cols: np.ndarray | None = None,
    ) -> np.ndarray:
        """(len(rows), width) numbers of ``component`` at (round, step) for the users ``rows``; with ``cols``
        (len(rows), m) column indices, only those entries (len(rows), m) — the same numbers, fewer transformed."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.shape[0], width if cols is None else cols.shape[1]))
        if rows.size == 0:
            return out
        blocks = rows // BLOCK
        for b in np.unique(blocks):
            gen = np.random.default_rng([*self.key, int(component), round_, step, int(b)])
            sel = np.flatnonzero(blocks == b)
            if component in _NORMAL:
                values = gen.standard_normal(size=(BLOCK, width))[rows[sel] - b * BLOCK]
            else:
                values = gen.random(size=(BLOCK, width))[rows[sel] - b * BLOCK]
            if cols is not None:
                values = np.take_along_axis(values, cols[sel], axis=1)
            out[sel] = values
        if component in _GUMBEL:  # Gumbel(0, 1) = −log(−log U), U kept inside (0, 1)
            out = -np.log(-np.log(np.clip(out, 1e-300, 1.0 - 2**-53)))
        return out
