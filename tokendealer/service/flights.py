"""One read at a time per key, shared by every caller who asks meanwhile (single flight).

The client registry, the trust registry and the client key sets each look a thing up in
the store or over the network; a burst of requests for one client (or one unknown id)
must cost one read, not one per request.

>>> reads: SharedTasks[str, Client | None] = SharedTasks()
>>> client = await reads.join(client_id, lambda: store.get_client(client_id))
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedTasks(Generic[K, V]):
    """The task in flight for each key. A task leaves when it ends (its exception, if
    any, retrieved: every waiter may have gone before it failed), or when ``forget``
    drops it, after which a caller starts a new one."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, key: K) -> asyncio.Task[V] | None:
        return self._tasks.get(key)

    def start(self, key: K, coroutine: Coroutine[Any, Any, V]) -> asyncio.Task[V]:
        """Run ``coroutine`` as the task for ``key`` (replacing any: see ``forget``)."""
        task = asyncio.create_task(coroutine)
        self._tasks[key] = task
        task.add_done_callback(functools.partial(self._done, key))
        return task

    async def join(self, key: K, read: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """The result of the task for ``key``, started with ``read()`` if none runs. A
        caller that is cancelled (its client went away) leaves the task to the others."""
        task = self._tasks.get(key)
        if task is None:
            task = self.start(key, read())
        return await asyncio.shield(task)

    def forget(self, key: K) -> None:
        """Drop the task for ``key`` from sharing: it runs on for those who wait for it,
        and the next caller starts another."""
        self._tasks.pop(key, None)

    def _done(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()
