"""Instructions per proxied request, counted by valgrind's callgrind: a noise-free figure.

Wall-clock benchmarks on a shared 2-core machine drift by tens of percent; instruction
counts do not. This runs one edge worker under callgrind twice (N1 and N2 requests over
keep-alive connections, the same small GET through the edge to an nginx upstream) and
reports (I2 - I1) / (N2 - N1): the instructions one request costs, start-up excluded.

    python bench/instructions.py [--n1 300] [--n2 1300] [--connections 4]
    python bench/instructions.py --h11-only   # h11's share: both legs, no sockets

``--h11-only`` counts the same per-request h11 work without any I/O: parse the request,
send it upstream, parse the response, send it back; once with stock ``h11.Connection``
and once with the edge's ``h11compat`` connections.

Needs valgrind, nginx and redis-server. Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from threading import Thread

import run
from run import free_port

ROOT = Path(__file__).resolve().parent.parent
REQUEST = b"GET /small HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


def client(port: int, count: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        buf = b""
        for _ in range(count):
            s.sendall(REQUEST)
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end >= 0:
                    m = re.search(rb"(?i)content-length: *(\d+)", buf[:head_end])
                    need = head_end + 4 + (int(m.group(1)) if m else 0)
                    if len(buf) >= need:
                        assert buf.startswith(b"HTTP/1.1 200"), buf[:80]
                        buf = buf[need:]
                        break
                data = s.recv(65536)
                if not data:
                    raise SystemExit("edge closed the connection")
                buf += data


def run_once(requests: int, connections: int, env: dict[str, str], port: int, out: Path) -> int:
    cmd = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, "-m", "edge", "worker", "--id", "0",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run.wait_port(port, 300)
        time.sleep(2)
        per = requests // connections
        threads = [Thread(target=client, args=(port, per)) for _ in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.read_text()
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    assert m, "no totals in callgrind output"
    return int(m.group(1))


H11_LOOP = """
import sys, h11
sys.path.insert(0, {root!r})
from edge.http1.h11compat import END_OF_MESSAGE, ClientConnection, ServerConnection
n, fast = int(sys.argv[1]), sys.argv[2] == "fast"
req = {req!r}
resp = (b"HTTP/1.1 200 OK\\r\\nServer: nginx/1.22.1\\r\\nDate: Mon, 23 Nov 2026 05:54:38 GMT\\r\\n"
        b"Content-Type: text/plain\\r\\nContent-Length: 13\\r\\nConnection: keep-alive\\r\\n"
        b"\\r\\nhello world!\\n")
s = ServerConnection(65536) if fast else h11.Connection(h11.SERVER)
c = ClientConnection() if fast else h11.Connection(h11.CLIENT)
eom = END_OF_MESSAGE if fast else h11.EndOfMessage()
for _ in range(n):
    s.receive_data(req); r = s.next_event(); s.next_event()
    c.send(h11.Request(method=r.method, target=r.target, headers=r.headers, _parsed=True))
    c.send(eom)
    c.receive_data(resp); rr = c.next_event(); d = c.next_event(); c.next_event()
    s.send(h11.Response(status_code=rr.status_code, headers=rr.headers, _parsed=True))
    s.send(h11.Data(data=d.data)); s.send(eom)
    s.start_next_cycle(); c.start_next_cycle()
"""


def h11_only(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="edge-instr-h11-"))
    script = tmp / "h11_loop.py"
    script.write_text(H11_LOOP.format(root=str(ROOT), req=REQUEST))
    try:
        for flavour in ("stock", "fast"):
            totals = []
            for count in (0, n):
                out = tmp / f"cg.{flavour}.{count}"
                subprocess.run(
                    ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                     sys.executable, str(script), str(count), flavour],
                    check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
                assert m, "no totals in callgrind output"
                totals.append(int(m.group(1)))
            per = (totals[1] - totals[0]) / n
            print(f"h11 work per proxied request ({flavour}): {per:,.0f} instructions")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n1", type=int, default=300)
    ap.add_argument("--n2", type=int, default=1300)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--h11-only", action="store_true", help="count h11's own work only")
    args = ap.parse_args()
    if args.h11_only:
        h11_only(1000)
        return
    for tool in ("valgrind", "nginx", "redis-server"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is required")
    tmp = Path(tempfile.mkdtemp(prefix="edge-instr-"))
    up_port, redis_port, http_port, api_port = (free_port() for _ in range(4))
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};\n"
        f" fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n"
        f" keepalive_requests 1000000;\n"
        f" server {{ listen 127.0.0.1:{up_port};\n"
        "  location /small { return 200 'hello world!\\n'; } } }\n"
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs = [
        subprocess.Popen([nginx, "-c", str(conf)], stderr=subprocess.DEVNULL),
        subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    try:
        run.wait_port(up_port, 10)
        run.wait_port(redis_port, 10)
        doc = f'{{"hostname":"bench.local","target_url":"http://127.0.0.1:{up_port}"}}'
        subprocess.run(
            ["redis-cli", "-p", str(redis_port), "SET", "proxy:bench.local", doc],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        env = {
            **os.environ,
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "HTTP_PORT": str(http_port),
            "API_PORT": str(api_port),
            "SERVER_HOST": "127.0.0.1",
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        counts = []
        for n in (args.n1, args.n2):
            counts.append(run_once(n, args.connections, env, http_port, tmp / f"cg.{n}"))
            print(f"{n} requests: {counts[-1]:,} instructions", flush=True)
        per = (counts[1] - counts[0]) / (args.n2 - args.n1)
        print(f"instructions per proxied request: {per:,.0f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except run.BenchError as exc:
        raise SystemExit(f"bench: {exc}") from None
