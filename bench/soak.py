#!/usr/bin/env python3
"""Soak test: Steelyard under mixed traffic while backends die and the config reloads.

    python3 bench/soak.py                  # 10 minutes (see bench/soak.sh)
    DURATION=60 python3 bench/soak.py      # a quick run

Everything runs on 127.0.0.1 and stops at the end (or on Ctrl-C). Three origins (child
processes of this script) serve GET, POST, 1 MiB streamed responses and WebSocket echo;
client threads send a mix of all four through the release binary; every KILL_EVERY seconds
one origin is SIGKILLed and restarted RESTART_AFTER seconds later on the same port; every
RELOAD_EVERY seconds the config file is rewritten (algorithm and weights change) and
Steelyard gets SIGHUP.

It reports requests by kind, failures by cause, POSTs that reached an origin more than once
(must be 0), POSTs answered 200 that no origin received (must be 0), corrupted bodies (must
be 0), reloads, and Steelyard's RSS and open descriptors after warm-up and at the end.
Exits 1 when a must-be-0 figure is not 0 or descriptors grew.
"""

import asyncio
import base64
import collections
import hashlib
import http.client
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target", "release", "steelyard")
DURATION = float(os.environ.get("DURATION", "600"))
WARMUP = float(os.environ.get("WARMUP", "10"))
CLIENTS = int(os.environ.get("CLIENTS", "8"))
KILL_EVERY = float(os.environ.get("KILL_EVERY", "8"))
RESTART_AFTER = float(os.environ.get("RESTART_AFTER", "2"))
RELOAD_EVERY = float(os.environ.get("RELOAD_EVERY", "3"))
STREAM_BYTES = 1 << 20
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
PATTERN = bytes(range(256)) * (STREAM_BYTES // 256)


# ------------------------------------------------------------------ origin ---

async def read_chunked(reader):
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def websocket_echo(reader, writer, key):
    accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
    )
    await writer.drain()
    while True:
        b0, b1 = await reader.readexactly(2)
        opcode, length = b0 & 0x0F, b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
        data = bytearray(await reader.readexactly(length))
        for i in range(length):
            data[i] ^= mask[i % 4]
        if opcode == 8:
            writer.write(frame(8, bytes(data), masked=False))
            await writer.drain()
            return
        writer.write(frame(10 if opcode == 9 else opcode, bytes(data), masked=False))
        await writer.drain()


def frame(opcode, data, masked):
    head = bytearray([0x80 | opcode])
    bit = 0x80 if masked else 0
    if len(data) < 126:
        head.append(bit | len(data))
    elif len(data) < 65536:
        head.append(bit | 126)
        head += struct.pack("!H", len(data))
    else:
        head.append(bit | 127)
        head += struct.pack("!Q", len(data))
    if not masked:
        return bytes(head) + data
    mask = os.urandom(4)
    return bytes(head) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def serve_origin(port, name, post_log):
    log = open(post_log, "a", buffering=1)

    async def handle(reader, writer):
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                lines = head.split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if headers.get("upgrade", "").lower() == "websocket":
                    await websocket_echo(reader, writer, headers["sec-websocket-key"])
                    return
                body = b""
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    body = await read_chunked(reader)
                if method == "POST":
                    log.write(f"{headers.get('x-post-id', '-')} {name}\n")
                    answer = f"{name} {len(body)}".encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
                elif target.startswith("/stream"):
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for at in range(0, STREAM_BYTES, 64 * 1024):
                        piece = PATTERN[at:at + 64 * 1024]
                        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        await writer.drain()
                    writer.write(b"0\r\n\r\n")
                else:
                    answer = name.encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True)
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------ client ---

class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = collections.Counter()
        self.failures = collections.Counter()
        self.posts = {}  # id -> status (0: no response)

    def ok(self, kind):
        with self.lock:
            self.requests[kind] += 1

    def fail(self, kind, cause):
        with self.lock:
            self.requests[kind] += 1
            self.failures[f"{kind}: {cause}"] += 1


def client_loop(addr, stop, tally, seed):
    rng = random.Random(seed)
    conn = None
    serial = 0
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection(addr[0], addr[1], timeout=30)
        kind = rng.choices(["get", "post", "stream", "websocket"], [50, 25, 15, 10])[0]
        try:
            if kind == "websocket":
                websocket_once(addr, rng, tally)
                continue
            if kind == "get":
                conn.request("GET", "/get", headers={"Host": "soak.test"})
                res = conn.getresponse()
                body = res.read()
                if res.status != 200:
                    tally.fail(kind, f"HTTP {res.status}")
                elif body not in (b"o1", b"o2", b"o3"):
                    tally.fail(kind, "corrupted body")
                else:
                    tally.ok(kind)
            elif kind == "post":
                serial += 1
                post_id = f"{seed}-{serial}"
                size = rng.randrange(1, 64 * 1024)
                with tally.lock:
                    tally.posts[post_id] = 0
                conn.request("POST", "/post", body=os.urandom(size),
                             headers={"Host": "soak.test", "X-Post-Id": post_id})
                res = conn.getresponse()
                body = res.read()
                with tally.lock:
                    tally.posts[post_id] = res.status
                if res.status != 200:
                    tally.fail(kind, f"HTTP {res.status}")
                elif body.split(b" ")[-1] != str(size).encode():
                    tally.fail(kind, "corrupted body")
                else:
                    tally.ok(kind)
            else:
                conn.request("GET", f"/stream?n={STREAM_BYTES}", headers={"Host": "soak.test"})
                res = conn.getresponse()
                body = res.read()
                if res.status != 200:
                    tally.fail(kind, f"HTTP {res.status}")
                elif body != PATTERN:
                    # A backend killed mid-stream ends the body early: Steelyard closes the
                    # client connection without the last chunk, and http.client raises below.
                    tally.fail(kind, "corrupted body")
                else:
                    tally.ok(kind)
            if res.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (http.client.IncompleteRead,) as e:
            tally.fail(kind, "body cut short (backend died mid-response)")
            conn.close()
            conn = None
        except (OSError, http.client.HTTPException) as e:
            tally.fail(kind, f"connection error ({type(e).__name__})")
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def recv_exact(sock, n):
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return bytes(out)


def recv_frame(sock):
    b0, b1 = recv_exact(sock, 2)
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", recv_exact(sock, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", recv_exact(sock, 8))
    return b0 & 0x0F, recv_exact(sock, length)


def websocket_once(addr, rng, tally):
    kind = "websocket"
    try:
        with socket.create_connection(addr, timeout=30) as sock:
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(
                f"GET /ws HTTP/1.1\r\nHost: soak.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed during the handshake")
                head += chunk
            status = head.split(b" ", 2)[1]
            if status != b"101":
                tally.fail(kind, f"HTTP {status.decode()}")
                return
            for opcode, data in [(1, b"hello"), (2, os.urandom(64 * 1024)), (9, b"ping"), (1, b"bye")]:
                sock.sendall(frame(opcode, data, masked=True))
                got_op, got = recv_frame(sock)
                if got != data or got_op != (10 if opcode == 9 else opcode):
                    tally.fail(kind, "corrupted frame")
                    return
            sock.sendall(frame(8, b"\x03\xe8", masked=True))
            if recv_frame(sock)[0] != 8:
                tally.fail(kind, "no close frame")
                return
            tally.ok(kind)
    except (OSError, ValueError) as e:
        tally.fail(kind, f"tunnel ended early ({type(e).__name__})")


# --------------------------------------------------------------- harness ---

def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def config_text(ports, admin_port, listen_port, generation):
    algorithm = ["round_robin", "least_request", "peak_ewma", "least_connections"][generation % 4]
    weights = [1 + (generation + i) % 3 for i in range(3)]
    backends = ", ".join(
        f'{{ address = "127.0.0.1:{p}", weight = {w} }}' for p, w in zip(ports, weights)
    )
    return f"""# generation {generation}
[admin]
listen = "127.0.0.1:{admin_port}"

[server]
workers = 2
drain_timeout = "5s"

[[listeners]]
name = "soak"
listen = "127.0.0.1:{listen_port}"
routes = [{{ pool = "origins" }}]

[pools.origins]
algorithm = "{algorithm}"
backends = [{backends}]
health_check = {{ path = "/get", interval = "500ms", timeout = "300ms", healthy_threshold = 1, unhealthy_threshold = 1 }}
passive = {{ consecutive_failures = 1, base_ejection_time = "2s" }}
retries = {{ attempts = 2, on = ["connect-failure", "reset", "timeout"] }}
timeouts = {{ connect = "500ms", response_header = "5s" }}
"""


def wait_for_port(port, limit=10.0):
    deadline = time.time() + limit
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {limit}s")
            time.sleep(0.05)


def proc_figures(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def metric(admin_port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "origin":
        asyncio.run(serve_origin(int(sys.argv[2]), sys.argv[3], sys.argv[4]))
        return 0
    if not os.path.exists(BIN):
        print(f"{BIN} is missing: run cargo build --release first", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="steelyard-soak.")
    post_log = os.path.join(work, "posts.log")
    *origin_ports, admin_port, listen_port = free_ports(5)
    procs = {}

    def start_origin(i):
        procs[i] = subprocess.Popen([sys.executable, __file__, "origin", str(origin_ports[i]), f"o{i + 1}", post_log])

    for i in range(3):
        start_origin(i)
    for port in origin_ports:
        wait_for_port(port)
    cfg = os.path.join(work, "soak.toml")
    with open(cfg, "w") as f:
        f.write(config_text(origin_ports, admin_port, listen_port, 0))
    steelyard = subprocess.Popen([BIN, "--config", cfg, "--log-level", "warn"],
                                 stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "steelyard.log"), "w"))
    stop = threading.Event()
    try:
        wait_for_port(listen_port)
        wait_for_port(admin_port)
        tally = Tally()
        threads = [threading.Thread(target=client_loop, args=(("127.0.0.1", listen_port), stop, tally, n), daemon=True)
                   for n in range(CLIENTS)]
        for t in threads:
            t.start()
        started = time.time()
        time.sleep(WARMUP)
        rss0, fds0 = proc_figures(steelyard.pid)
        print(f"after {WARMUP:.0f}s warm-up: RSS {rss0} KiB, {fds0} open descriptors", flush=True)
        kills = reloads = 0
        next_kill, next_reload, generation = time.time() + KILL_EVERY, time.time() + RELOAD_EVERY, 0
        victim, restart_at = None, None
        peak_rss = rss0
        while time.time() < started + DURATION:
            now = time.time()
            if victim is None and now >= next_kill:
                victim = random.randrange(3)
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                kills += 1
                restart_at = now + RESTART_AFTER
            if victim is not None and now >= restart_at:
                start_origin(victim)
                victim = None
                next_kill = now + KILL_EVERY
            if now >= next_reload:
                generation += 1
                with open(cfg, "w") as f:
                    f.write(config_text(origin_ports, admin_port, listen_port, generation))
                steelyard.send_signal(signal.SIGHUP)
                reloads += 1
                next_reload = now + RELOAD_EVERY
            peak_rss = max(peak_rss, proc_figures(steelyard.pid)[0])
            time.sleep(0.1)
        if victim is not None:
            start_origin(victim)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        # Idle client connections are gone; upstream keep-alive ones stay pooled.
        time.sleep(2)
        rss1, fds1 = proc_figures(steelyard.pid)
        reload_ok = metric(admin_port, 'steelyard_config_reloads_total{result="success"}')
        reload_failed = metric(admin_port, 'steelyard_config_reloads_total{result="failure"}')
        upstream_idle = metric(admin_port, "steelyard_upstream_idle_connections")
        retries = metric(admin_port, "steelyard_retries_total")
        retries_refused = metric(admin_port, "steelyard_retries_refused_total")
    finally:
        stop.set()
        steelyard.send_signal(signal.SIGTERM)
        try:
            steelyard.wait(timeout=15)
        except subprocess.TimeoutExpired:
            steelyard.kill()
        for p in procs.values():
            p.kill()

    received = collections.Counter()
    with open(post_log) as f:
        for line in f:
            received[line.split(" ", 1)[0]] += 1
    duplicated = sorted(i for i, n in received.items() if n > 1)
    lost = sorted(i for i, status in tally.posts.items() if status == 200 and received[i] == 0)
    corrupted = sum(n for cause, n in tally.failures.items() if "corrupted" in cause)
    total = sum(tally.requests.values())
    failed = sum(tally.failures.values())

    print(f"\n## Soak: {DURATION:.0f}s, {CLIENTS} client threads, {kills} origin kills, {reloads} reloads\n")
    print("| kind | requests | failed |")
    print("| --- | ---: | ---: |")
    for kind in ["get", "post", "stream", "websocket"]:
        f_kind = sum(n for cause, n in tally.failures.items() if cause.startswith(kind + ":"))
        print(f"| {kind} | {tally.requests[kind]} | {f_kind} |")
    print(f"| all | {total} | {failed} ({100.0 * failed / max(total, 1):.2f}%) |\n")
    print("Failures by cause:")
    for cause, n in sorted(tally.failures.items(), key=lambda kv: -kv[1]):
        print(f"- {cause}: {n}")
    print(f"\nPOSTs sent: {len(tally.posts)}; received by an origin: {sum(1 for i in tally.posts if received[i])}")
    print(f"POSTs that reached an origin more than once: {len(duplicated)} {duplicated[:5]}")
    print(f"POSTs answered 200 that no origin received: {len(lost)} {lost[:5]}")
    print(f"Corrupted bodies or frames: {corrupted}")
    print(f"Reloads applied: {reload_ok:.0f}, failed: {reload_failed:.0f}")
    print(f"Retries sent to another backend: {retries:.0f}; refused by the retry budget: {retries_refused:.0f}")
    print(f"Steelyard RSS: {rss0} KiB after warm-up, {rss1} KiB at the end (peak {peak_rss} KiB)")
    print(f"Open descriptors: {fds0} after warm-up, {fds1} at the end "
          f"({upstream_idle:.0f} idle upstream connections pooled at the end)")
    bad = duplicated or lost or corrupted or reload_failed or fds1 > fds0 + 16
    print("\nRESULT: " + ("FAIL" if bad else "PASS"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
