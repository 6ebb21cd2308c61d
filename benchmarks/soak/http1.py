"""HTTP/1.1 on a raw socket: a client that reads exactly when and as much as it chooses.

An HTTP library reads ahead into its own buffers, so a client of it cannot read slowly, stall,
or leave a response unread; the soak's clients must do each. One request per connection
(``Connection: close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import socket
import struct
import termios
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


class Truncated(Exception):
    """The connection ended before the response did."""


class Conn:
    """One request's connection, read only when and as much as its client chooses."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.eof = False

    @classmethod
    async def open(cls, host: str, port: int, *, rcvbuf: int | None = None, mss: int | None = None) -> Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if mss is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def _fill(self, size: int) -> None:
        data = await self.loop.sock_recv(self.sock, size)
        if not data:
            self.eof = True
            raise Truncated(f"connection closed after {len(self.buf)} unread bytes")
        self.buf += data

    async def line(self, size: int = 65536) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            await self._fill(size)
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    async def exactly(self, count: int, size: int = 65536) -> bytes:
        while len(self.buf) < count:
            await self._fill(size)
        data = bytes(self.buf[:count])
        del self.buf[:count]
        return data

    async def rest(self, size: int = 65536) -> bytes:
        with contextlib.suppress(Truncated):
            while True:
                await self._fill(size)
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def queued(self) -> int:
        """Bytes waiting in the kernel's receive queue, unread."""
        out = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        value: int = struct.unpack("i", out)[0]
        return value

    def close(self, reset: bool = False) -> None:
        if reset:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


@dataclass
class Head:
    status: int
    headers: dict[str, str]


async def read_head(conn: Conn) -> Head:
    status_line = (await conn.line()).decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"bad status line {status_line!r}")
    headers: dict[str, str] = {}
    while line := await conn.line():
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Head(int(parts[1]), headers)


async def body_pieces(conn: Conn, head: Head, read_size: int = 65536) -> AsyncIterator[bytes]:
    """The body as it arrives: chunked, of a Content-Length, or up to the connection's end."""
    if head.headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await conn.line(read_size)).split(b";")[0].strip(), 16)
            if size == 0:
                while await conn.line(read_size):  # trailers, then the blank line
                    pass
                return
            yield await conn.exactly(size, read_size)
            if await conn.exactly(2, read_size) != b"\r\n":
                raise ValueError("chunk not followed by CRLF")
    elif "content-length" in head.headers:
        yield await conn.exactly(int(head.headers["content-length"]), read_size)
    else:
        yield await conn.rest(read_size)


async def sse_data(pieces: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event; comments (keep-alive pings) are skipped."""
    pending = b""
    async for piece in pieces:
        pending += piece.replace(b"\r\n", b"\n")
        while (end := pending.find(b"\n\n")) >= 0:
            block, pending = pending[:end], pending[end + 2 :]
            data = [line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
            if data:
                yield b"\n".join(data).decode()
    if pending.strip():
        raise ValueError(f"stream ended inside an event: {pending[:120]!r}")


def request_bytes(host: str, path: str, body: dict[str, Any], stream: bool) -> bytes:
    """A POST of ``body`` as JSON that asks the server to close the connection after answering."""
    payload = json.dumps(body).encode()
    accept = "text/event-stream" if stream else "application/json"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: {accept}\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + payload
