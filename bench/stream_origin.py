#!/usr/bin/env python3
"""A tiny HTTP/1.1 origin for streaming tests (asyncio, loopback only).

  GET  /download?bytes=N   streams N zero bytes (Content-Length: N) in 256 KiB writes
  POST /upload (or PUT)    reads and discards the body (Content-Length or chunked)
                           and answers with the byte count, e.g. "1073741824\\n"
  anything else            200 "ok\\n" (used as a readiness probe)

Keep-alive is supported. Nothing is buffered beyond one read or one write.

usage: stream_origin.py PORT
"""
import asyncio
import sys
from urllib.parse import parse_qs, urlsplit

CHUNK = 256 * 1024
ZEROS = bytes(CHUNK)


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> int:
    """Reads and discards a request body; returns its length in bytes."""
    total = 0
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Trailers (if any) end with an empty line.
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return total
            remaining = size
            while remaining:
                data = await reader.read(min(remaining, CHUNK))
                if not data:
                    raise ConnectionError("body ended early")
                remaining -= len(data)
            total += size
            await reader.readexactly(2)  # CRLF after each chunk
    remaining = int(headers.get("content-length", "0"))
    while remaining:
        data = await reader.read(min(remaining, CHUNK))
        if not data:
            raise ConnectionError("body ended early")
        remaining -= len(data)
        total += len(data)
    return total


async def respond(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            request_line = await reader.readline()
            if not request_line:
                return
            method, target, _ = request_line.decode("latin-1").split(" ", 2)
            headers = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            url = urlsplit(target)
            if method == "GET" and url.path == "/download":
                n = int(parse_qs(url.query).get("bytes", ["0"])[0])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % n)
                while n:
                    step = min(n, CHUNK)
                    writer.write(ZEROS[:step])
                    await writer.drain()
                    n -= step
            elif method in ("POST", "PUT") and url.path == "/upload":
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                count = await read_body(reader, headers)
                await respond(writer, b"%d\n" % count)
            else:
                await read_body(reader, headers)
                await respond(writer, b"ok\n")
            if headers.get("connection", "").lower() == "close":
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    port = int(sys.argv[1])
    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=CHUNK)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
