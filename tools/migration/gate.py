"""When a migration may run its next batch: not while an operator paused it, not while a standby lags.

``stagectl migrate pause|resume --run N`` set the run's ``pause_requested``
from any terminal; ``--max-replica-lag-ms`` bounds the replay lag of every
streaming standby, read on the primary from ``pg_stat_replication`` (as gh-ost
and GitLab's batched background migrations throttle on replicas). Above the
limit the run waits; it goes on once every standby is back under half of it
(hysteresis: a lag hovering at the limit does not flap the run). Both are
checked between batches, at most every ``CHECK_S``; the reason a run waits is
written to its control row (``waiting``: ``migrate status`` shows it) and said
on the progress output.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

import asyncpg

CHECK_S: Final = 0.25
RESUME_SHARE: Final = 0.5  # a throttled run goes on below this share of --max-replica-lag-ms

# Every standby's replay lag in ms (NULL when it has replayed everything: 0). pg_stat_replication shows the lag
# columns only to roles with pg_read_all_stats (pg_monitor) or superuser: `readable` says whether this role sees
# them at all.
LAG: Final = ("SELECT count(*) AS standbys, coalesce(max(extract(epoch FROM replay_lag) * 1000), 0)::float8 AS lag_ms, "
              "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
              "OR pg_has_role(current_user, 'pg_read_all_stats', 'member') AS readable FROM pg_stat_replication")


class Gate:
    """The run's gate; ``check`` reads its state on a connection, ``passage`` waits until it is open."""

    def __init__(self, run_id: int, max_lag_ms: float | None, say: Callable[[str | None], None]) -> None:
        self.run_id = run_id
        self.max_lag_ms = max_lag_ms if max_lag_ms else None
        self.say = say  # told the reason the run waits (None: it goes on)
        self.paused = False
        self.throttled = False
        self.lag_ms = 0.0
        self.unreadable_lag = False  # standbys exist but this role cannot read their lag
        self.waiting: str | None = None
        self._checked = 0.0
        self._open = asyncio.Event()
        self._open.set()

    async def check(self, db: asyncpg.Connection, *, force: bool = False) -> None:
        """Read the pause request and the standbys' lag (at most every CHECK_S unless ``force``); write the
        reason the run waits to its control row when it changes."""
        now = time.monotonic()
        if not force and now - self._checked < CHECK_S:
            return
        self._checked = now
        self.paused = bool(await db.fetchval(
            "SELECT pause_requested FROM stage_migration_control WHERE run_id = $1", self.run_id))
        if self.max_lag_ms is not None:
            row = await db.fetchrow(LAG)
            assert row is not None  # an aggregate: always one row
            self.unreadable_lag = bool(row["standbys"]) and not row["readable"]
            self.lag_ms = float(row["lag_ms"])
            if self.throttled:
                self.throttled = self.lag_ms >= self.max_lag_ms * RESUME_SHARE
            else:
                self.throttled = self.lag_ms > self.max_lag_ms
        waiting = self._reason()
        if waiting != self.waiting:
            self.waiting = waiting
            await db.execute("UPDATE stage_migration_control SET waiting = $2, updated_at = now() WHERE run_id = $1",
                             self.run_id, waiting)
            self.say(waiting)
        if waiting is None:
            self._open.set()
        else:
            self._open.clear()

    def _reason(self) -> str | None:
        if self.paused:
            return f"paused by `stagectl migrate pause --run {self.run_id}` (go on with `stagectl migrate resume " \
                   f"--run {self.run_id}`)"
        if self.throttled and self.max_lag_ms is not None:
            return (f"replica lag {self.lag_ms:.0f} ms over --max-replica-lag-ms {self.max_lag_ms:g}: waiting until "
                    f"every standby is under {self.max_lag_ms * RESUME_SHARE:g} ms")
        return None

    async def passage(self, stop: asyncio.Event, db: asyncpg.Connection | None) -> bool:
        """Wait until the next batch may run; False when a stop was asked for meanwhile. With ``db``, this caller
        checks the state itself (a run on one connection); without, another task checks it (a parallel run)."""
        while not stop.is_set():
            if db is not None:
                await self.check(db)
            if self._open.is_set():
                return True
            if db is None:
                waiter = asyncio.ensure_future(self._open.wait())
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait((waiter, stopper), timeout=CHECK_S, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    stopper.cancel()
            else:
                try:
                    await asyncio.wait_for(stop.wait(), CHECK_S)
                except TimeoutError:
                    pass
        return False
