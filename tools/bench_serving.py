"""Serving throughput and latency: HTTP JSON, HTTP binary and gRPC side by side,
at several concurrency levels, with and without dynamic batching; a Markdown
table (BENCHMARKS.md's serving section).

    python tools/bench_serving.py exports/lenet_bn.onnx [--concurrency 1,8,32,128] [--requests 2000]

For each batching setting (the default --max-batch 32, and --max-batch 1: no
batching) it starts python -m export.serve on free loopback ports, then runs
python -m export.serve.loadtest once per transport, one image per request, and
prints every level's requests/s, p50 and p99 latency and the server's mean rows
per run. Client and server share the machine: figures compare settings within
one run, not machines.
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSPORTS = {"HTTP JSON": [], "HTTP binary": ["--binary"], "gRPC": ["--grpc"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, batching: list):
    port, grpc_port = free_port(), free_port()
    process = subprocess.Popen([sys.executable, "-m", "export.serve", model, "--port", str(port), "--grpc-port",
                                str(grpc_port), "--log-level", "warning", "--no-ui", *batching], cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready").status == 200:
                return process, port, grpc_port
        except OSError:
            time.sleep(0.2)
    process.kill()
    sys.exit("error: the server did not become ready")


def load(port: int, grpc_port: int, name: str, transport: list, concurrency: str, requests: int) -> dict:
    options = ["--grpc", f"127.0.0.1:{grpc_port}"] if transport == ["--grpc"] else transport
    result = subprocess.run([sys.executable, "-m", "export.serve.loadtest", "--url",
                             f"http://127.0.0.1:{port}/v2/models/{name}", "--concurrency", concurrency,
                             "--requests", str(requests), *options], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: the load test failed:\n{result.stdout}{result.stderr}")
    lines = result.stdout.splitlines()
    header = re.split(r"\s{2,}", lines[1].strip())
    rows = [dict(zip(header, line.split())) for line in lines[2:] if line.strip()[:1].isdigit()]
    return {int(row["concurrency"]): row for row in rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an ONNX file written by python -m export.onnx")
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per level (default 2000)")
    args = parser.parse_args()
    name = os.path.splitext(os.path.basename(args.model))[0]
    levels = [int(level) for level in args.concurrency.split(",")]
    print(f"| batching | transport | " + " | ".join(f"c={c} req/s (p50 / p99 ms)" for c in levels)
          + " | rows/run at c={} |".format(levels[-1]))
    print("|---|---|" + "---:|" * len(levels) + "---:|")
    for label, batching in (("on (--max-batch 32)", []), ("off (--max-batch 1)", ["--max-batch", "1"])):
        process, port, grpc_port = start_server(args.model, batching)
        try:
            for transport, options in TRANSPORTS.items():
                table = load(port, grpc_port, name, options, args.concurrency, args.requests)
                cells = [f"{float(table[c]['requests/s']):,.0f} ({float(table[c]['p50 ms']):.1f} / "
                         f"{float(table[c]['p99 ms']):.1f})" for c in levels]
                print(f"| {label} | {transport} | " + " | ".join(cells) + f" | {table[levels[-1]]['rows/run']} |",
                      flush=True)
        finally:
            process.terminate()
            process.wait(60)


if __name__ == "__main__":
    main()
