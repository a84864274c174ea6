"""TLS and PROXY-protocol transports: the edge against nginx, and PROXY against direct.

Run side by side in one invocation, interleaved rounds, medians:

* ``tls-handshake``: new connection per request (``Connection: close``), so every request
  is a full TLS handshake: handshakes per second, edge vs nginx (both TLS 1.2/1.3 with the
  same certificate and cipher list, proxying the same nginx upstream).
* ``https-keepalive``: HTTPS with keep-alive, edge vs nginx.
* ``proxy-keepalive`` / ``proxy-close``: plain HTTP through a HAProxy in ``mode tcp`` that
  sends a PROXY v2 header to the edge's ``PROXY_PROTOCOL_PORT``, against the same HAProxy
  passing the connection straight to the edge's ``HTTP_PORT`` (no header): what the PROXY
  layer costs per request with keep-alive and per connection without it.

The proxy under test runs pinned to CPU 1 with one worker; wrk, the upstream and HAProxy
share CPU 0. CPU µs/request is the proxy's own CPU time (all its processes) divided by
the requests wrk completed.

    python bench/transports.py [--rounds 3] [--duration 8] [--write-results]

Only loopback addresses are used. Needs nginx, haproxy, wrk, redis-server.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run

from edge.tls.contexts import TLS12_CIPHERS
from edge.tls.selfsigned import generate_self_signed

HOST = run.HOST
SECTION_START = "<!-- bench/transports.py:start -->"
SECTION_END = "<!-- bench/transports.py:end -->"


@dataclass(frozen=True)
class Case:
    scenario: str
    target: str  # "edge" | "nginx" | "edge-proxy" | "edge-direct"
    scheme: str  # "http" | "https"
    close: bool  # Connection: close (a new connection per request)


CASES = [
    Case("tls-handshake", "edge", "https", True),
    Case("tls-handshake", "nginx", "https", True),
    Case("https-keepalive", "edge", "https", False),
    Case("https-keepalive", "nginx", "https", False),
    Case("proxy-keepalive", "edge-proxy", "http", False),
    Case("proxy-keepalive", "edge-direct", "http", False),
    Case("proxy-close", "edge-proxy", "http", True),
    Case("proxy-close", "edge-direct", "http", True),
]
# the first target of each scenario is compared with the second
BASELINE = {"tls-handshake": "nginx", "https-keepalive": "nginx",
            "proxy-keepalive": "edge-direct", "proxy-close": "edge-direct"}  # fmt: skip


@dataclass
class Result:
    case: Case
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    errors: int


def wrk(url: str, secs: int, close: bool) -> run.WrkResult:
    argv = ["wrk", f"-t{run.WRK_THREADS}", f"-c{run.WRK_CONNECTIONS}", f"-d{secs}s", "--latency",
            "-H", f"Host: {HOST}"]  # fmt: skip
    if close:
        argv += ["-H", "Connection: close"]
    argv = run.pin([*argv, url], run.LOAD_CPU)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
    if done.returncode != 0:
        raise run.BenchError(f"wrk failed: {done.stderr or done.stdout}")
    return run.parse_wrk(done.stdout)


def nginx_tls_conf(d: Path, port: int, upstream: int, cert: Path, key: Path, log: Path) -> str:
    return (
        run._nginx_common(d, 1)
        + f"""http {{
{run._nginx_temp_paths(d)}
    log_format bench '$remote_addr [$time_local] "$request" $status $body_bytes_sent';
    access_log {log} bench buffer=64k flush=1s;
    upstream backend {{ server {run.LOOPBACK}:{upstream}; keepalive 64; }}
    server {{
        listen {run.LOOPBACK}:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {TLS12_CIPHERS};
        ssl_prefer_server_ciphers off;
        ssl_session_tickets off;
        keepalive_requests 100000000;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""
    )


def haproxy_tcp_conf(port: int, backend: int, send_proxy: bool) -> str:
    option = " send-proxy-v2" if send_proxy else ""
    return f"""global
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen front
    bind {run.LOOPBACK}:{port}
    server edge {run.LOOPBACK}:{backend}{option}
"""


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-1500:] if path.exists() else ""


def measure(children: run.Children, st: run.Settings, case: Case, secs: int, rnd: int,
            pems: tuple[Path, Path]) -> Result:  # fmt: skip
    d = st.tmp / f"r{rnd}-{case.scenario}-{case.target}"
    d.mkdir()
    sc = run.Scenario(case.scenario, "/small", 1)
    port = run.free_port()
    extra: list[run.Child] = []
    if case.target == "nginx":
        log = d / "access.log"
        conf = d / "nginx.conf"
        conf.write_text(nginx_tls_conf(d, port, st.upstream_port, pems[0], pems[1], log))
        argv = ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]
        child = children.spawn("nginx", run.pin(argv, run.PROXY_CPU), cwd=d,
                               stderr=d / "stderr.log")  # fmt: skip
        url_port = port
    else:
        launch = run.build_launch("edge", sc, run.free_port() if case.scheme == "https" else port,
                                  d, st)  # fmt: skip
        backend = run.free_port()
        launch.env.update(HTTPS_PORT="0", PROXY_PROTOCOL_PORT="0", PROXY_PROTOCOL_TLS_PORT="0")
        if case.scheme == "https":
            launch.env["HTTPS_PORT"] = str(port)
        elif case.target == "edge-proxy":
            launch.env["PROXY_PROTOCOL_PORT"] = str(backend)
            launch.env["HTTP_PORT"] = str(run.free_port())
        else:
            launch.env["HTTP_PORT"] = str(backend)
        child = children.spawn("edge", launch.argv, env=launch.env, cwd=launch.cwd,
                               stdout=launch.stdout, stderr=launch.stderr)  # fmt: skip
        url_port = port
        if case.scheme == "http":
            try:
                run.wait_port(backend)
            except run.BenchError:
                raise run.BenchError(f"edge did not listen:\n{_tail(launch.stderr)}") from None
            conf = d / "haproxy.cfg"
            conf.write_text(haproxy_tcp_conf(port, backend, case.target == "edge-proxy"))
            extra.append(children.spawn("haproxy", run.pin(["haproxy", "-db", "-f", str(conf)],
                                                           run.LOAD_CPU), cwd=d,
                                        stderr=d / "haproxy.err"))  # fmt: skip
    try:
        run.wait_port(url_port)
        url = f"{case.scheme}://{run.LOOPBACK}:{url_port}/small"
        wrk(url, run.WARMUP_SECS, case.close)
        before = run.tree_cpu(child.pid)
        res = wrk(url, secs, case.close)
        after = run.tree_cpu(child.pid)
        if child.proc.poll() is not None:
            raise run.BenchError(f"{case.target} exited:\n{child.stderr_tail()}")
        cpu = run.cpu_delta_seconds(before, after)
        return Result(case, res.rps, res.p50_ms, res.p99_ms,
                      cpu * 1e6 / res.requests if res.requests else 0.0,
                      res.non2xx + res.socket_errors)  # fmt: skip
    finally:
        for c in extra:
            children.stop(c)
        children.stop(child)
        shutil.rmtree(d, ignore_errors=True)


def report(results: list[Result], rounds: int, secs: int, command: str) -> str:
    lines = [
        SECTION_START,
        "## Transports: TLS and PROXY protocol",
        "",
        "`bench/transports.py`. `tls-handshake` is one full handshake per request (wrk with",
        "`Connection: close`; TLS 1.3, no resumption on either side): handshakes per second. The",
        "edge serves its default certificate here (wrk sends the IP as SNI); nginx serves the same",
        "certificate and cipher list. `proxy-*` put HAProxy (`mode tcp`) in front of the edge on",
        "both sides; only the PROXY v2 header differs.",
        "",
        f"Command: `{command}` ({rounds} interleaved rounds of {secs} s, medians; one worker "
        "on CPU 1, wrk/upstream/HAProxy on CPU 0; "
        f"{run.WRK_CONNECTIONS} connections).",
        "",
        "| scenario | target | req/s | p50 ms | p99 ms | CPU µs/req | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    med: dict[tuple[str, str], tuple[float, float]] = {}
    for case in CASES:
        rs = [r for r in results if r.case == case]
        if not rs:
            continue
        rps = statistics.median(r.rps for r in rs)
        cpu = statistics.median(r.cpu_us for r in rs)
        med[(case.scenario, case.target)] = (rps, cpu)
        lines.append(
            f"| {case.scenario} | {case.target} | {rps:,.0f} | "
            f"{statistics.median(r.p50_ms for r in rs):.2f} | "
            f"{statistics.median(r.p99_ms for r in rs):.2f} | {cpu:.1f} | "
            f"{sum(r.errors for r in rs)} |"
        )
    lines += ["", "| scenario | compared | req/s ratio | CPU/req ratio |", "|---|---|---:|---:|"]
    for scenario, base in BASELINE.items():
        other = next(c.target for c in CASES if c.scenario == scenario and c.target != base)
        if (scenario, other) in med and (scenario, base) in med:
            (r1, c1), (r0, c0) = med[(scenario, other)], med[(scenario, base)]
            lines.append(f"| {scenario} | {other} ÷ {base} | {r1 / r0:.2f}x | {c1 / c0:.2f}x |")
    lines += ["", SECTION_END]
    return "\n".join(lines)


def main() -> int:
    args = run.side_bench_options(__doc__.split("\n")[0]).parse_args()
    command = shlex.join(["python", "bench/transports.py", *sys.argv[1:]])
    cases = [c for c in CASES if not args.only or c.scenario in args.only.split(",")]
    results: list[Result] = []
    with run.side_bench_run("transport-bench-") as (children, tmp):
        tmp.chmod(0o755)
        try:
            _up, upstream_port = run.start_upstream(children, tmp)
            _redis, redis_port = run.start_redis(children, tmp)
            run.configure_edge(redis_port, upstream_port)
            chain, key = generate_self_signed(HOST, 30, 2048)
            cert, keyfile = tmp / "cert.pem", tmp / "key.pem"
            cert.write_text(chain)
            keyfile.write_text(key)
            keyfile.chmod(0o644)  # nginx workers read it as another user; a throwaway key
            # the edge serves the same certificate: its default (wrk sends the IP as SNI)
            doc = {"cn": HOST, "fullchain_pem": chain, "private_key_pem": key}
            run.redis_command(redis_port, "SET", "edge:tls:default", json.dumps(doc))
            env = {"SELF_SIGNED_CN": HOST}
            st = run.Settings(tmp, upstream_port, f"redis://{run.LOOPBACK}:{redis_port}/0",
                              [sys.executable, "-m", "edge", "serve"], env)  # fmt: skip
            for rnd in range(1, args.rounds + 1):
                for case in cases:
                    r = measure(children, st, case, args.duration, rnd, (cert, keyfile))
                    results.append(r)
                    run.progress(f"round {rnd} {case.scenario:<16} {case.target:<12} "
                                 f"{r.rps:>9,.0f} req/s {r.cpu_us:7.1f} µs CPU/req  "
                                 f"{r.errors} errors")  # fmt: skip
        except run.BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    run.publish(report(results, args.rounds, args.duration, command), args.write_results,
                SECTION_START, SECTION_END)  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
