"""The numpy path's tunables in one place (tests lower them to force the rare branches) and its array types.

Modules read them as ``tuning.NAME`` at call time, so a test's ``monkeypatch.setattr(tuning, ...)`` reaches every user.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Bits of the packed sort value (int64, one bit of headroom so ``bucket + 1`` never overflows).
PACKED_BITS = 62
#: Cap on the time bits of the packed value; tests lower it to force coarse buckets (many runs to re-sort).
TIME_BITS_CAP = PACKED_BITS
#: Rows per Arrow batch streamed from DuckDB into the numpy arrays.
BATCH_ROWS = 1 << 18
#: Most cells of the (entity, time cell) table per event (0: always sort every event) and per entity; tests lower them.
CELL_BUDGET = 4
CELLS_PER_ENTITY_CAP = 1 << 20
#: Steps back from a spine row's cell to find a non-empty one, before a running maximum over every cell does it.
STEPS_BACK = 8
#: Below this many events one thread sorts them (splitting costs more than it saves).
PARALLEL_SORT_ROWS = 1 << 20

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
