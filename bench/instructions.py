"""Instructions per proxied request, counted by valgrind's callgrind: a noise-free figure.

Wall-clock benchmarks on a shared 2-core machine drift by tens of percent; instruction
counts do not. This runs one edge worker under callgrind twice (N1 and N2 requests over
keep-alive connections, the same small GET through the edge to an nginx upstream) and
reports (I2 - I1) / (N2 - N1): the instructions one request costs, start-up excluded.

    python bench/instructions.py [--n1 300] [--n2 1300] [--connections 4]
    python bench/instructions.py --h11-only   # h11's share: both legs, no sockets
    python bench/instructions.py --ref HEAD --ref 706ebbc --keep bench/out/cg

``--ref REV`` (repeatable) counts the edge as it is at that git revision, checked out in a
temporary ``git worktree`` and put first on PYTHONPATH; with two or more, the counts are
printed side by side with their ratios to the first. Without ``--ref`` this checkout
(working tree included) is counted. ``--keep DIR`` keeps the callgrind files (named
``cg.<edge>.<requests>``) for ``callgrind_annotate``; ``--repeat R`` counts R times and
reports the median and the range.

``--h11-only`` counts the same per-request h11 work without any I/O: parse the request,
send it upstream, parse the response, send it back; once with stock ``h11.Connection``
and once with the edge's ``h11compat`` connections.

Needs valgrind, nginx and redis-server. Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
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
    err_path = out.with_name(out.name + ".stderr")
    with open(err_path, "wb") as err:
        # cwd "/": ``-m`` puts the working directory first on sys.path, ahead of
        # PYTHONPATH, so from a checkout the worker would import that checkout's edge
        # instead of the revision asked for
        proc = subprocess.Popen(cmd, env=env, cwd="/", stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 300  # a worker starts slowly under valgrind
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = err_path.read_text(errors="replace")[-1500:]
                raise run.BenchError(f"the edge worker did not start listening:\n{tail}")
            time.sleep(0.2)
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
import sys
sys.path.insert(0, {root!r})
import h11
from edge.h11compat import END_OF_MESSAGE, ClientConnection, ServerConnection
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


def h11_only(n: int, sources: Sequence[tuple[str, Path]]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="edge-instr-h11-"))
    try:
        for name, root in sources:
            script = tmp / f"h11_loop.{name}.py"
            script.write_text(H11_LOOP.format(root=str(root), req=REQUEST))
            for flavour in ("stock", "fast"):
                totals = []
                for count in (0, n):
                    out = tmp / f"cg.{name}.{flavour}.{count}"
                    subprocess.run(
                        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                         sys.executable, str(script), str(count), flavour],
                        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
                    assert m, "no totals in callgrind output"
                    totals.append(int(m.group(1)))
                per = (totals[1] - totals[0]) / n
                print(f"{name}: h11 work per proxied request ({flavour}): {per:,.0f} instructions")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def side_by_side(results: Sequence[tuple[str, str, float]]) -> str:
    """A markdown table of (edge, commit, instructions per request), ratios to the first."""
    base = results[0][2]
    lines = [
        "| edge | commit | instructions / request | ÷ first |",
        "|---|---|---:|---:|",
    ]
    for name, commit, per in results:
        lines.append(f"| {name} | {commit} | {per:,.0f} | {per / base:.4f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n1", type=int, default=300)
    ap.add_argument("--n2", type=int, default=1300)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--h11-only", action="store_true", help="count h11's own work only")
    ap.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="REV",
        help="count the edge at this git revision (temporary worktree); repeatable",
    )
    ap.add_argument("--repeat", type=int, default=1, help="count R times, report the median")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep the callgrind files in DIR")
    args = ap.parse_args()
    if args.repeat < 1 or not 0 <= args.n1 < args.n2:
        ap.error("want --repeat >= 1 and 0 <= --n1 < --n2")
    for tool in ("valgrind", "nginx", "redis-server", "redis-cli"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is required")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, run._on_signal)  # so that the worktrees are removed on them too
    with contextlib.ExitStack() as worktrees:
        # (name, source tree, commit) of each edge to count
        sources: list[tuple[str, Path, str]] = []
        for ref in args.ref:
            src = worktrees.enter_context(run.edge_worktree(ref))
            run.check_edge_source(src.path)
            sources.append((src.name, src.path, src.commit[:12]))
        if not sources:
            run.compile_edge(ROOT)  # modules changed since the last start compile once, now
            sources.append(("edge", ROOT, "working tree"))
        if args.h11_only:
            h11_only(1000, [(name, path) for name, path, _ in sources])
            return
        results = [(name, commit, count_edge(name, path, args)) for name, path, commit in sources]
    if len(results) > 1:
        print(side_by_side(results))


def count_edge(name: str, src: Path, args: argparse.Namespace) -> float:
    """Instructions per proxied request of the edge whose sources are at ``src``."""
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
            "PYTHONPATH": run.edge_pythonpath(src, dict(os.environ)),
        }
        # The first start against a fresh Redis also makes the default certificate (an RSA
        # key: hundreds of millions of instructions, a different number every time) and
        # stores it there; later starts only load it. That start is not counted, so that
        # the two counted ones differ by their requests alone.
        run_once(args.connections, args.connections, env, http_port, tmp / f"cg.{name}.first")
        pers: list[float] = []
        for rep in range(1, args.repeat + 1):
            counts = []
            for n in (args.n1, args.n2):
                suffix = f".{rep}" if args.repeat > 1 else ""
                out = tmp / f"cg.{name}.{n}{suffix}"
                counts.append(run_once(n, args.connections, env, http_port, out))
                print(f"{name}: {n} requests: {counts[-1]:,} instructions", flush=True)
                if args.keep:
                    shutil.copy(out, args.keep / out.name)
            pers.append((counts[1] - counts[0]) / (args.n2 - args.n1))
            print(f"{name}: instructions per proxied request: {pers[-1]:,.0f}", flush=True)
        per = statistics.median(pers)
        if args.repeat > 1:
            spread = f"{min(pers):,.0f}-{max(pers):,.0f}"
            print(f"{name}: median of {args.repeat}: {per:,.0f} (range {spread})", flush=True)
        return per
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
    except KeyboardInterrupt:
        raise SystemExit(130) from None
