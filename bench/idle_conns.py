#!/usr/bin/env python3
"""Open N idle keep-alive client connections to 127.0.0.1:PORT.

Each connection sends one complete HTTP/1.1 keep-alive GET and reads the full
response (so the balancer has really served a request on it and holds
whatever per-connection state it keeps), then the connection is left idle.

Prints "ready N" on stdout once every connection is established and served,
then idles until SIGTERM or SIGINT, and exits (the kernel closes the sockets).

usage: idle_conns.py PORT N
"""
import selectors
import signal
import socket
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"


def response_complete(buf: bytes) -> bool:
    """True once buf holds a full response with a Content-Length body."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    length = 0
    for line in buf[:head_end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return len(buf) >= head_end + 4 + length


def main() -> None:
    port = int(sys.argv[1])
    count = int(sys.argv[2])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    sel = selectors.DefaultSelector()
    conns = []
    pending = {}
    batch = 500  # connect in batches so the listen backlog never overflows
    for start in range(0, count, batch):
        for _ in range(start, min(start + batch, count)):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.setblocking(False)
            s.send(REQUEST)
            conns.append(s)
            pending[s] = b""
            sel.register(s, selectors.EVENT_READ)
        while pending:
            events = sel.select(timeout=30)
            if not events:
                sys.exit(f"timed out waiting for {len(pending)} responses")
            for key, _ in events:
                s = key.fileobj
                data = s.recv(65536)
                if not data:
                    sys.exit("server closed a connection before answering")
                pending[s] += data
                if response_complete(pending[s]):
                    status_line = pending[s].split(b"\r\n", 1)[0]
                    if status_line.split()[1:2] != [b"200"]:
                        sys.exit("non-200 response: " + status_line.decode(errors="replace"))
                    del pending[s]
                    sel.unregister(s)
    print(f"ready {len(conns)}", flush=True)
    # Stay idle (holding every socket open) until the caller sends SIGTERM.
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
