"""A TCP proxy that makes a loopback server look like an object store across a network.

Every request waits ``--latency-ms`` before it reaches the server (a round trip to a cloud
store: ~20-50 ms in a region), and each connection's answers flow at most ``--rate-mbps`` MB/s
(one S3 connection: ~50-100 MB/s). ``bench_remote.py --link MS:MBPS`` starts it in front of its
S3 server for the input ``s3-link``.

    python benchmarks/slow_link.py --listen 39112 --target 39111 --latency-ms 30 --rate-mbps 90
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

PIECE = 1 << 16  # bytes forwarded at a time: the rate is kept within a piece
IDLE = 0.2  # seconds without data after which a connection's next bytes start a new answer


async def pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    size: int,
    hold: Callable[[int], Awaitable[None]],
) -> None:
    """Forward ``reader`` to ``writer`` in pieces of up to ``size`` bytes, each after
    ``hold(len(piece))``, until either side closes."""
    try:
        while data := await reader.read(size):
            await hold(len(data))
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


def latency(delay: float) -> Callable[[int], Awaitable[None]]:
    """Client to server: each piece of a request after ``delay`` seconds."""

    async def hold(size: int) -> None:
        await asyncio.sleep(delay)

    return hold


def rate_limit(rate: float) -> Callable[[int], Awaitable[None]]:
    """Server to client: each answer at most ``rate`` bytes per second."""
    began, sent = 0.0, 0

    async def hold(size: int) -> None:
        nonlocal began, sent
        now = time.monotonic()
        if now - began > IDLE + sent / rate:  # the connection was idle: a new answer
            began, sent = now, 0
        sent += size
        await asyncio.sleep(max(0.0, began + sent / rate - time.monotonic()))

    return hold


async def serve(listen: int, target: int, delay: float, rate: float) -> None:
    async def connection(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            pump(client_r, server_w, PIECE, latency(delay)),
            pump(server_r, client_w, PIECE * 4, rate_limit(rate)),
        )

    server = await asyncio.start_server(connection, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=int, required=True, help="loopback port to listen on")
    parser.add_argument("--target", type=int, required=True, help="loopback port of the server")
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--rate-mbps", type=float, default=90.0, help="MB/s per connection")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.target, args.latency_ms / 1e3, args.rate_mbps * 1e6))


if __name__ == "__main__":
    main()
