"""A bounded load test of a KServe v2 model endpoint (export.serve, or Triton).

    python -m export.loadtest --url http://127.0.0.1:8000/v2/models/lenet_bn \\
        --concurrency 8 --requests 2000 [--rows 1] [--binary]

`--concurrency` clients send `--requests` infer requests in all, each with
`--rows` real Fashion-MNIST test images (random input when the data set is
absent), as JSON or with Triton's binary tensor extension; every answer is
checked (status 200, an output of the right shape). Prints throughput and
latency percentiles, and, from the server's /metrics when it has them, the mean
rows per onnxruntime run during the test (dynamic batching at work). Exits 1 if
any request failed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
from typing import List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import aiohttp
import httpx
import numpy as np

from export._protocol import HEADER_LENGTH

DISTINCT_PAYLOADS = 64


def model_url(url: str) -> str:
    """http://host:port/v2/models/NAME, from that or its /infer or /ready URL."""
    url = url.rstrip("/")
    match = re.match(r"^(https?://[^/]+/v2/models/[^/]+(?:/versions/[^/]+)?)(?:/infer|/ready)?$", url)
    if not match:
        raise SystemExit(f"error: --url must look like http://HOST:PORT/v2/models/NAME, got {url!r}")
    return match.group(1)


def input_rows(shape: Sequence[int], count: int) -> np.ndarray:
    """`count` float32 inputs of shape (C, H, W): real test images when available."""
    try:
        import torch

        from pycnn.data import load_split, prepare_images

        images, _ = load_split("test")
        return prepare_images(torch.from_numpy(images[:count]).unsqueeze(1), shape[1:]).numpy()
    except (ImportError, OSError):
        print("note: Fashion-MNIST not found; sending random input", file=sys.stderr)
        return np.random.default_rng(0).random((count, *shape), dtype=np.float32)


def payloads(metadata: dict, rows: int, binary: bool) -> List[Tuple[bytes, dict]]:
    """DISTINCT_PAYLOADS request bodies (and headers) of `rows` rows each."""
    spec = metadata["inputs"][0]
    if spec["datatype"] != "FP32":
        raise SystemExit(f"error: the model's input is {spec['datatype']}; the load test sends FP32")
    shape = [d for d in spec["shape"][1:]]
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


def batch_size_totals(client: httpx.Client, base: str, model: str) -> Optional[Tuple[float, float]]:
    """(sum, count) of the server's pycnn_serve_batch_size histogram for `model`, if it has one."""
    try:
        text = client.get(f"{base}/metrics").text
    except httpx.HTTPError:
        return None
    totals = {}
    for kind in ("sum", "count"):
        match = re.search(rf'^pycnn_serve_batch_size_{kind}\{{model="{re.escape(model)}"\}} (\S+)$', text, re.M)
        if not match:
            return None
        totals[kind] = float(match.group(1))
    return totals["sum"], totals["count"]


async def _load(url: str, bodies, concurrency: int, requests: int, rows: int, timeout: float):
    """Send `requests` requests from `concurrency` clients; (latencies, errors, seconds)."""
    latencies: List[float] = []
    errors: List[str] = []
    next_request = 0

    async def client_loop(session: aiohttp.ClientSession):
        nonlocal next_request
        while next_request < requests:
            number = next_request
            next_request += 1
            body, headers = bodies[number % len(bodies)]
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    content = await response.read()
                problem = None if response.status == 200 else f"HTTP {response.status}: {content[:200].decode(errors='replace')}"
                if problem is None and HEADER_LENGTH not in response.headers:
                    shape = json.loads(content)["outputs"][0]["shape"]
                    if shape[0] != rows:
                        problem = f"answer has shape {shape}, expected {rows} rows"
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as error:
                problem = f"{type(error).__name__}: {error}"
            latencies.append(time.perf_counter() - started)
            if problem:
                errors.append(problem)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else math.nan


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the model's URL, http://HOST:PORT/v2/models/NAME")
    parser.add_argument("--concurrency", type=int, default=8, help="clients sending at the same time (default 8)")
    parser.add_argument("--requests", type=int, default=1000, help="requests in all (default 1000)")
    parser.add_argument("--rows", type=int, default=1, help="images per request (default 1)")
    parser.add_argument("--binary", action="store_true", help="send tensors with Triton's binary extension, not JSON")
    parser.add_argument("--warmup", type=int, default=50, help="requests sent first and not counted (default 50)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds allowed per request (default 30)")
    args = parser.parse_args(argv)
    for name in ("concurrency", "requests", "rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    url = model_url(args.url)
    parts = urlsplit(url)
    base, model = f"{parts.scheme}://{parts.netloc}", url.split("/v2/models/")[1].split("/")[0]
    with httpx.Client(timeout=args.timeout) as client:
        try:
            response = client.get(url)
        except httpx.HTTPError as error:
            raise SystemExit(f"error: cannot reach {url}: {error}") from None
        if response.status_code != 200:
            raise SystemExit(f"error: GET {url} answered {response.status_code}: {response.text[:200]}")
        bodies = payloads(response.json(), args.rows, args.binary)
        if args.warmup:
            asyncio.run(_load(url + "/infer", bodies, min(args.concurrency, args.warmup), args.warmup, args.rows,
                              args.timeout))
        before = batch_size_totals(client, base, model)
        latencies, errors, elapsed = asyncio.run(
            _load(url + "/infer", bodies, args.concurrency, args.requests, args.rows, args.timeout))
        after = batch_size_totals(client, base, model)

    if before and after and after[1] > before[1]:
        mean_batch = f"{(after[0] - before[0]) / (after[1] - before[1]):.1f}"
    else:
        mean_batch = "n/a"
    ms = [1000 * s for s in latencies]
    fields = [
        ("url", url + "/infer"),
        ("encoding", "binary" if args.binary else "json"),
        ("concurrency", args.concurrency), ("requests", args.requests), ("rows/request", args.rows),
        ("errors", len(errors)),
        ("throughput", f"{args.requests / elapsed:.1f} requests/s ({args.requests * args.rows / elapsed:.1f} images/s)"),
        ("latency ms", f"p50 {percentile(ms, 50):.2f}  p90 {percentile(ms, 90):.2f}  p99 {percentile(ms, 99):.2f}  "
                       f"max {max(ms):.2f}"),
        ("rows per run", f"{mean_batch} (server's pycnn_serve_batch_size during the test)"),
    ]
    for key, value in fields:
        print(f"{key:<13} {value}")
    for problem in sorted(set(errors))[:5]:
        print(f"error         {problem}", file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
