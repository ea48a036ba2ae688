"""A bounded load test of a KServe v2 model endpoint (export.serve, or Triton).

    python -m export.serve.loadtest --url http://127.0.0.1:8000/v2/models/lenet_bn \\
        --concurrency 1,8,32 --requests 2000 [--rows 1] [--binary | --grpc 127.0.0.1:8001]
    python -m export.serve.loadtest --url ... --concurrency 64 --duration 60 --max-rss-growth-mb 50   # a soak

At each concurrency level, that many clients send `--requests` infer requests
in all (after `--warmup` untimed ones), each with `--rows` real Fashion-MNIST
test images (random input when the data set is absent), as JSON or with
Triton's binary tensor extension, or over gRPC (--grpc HOST:PORT, Triton's
tritonclient.grpc.aio, raw tensors); every answer is checked (success, an
output of the right shape). --duration runs each level for that many seconds
instead of --requests requests. Prints one table row per level: errors,
throughput, latency percentiles and, from the server's /metrics when it has
them, the mean rows per onnxruntime run (dynamic batching at work) and the
server's resident memory after the level and its growth during it. Exits 1 if
any request failed, or the memory grew more than --max-rss-growth-mb.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import math
import re
import sys
import time
from typing import List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from export import _common
from export.serve.protocol import HEADER_LENGTH

DISTINCT_PAYLOADS = 64


def model_url(url: str) -> str:
    """http://host:port/v2/models/NAME, from that or its /infer or /ready URL."""
    url = url.rstrip("/")
    match = re.match(r"^(https?://[^/]+/v2/models/[^/]+(?:/versions/[^/]+)?)(?:/infer|/ready)?$", url)
    if not match:
        raise SystemExit(f"error: --url must look like http://HOST:PORT/v2/models/NAME, got {url!r}")
    return match.group(1)


def input_rows(shape: Sequence[int], count: int) -> np.ndarray:
    """`count` float32 inputs of shape (C, H, W): real test images when available
    (the export checks' batch), else reproducible random input."""
    try:
        rows = _common.real_batch(shape, count)
    except _common.ExportError as error:
        raise SystemExit(f"error: {error}") from None
    if rows is None:
        print("note: Fashion-MNIST not found; sending random input", file=sys.stderr)
        rows = _common.random_batch(shape, count)
    return rows.numpy()


def payloads(metadata: dict, rows: int, binary: bool) -> List[Tuple[bytes, dict]]:
    """DISTINCT_PAYLOADS request bodies (and headers) of `rows` rows each."""
    spec = metadata["inputs"][0]
    if spec["datatype"] != "FP32":
        raise SystemExit(f"error: the model's input is {spec['datatype']}; the load test sends FP32")
    shape = list(spec["shape"][1:])
    if any(d < 1 for d in shape):
        raise SystemExit(f"error: the model's input shape {spec['shape']} has dynamic dimensions besides the batch")
    data = input_rows(shape, DISTINCT_PAYLOADS * rows)
    bodies = []
    for i in range(DISTINCT_PAYLOADS):
        x = data[i * rows:(i + 1) * rows]
        tensor = {"name": spec["name"], "shape": list(x.shape), "datatype": "FP32"}
        if binary:
            raw = x.astype("<f4").tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            header = json.dumps({"inputs": [tensor]}).encode()
            bodies.append((header + raw, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}))
        else:
            tensor["data"] = x.ravel().tolist()
            bodies.append((json.dumps({"inputs": [tensor]}).encode(), {"content-type": "application/json"}))
    return bodies


async def server_gauges(session: aiohttp.ClientSession, base: str, model: str) -> dict:
    """From the server's /metrics, when it has them: "runs" (sum, count) of the
    pycnn_serve_batch_size histogram for `model`, "rss" the resident bytes."""
    try:
        async with session.get(f"{base}/metrics") as response:
            text = await response.text()
    except aiohttp.ClientError:
        return {}
    found = {}
    totals = [re.search(rf'^pycnn_serve_batch_size_{kind}\{{model="{re.escape(model)}"\}} (\S+)$', text, re.M)
              for kind in ("sum", "count")]
    if all(totals):
        found["runs"] = tuple(float(match.group(1)) for match in totals)
    rss = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
    if rss:
        found["rss"] = float(rss.group(1))
    return found


def grpc_payloads(metadata: dict, rows: int) -> list:
    """DISTINCT_PAYLOADS input lists for tritonclient.grpc.aio's infer."""
    from tritonclient.grpc import aio as grpc_aio

    spec = metadata["inputs"][0]
    data = input_rows(list(spec["shape"][1:]), DISTINCT_PAYLOADS * rows)
    payloads = []
    for i in range(DISTINCT_PAYLOADS):
        x = np.ascontiguousarray(data[i * rows:(i + 1) * rows])
        tensor = grpc_aio.InferInput(spec["name"], list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        payloads.append([tensor])
    return payloads


@dataclasses.dataclass
class Result:
    latencies: List[float]  # seconds, one per timed request
    errors: List[str]
    elapsed: float  # seconds for all timed requests
    rows_per_run: Optional[float]  # from the server's metrics
    rss_after: Optional[float] = None  # the server's resident bytes after the level
    rss_growth: Optional[float] = None  # ... minus before it


async def run_load(url: str, concurrency: int, requests: int, rows: int = 1, binary: bool = False,
                   warmup: int = 50, timeout: float = 30.0, grpc_address: Optional[str] = None,
                   duration: Optional[float] = None) -> Result:
    """Send `warmup` requests, then `requests` timed ones (or as many as fit in
    `duration` seconds), from `concurrency` clients sharing `concurrency`
    kept-alive connections (over gRPC: one channel)."""
    url = model_url(url)
    parts = urlsplit(url)
    base, model = f"{parts.scheme}://{parts.netloc}", url.split("/v2/models/")[1].split("/")[0]
    latencies: List[float] = []
    errors: List[str] = []
    sent = 0
    deadline = math.inf

    def more(count: int) -> bool:
        return sent < count and time.perf_counter() < deadline

    async def http_loop(session: aiohttp.ClientSession, bodies, count: int):
        nonlocal sent
        while more(count):
            body, headers = bodies[sent % len(bodies)]
            sent += 1
            started = time.perf_counter()
            try:
                async with session.post(url + "/infer", data=body, headers=headers) as response:
                    content = await response.read()
                problem = None if response.status == 200 else \
                    f"HTTP {response.status}: {content[:200].decode(errors='replace')}"
                if problem is None and HEADER_LENGTH not in response.headers:
                    shape = json.loads(content)["outputs"][0]["shape"]
                    if shape[0] != rows:
                        problem = f"answer has shape {shape}, expected {rows} rows"
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as error:
                problem = f"{type(error).__name__}: {error}"
            latencies.append(time.perf_counter() - started)
            if problem:
                errors.append(problem)

    async def grpc_loop(client, inputs, count: int):
        from tritonclient.utils import InferenceServerException

        nonlocal sent
        while more(count):
            tensors = inputs[sent % len(inputs)]
            sent += 1
            started = time.perf_counter()
            problem = None
            try:
                result = await client.infer(model, tensors, client_timeout=timeout)
                shape = list(result.get_response().outputs[0].shape)
                if shape[0] != rows:
                    problem = f"answer has shape {shape}, expected {rows} rows"
            except InferenceServerException as error:
                problem = f"gRPC {error.status()}: {error.message()[:200]}"
            latencies.append(time.perf_counter() - started)
            if problem:
                errors.append(problem)

    async def send(loop_body, count: int, seconds: Optional[float] = None) -> float:
        nonlocal sent, deadline
        sent = 0
        latencies.clear()
        errors.clear()
        started = time.perf_counter()
        deadline = started + seconds if seconds else math.inf
        await asyncio.gather(*(loop_body(count) for _ in range(concurrency)))
        return time.perf_counter() - started

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    raise SystemExit(f"error: GET {url} answered {response.status}: {(await response.text())[:200]}")
                metadata = await response.json()
        except aiohttp.ClientError as error:
            raise SystemExit(f"error: cannot reach {url}: {error}") from None
        grpc_client = None
        if grpc_address:
            from tritonclient.grpc import aio as grpc_aio

            grpc_client = grpc_aio.InferenceServerClient(grpc_address)
            inputs = grpc_payloads(metadata, rows)
            loop_body = lambda count: grpc_loop(grpc_client, inputs, count)  # noqa: E731
        else:
            bodies = payloads(metadata, rows, binary)
            loop_body = lambda count: http_loop(session, bodies, count)  # noqa: E731
        gc.freeze()  # torch and the data set stay: keep full collections short (no pauses in the timings)
        try:
            if warmup:  # opens the connections and warms the server up
                await send(loop_body, warmup)
            before = await server_gauges(session, base, model)
            elapsed = await send(loop_body, math.inf if duration else requests, duration)
            after = await server_gauges(session, base, model)
        finally:
            if grpc_client is not None:
                await grpc_client.close()
    rows_per_run = None
    if "runs" in before and "runs" in after and after["runs"][1] > before["runs"][1]:
        rows_per_run = (after["runs"][0] - before["runs"][0]) / (after["runs"][1] - before["runs"][1])
    growth = after["rss"] - before["rss"] if "rss" in before and "rss" in after else None
    return Result(list(latencies), list(errors), elapsed, rows_per_run, after.get("rss"), growth)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else math.nan


def _concurrency_levels(text: str) -> List[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"every level must be at least 1, got {text!r}")
    return levels


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.serve.loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the model's URL, http://HOST:PORT/v2/models/NAME")
    parser.add_argument("--concurrency", type=_concurrency_levels, default=[8],
                        help="clients sending at the same time; several levels separated by commas, "
                             "one table row each (default 8)")
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per level (default 1000)")
    parser.add_argument("--rows", type=int, default=1, help="images per request (default 1)")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--binary", action="store_true", help="send tensors with Triton's binary extension, not JSON")
    transport.add_argument("--grpc", metavar="HOST:PORT", default=None,
                           help="send the infer requests over gRPC to HOST:PORT (--url still gives the model, "
                                "its metadata and the server's /metrics)")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="run each level this long instead of --requests requests (a soak)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=None,
                        help="exit 1 if the server's resident memory grows more than this during a level")
    parser.add_argument("--warmup", type=int, default=50, help="requests sent first and not timed (default 50)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds allowed per request (default 30)")
    args = parser.parse_args(argv)
    for name in ("requests", "rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be more than 0 seconds")

    encoding = f"gRPC to {args.grpc}" if args.grpc else ("binary" if args.binary else "JSON") + " tensors"
    amount = f"{args.duration:g} s" if args.duration else f"{args.requests} requests"
    print(f"{model_url(args.url)}/infer: {amount} per level, {args.rows} image(s) each, {encoding}")
    header = ("concurrency", "errors", "requests/s", "images/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "rows/run",
              "rss MB", "rss +MB")
    print("  ".join(f"{h:>11}" for h in header))
    failed = []
    for concurrency in args.concurrency:
        result = asyncio.run(run_load(args.url, concurrency, args.requests, args.rows, args.binary,
                                      args.warmup, args.timeout, args.grpc, args.duration))
        ms = [1000 * s for s in result.latencies]
        count = len(result.latencies)
        mb = lambda value: "n/a" if value is None else f"{value / 2**20:.1f}"  # noqa: E731
        row = (concurrency, len(result.errors), f"{count / result.elapsed:.1f}",
               f"{count * args.rows / result.elapsed:.1f}",
               *(f"{percentile(ms, q):.2f}" for q in (50, 90, 99)), f"{max(ms):.2f}",
               "n/a" if result.rows_per_run is None else f"{result.rows_per_run:.1f}",
               mb(result.rss_after), mb(result.rss_growth))
        print("  ".join(f"{str(v):>11}" for v in row), flush=True)
        failed += result.errors
        limit = args.max_rss_growth_mb
        if limit is not None and result.rss_growth is not None and result.rss_growth > limit * 2**20:
            failed.append(f"the server's resident memory grew {result.rss_growth / 2**20:.1f} MB at concurrency "
                          f"{concurrency}, more than --max-rss-growth-mb {limit:g}")
    print("rows/run: the server's mean rows per onnxruntime run (pycnn_serve_batch_size) during the level; "
          "rss: its resident memory after the level, and the growth during it")
    for problem in sorted(set(failed))[:5]:
        print(f"error: {problem}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
