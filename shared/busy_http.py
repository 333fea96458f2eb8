"""A small HTTP server that answers 429 when it is busy: a rate-limited partner API in a test.

Run it in its own process: ``python -m shared.busy_http PORT THRESHOLD DELAY RETRY_AFTER``.
Every request to ``/work`` takes ``DELAY`` seconds; while ``THRESHOLD`` requests
are in flight, a new one is answered at once with ``429`` and ``Retry-After: RETRY_AFTER``
(seconds, a decimal). ``GET /stats`` answers a JSON object: ``served``, ``refused``,
``peak`` (the most requests in flight at once, refused ones not counted), ``refusals``
(the server's ``time.time()`` of each 429) and ``arrivals`` (of each request). It prints
``ready`` once it listens.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


class BusyServer:
    """The server's state and its request handler."""

    def __init__(self, threshold: int, delay: float, retry_after: float) -> None:
        self.threshold = threshold
        self.delay = delay
        self.retry_after = retry_after
        self.in_flight = 0
        self.stats: dict[str, Any] = {
            "served": 0,
            "refused": 0,
            "peak": 0,
            "refusals": [],
            "arrivals": [],
        }

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                path = request.split(b" ", 2)[1]
                if path == b"/stats":
                    await self._reply(writer, 200, json.dumps(self.stats).encode())
                    continue
                self.stats["arrivals"].append(time.time())
                if self.in_flight >= self.threshold:
                    self.stats["refused"] += 1
                    self.stats["refusals"].append(time.time())
                    await self._reply(writer, 429, b"busy", f"Retry-After: {self.retry_after}")
                else:
                    self.in_flight += 1
                    self.stats["peak"] = max(self.stats["peak"], self.in_flight)
                    try:
                        await asyncio.sleep(self.delay)
                    finally:
                        self.in_flight -= 1
                    self.stats["served"] += 1
                    await self._reply(writer, 200, b"ok")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter, status: int, body: bytes, header: str | None = None
    ) -> None:
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
        if header is not None:
            lines.append(header)
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: ``(status, headers, body)``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if ": " in line:
                key, value = line.split(": ", 1)
                headers[key.lower()] = value
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body
    finally:
        writer.close()


async def _serve(port: int, threshold: int, delay: float, retry_after: float) -> None:
    server = BusyServer(threshold, delay, retry_after)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", port)
    print("ready", flush=True)
    async with listener:
        await listener.serve_forever()


if __name__ == "__main__":
    port, threshold, delay, retry_after = sys.argv[1:5]
    asyncio.run(_serve(int(port), int(threshold), float(delay), float(retry_after)))
