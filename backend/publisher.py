"""Latest-wins publishing of job events: the newest progress and preview per job, nothing older.

A slow client must get the newest snapshot, not a backlog. The server publishes on an XPUB
with ``XPUB_NODROP`` and a tiny send high-water mark, so a send fails (``send`` returns
False) only when *that job's subscriber* already has a few messages waiting. Then the event
stays pending here, replaced by any newer one for the same job, and :meth:`flush` retries it
every few milliseconds. Previews go out at most ``preview_hz`` times a second per job.

Three verbs: :meth:`offer` an event, :meth:`flush` what is due, :meth:`forget` a job that
ended. No sockets here: ``send(msg, topic) -> bool`` is the server's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from blender_addon.core.protocol import Message, Preview, Progress

RETRY_S = 0.005  # a subscriber was full: try again this soon


@dataclass
class _Pending:
    topic: bytes
    msg: Message


class LatestWinsPublisher:
    """Per-job pending progress and preview, each replaced by the next one offered.

    Args:
        send: publishes one message on a topic; False when a subscriber is full.
    """

    def __init__(self, send: Callable[[Message, bytes], bool]):
        self._send = send
        self._progress: dict[str, _Pending] = {}
        self._previews: dict[str, _Pending] = {}
        self._interval: dict[str, float] = {}  # job_id -> seconds between previews
        self._last_preview: dict[str, float] = {}
        self.stats = {"previews_in": 0, "previews_out": 0, "previews_dropped": 0}

    def offer(self, msg: Progress | Preview, topic: bytes, *, preview_hz: float = 0.0) -> None:
        """A new event for ``msg.job_id``. Progress goes out at once unless its subscriber is
        full or an older one still waits; a preview waits for :meth:`flush` (its rate)."""
        job_id = msg.job_id
        if isinstance(msg, Preview):
            self.stats["previews_in"] += 1
            if job_id in self._previews:
                self.stats["previews_dropped"] += 1
            self._previews[job_id] = _Pending(topic, msg)
            self._interval[job_id] = 1.0 / preview_hz if preview_hz > 0 else 1e9
        elif job_id in self._progress or not self._send(msg, topic):
            self._progress[job_id] = _Pending(topic, msg)

    def flush(self, now: float) -> None:
        """Publish every pending event that is due and that its subscriber can take."""
        for job_id in list(self._progress):
            pending = self._progress[job_id]
            if self._send(pending.msg, pending.topic):
                del self._progress[job_id]
        for job_id in list(self._previews):
            if now < self._last_preview.get(job_id, 0.0) + self._interval[job_id]:
                continue
            pending = self._previews[job_id]
            if self._send(pending.msg, pending.topic):
                del self._previews[job_id]
                self._last_preview[job_id] = now
                self.stats["previews_out"] += 1

    def forget(self, job_id: str) -> None:
        """The job ended or was deleted: drop what it still had pending."""
        for per_job in (self._progress, self._previews, self._interval, self._last_preview):
            per_job.pop(job_id, None)

    def next_due(self, now: float) -> float | None:
        """When :meth:`flush` next has something to do (None: nothing pending)."""
        due = [now + RETRY_S] if self._progress else []
        for job_id in self._previews:
            due.append(max(now + RETRY_S, self._last_preview.get(job_id, 0.0) + self._interval[job_id]))
        return min(due, default=None)

    def pending(self, job_id: str) -> bool:
        return job_id in self._progress or job_id in self._previews
