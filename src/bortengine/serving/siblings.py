"""The processes of one `bortengine serve --workers N` server telling each other their metrics: a scrape of /metrics
reaches one worker (whichever the kernel gave the connection), which answers with every worker's figures summed.

Each worker answers on a Unix socket of its own in a directory only the server's user may enter (made by the
parent, removed when it stops) with its snapshot (ServerMetrics.snapshot) as JSON, and asks its siblings' sockets
for theirs when it is scraped. Live figures at every scrape, and nothing on a request's way: a worker's requests
record into its own counters, as a lone server's do.
"""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Callable, Optional

__all__ = ["Siblings"]

# A sibling that has not answered within this long is left out of the scrape (its socket is gone while it restarts,
# or its event loop is stuck): bortengine_workers_reporting then says how many were summed.
ANSWER_TIMEOUT_S = 2.0
# A snapshot is a few kB; a sibling's answer past this is not one.
MAX_SNAPSHOT_BYTES = 1 << 22


class Siblings:
    def __init__(self, directory: str | Path, index: int, workers: int):
        self.directory = Path(directory)
        self.index = index
        self.workers = workers
        self._server: Optional[asyncio.AbstractServer] = None

    def path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.sock"

    async def start(self, snapshot: Callable[[], dict]) -> None:
        """Answer the siblings' requests with snapshot() (on this event loop) until close()."""
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(json.dumps(snapshot()).encode())
                await writer.drain()
            finally:
                writer.close()

        # (a restarted worker's socket file is still there: asyncio removes a stale socket before it binds)
        self._server = await asyncio.start_unix_server(answer, path=str(self.path(self.index)))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def snapshots(self) -> list[dict]:
        """Every other worker's snapshot, asked of all at once; those that do not answer are left out."""
        others = [i for i in range(self.workers) if i != self.index]
        answers = await asyncio.gather(*(self._snapshot(i) for i in others))
        return [a for a in answers if a is not None]

    async def _snapshot(self, index: int) -> Optional[dict]:
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                reader, writer = await asyncio.open_unix_connection(str(self.path(index)))
                try:
                    answer = b""
                    while chunk := await reader.read(1 << 16):   # to the end: the sibling closes after its answer
                        answer += chunk
                        if len(answer) > MAX_SNAPSHOT_BYTES:
                            raise ValueError(f"its answer is over {MAX_SNAPSHOT_BYTES} bytes")
                    return json.loads(answer)
                finally:
                    writer.close()
        except (OSError, TimeoutError, ValueError) as e:
            logging.getLogger("bortengine.serving").warning(
                "worker %d left worker %d's figures out of this scrape of /metrics: %s", self.index, index,
                e or type(e).__name__)
            return None
