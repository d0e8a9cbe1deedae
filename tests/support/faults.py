"""Faults to inject: a TCP proxy that can be frozen like a partitioned network.

``FreezableProxy(host, port)`` listens on a free loopback port and forwards to the target.
``freeze()`` makes it a black hole: it keeps every connection open, accepts new ones, and
neither reads nor forwards a byte, which is what a network partition or a SIGSTOPped
database server looks like to a client (nothing is refused, nothing answers). ``thaw()``
resumes forwarding. ``freeze_replies()`` holds what the server sends back on the
connections open at that moment: their requests arrive and run, their answers are late (a
reply delayed on its way back), while new connections work. It runs its own event loop
in a thread, so the code under test may use any loop::

    with FreezableProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        proxy.freeze()
        ...
        proxy.thaw()

"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType


class FreezableProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self._open: asyncio.Event
        self._server: asyncio.Server

    def __enter__(self) -> FreezableProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def freeze(self) -> None:
        self._call(lambda: self._open.clear())

    def freeze_replies(self) -> None:
        self._call(lambda: [gate.clear() for gate in self._reply_gates])

    def thaw(self) -> None:
        self._call(lambda: [gate.set() for gate in (self._open, *self._reply_gates)])

    def _call(self, action: object) -> None:
        async def run() -> None:
            action()  # type: ignore[operator]

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    async def _start(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._reply_gates: set[asyncio.Event] = set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        tasks = [t for t in asyncio.all_tasks(self._loop) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        # Cancelled at exit: end quietly (asyncio would log a cancelled handler).
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await self._open.wait()
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.close()
                return
            self._writers.add(upstream_writer)
            replies = asyncio.Event()
            replies.set()
            self._reply_gates.add(replies)
            await asyncio.gather(
                self._pipe(reader, upstream_writer, self._open),
                self._pipe(upstream_reader, writer, replies),
            )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while True:
                await self._open.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self._open.wait()  # frozen meanwhile: hold what was read
                await gate.wait()
                writer.write(data)
                await writer.drain()
        writer.close()
