"""Serve exported ONNX models with onnxruntime over the KServe v2 / Triton protocol,
HTTP and gRPC.

    python -m export.serve exports/lenet_bn.onnx [exports/resnet18.onnx ...]
    python -m export.serve --model-repository DIR          # Triton's layout (export.onnx --triton-repo)
        [--host 127.0.0.1] [--port 8000] [--grpc-port 8001] [--providers cuda,cpu] [--threads N]
        [--max-batch 32] [--batch-timeout-ms 0] [--max-queue 512] [--request-timeout-ms 0]
        [--max-body-mb 16] [--cuda-graph-batches 1,8,32]

Each file is served under its stem (exports/resnet18.onnx -> resnet18), version
"1"; a repository's models under their folder names, at the versions their
version_policy names (repository.py). Over HTTP:

    GET  /v2/health/live, /v2/health/ready      liveness and readiness
    GET  /v2                                    server metadata
    GET  /v2/models/NAME                        model metadata (inputs, outputs; -1 = dynamic batch)
    GET  /v2/models/NAME/ready                  model readiness
    GET  /v2/models/NAME/config                 Triton's model configuration (max_batch_size, dims)
    POST /v2/models/NAME/infer                  KServe v2 inference (JSON or Triton's binary tensors)
    POST /v2/models/NAME/classify?top_k=3       an image file -> the top-k classes (labels from the model)
    GET  /v2/models/stats, /v2/models/NAME/stats    Triton's statistics (statistics.py)
    POST /v2/repository/index                   Triton's repository index
    POST /v2/repository/models/NAME/load, /unload   (with --model-repository)
    GET  /metrics                               Prometheus metrics
    (/v2/models/NAME/versions/V/... for one version; without it, the newest)

and the same over gRPC (Triton's inference.GRPCInferenceService,
grpc_service.py) on --grpc-port, sharing models, batchers, statistics and
metrics. The application is FastAPI, served by uvicorn. Concurrent requests to
a model are gathered into one onnxruntime run (batching.py) of up to
--max-batch rows: the requests that arrived while the previous run was busy,
plus those arriving within --batch-timeout-ms of the first (default 0: no
waiting, which keeps a lone request fast); --max-batch 1 turns batching off.
Overload is shed, not queued: beyond --max-queue waiting requests per model a
request is refused at once with 503 and Retry-After, and one that waits more
than --request-timeout-ms for its run gets 504; an accepted request that runs
is always answered. An infer request may ask for Triton's classification of an
output ("parameters": {"classification": K}: "score:index:label" strings).
Bad requests get a 4xx answer {"error": "..."} naming the problem
(protocol.py); the server keeps serving. SIGTERM or Ctrl-C stop it gracefully:
readiness turns false, it stops accepting connections, finishes the requests in
flight, then exits.

The server needs onnxruntime, the web stack, numpy, Pillow and gRPC, and
nothing else: it imports neither torch nor pycnn. The class labels come with
each model (a repository's label file, or the "labels" metadata that
python -m export.onnx writes into the file).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import logging
import os
import socket
import sys
import time
from typing import Optional, Sequence

import numpy as np
import onnxruntime
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               disable_created_metrics, generate_latest)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from export.serve import protocol
from export.serve.image import image_to_input, input_png
from export.serve.protocol import ProtocolError
from export.serve.models import DEFAULT_PROVIDERS, ServeError, parse_graph_batches, provider_options, resolve_providers
from export.serve.repository import ModelRepository, Settings
from export.serve.statistics import statistics_response

log = logging.getLogger("export.serve")

UI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui")
# Bodies above this size are parsed in a worker thread, off the event loop.
LARGE_BODY_BYTES = 256 * 1024

def server_version() -> str:
    """The installed pycnn distribution's version, read without importing pycnn (and torch)."""
    try:
        return importlib.metadata.version("pycnn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (pycnn is not installed)"


# --- metrics ------------------------------------------------------------------

class Metrics:
    """Prometheus metrics of one server, in their own registry."""

    def __init__(self):
        disable_created_metrics()  # no *_created series: scrapers do not need them
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU seconds, open files
        labels = ["endpoint", "model", "code"]
        self.requests = Counter("pycnn_serve_requests", "HTTP requests answered, by endpoint, model and status code",
                                labels, registry=self.registry)
        self.errors = Counter("pycnn_serve_errors", "Requests answered with a 4xx or 5xx status",
                              labels, registry=self.registry)
        self.in_flight = Gauge("pycnn_serve_requests_in_flight", "HTTP requests being answered now",
                               registry=self.registry)
        self.latency = Histogram("pycnn_serve_request_duration_seconds", "Time from request to response",
                                 ["endpoint", "model"], registry=self.registry,
                                 buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10))
        self.batch_size = Histogram("pycnn_serve_batch_size", "Rows per onnxruntime run (dynamic batching)",
                                    ["model"], registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.run_time = Histogram("pycnn_serve_inference_duration_seconds", "onnxruntime run time per batch",
                                  ["model"], registry=self.registry,
                                  buckets=(.0001, .0002, .0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1))

    def observe_batch(self, model: str):
        def observe(rows: int, seconds: float) -> None:
            self.batch_size.labels(model).observe(rows)
            self.run_time.labels(model).observe(seconds)
        return observe

    def observe_request(self, endpoint: str, model: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, model, str(code)).inc()
        if code >= 400:
            self.errors.labels(endpoint, model, str(code)).inc()
        self.latency.labels(endpoint, model).observe(seconds)


class BodyTooLarge(Exception):
    pass


class ServingMiddleware:
    """Pure ASGI middleware around every HTTP request: the --max-body-mb limit
    (413, from Content-Length before reading, or while a chunked body streams
    in) and the request metrics (endpoint = the route's name, model = the URL's
    model when it is served, else "")."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, known_model):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.known_model = known_model  # name -> bool: only served names become labels

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, received = 500, 0

        async def send_observed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        self.metrics.in_flight.inc()
        try:
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await too_large_response(self.max_body_bytes)(scope, receive, send_observed)
            else:
                await self.app(scope, receive_limited, send_observed)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            model = (scope.get("path_params") or {}).get("name", "")
            self.metrics.observe_request(getattr(route, "name", "unmatched"),
                                         model if self.known_model(model) else "",
                                         status, time.perf_counter() - started)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def too_large_response(limit: int) -> JSONResponse:
    return error_response(413, f"the request body is larger than the server's limit of "
                               f"{limit / 2**20:g} MiB (--max-body-mb)")


# --- the application ----------------------------------------------------------

def create_app(repository: ModelRepository, *, max_body_mb: float = 16.0, grpc_port: int = 0,
               grpc_host: str = "127.0.0.1", ui: bool = True) -> FastAPI:
    """The FastAPI application serving the models of `repository`, and, with a
    grpc_port, the same models over gRPC (export/serve/grpc_service.py) on the
    same event loop: one batcher, one set of statistics and metrics for both;
    with `ui`, the page at / (export/serve/ui: static files, offline)."""
    metrics = Metrics()
    repository.settings.on_batch = metrics.observe_batch
    max_body_bytes = int(max_body_mb * 2**20)
    version = server_version()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await repository.start()
        grpc_server = None
        if grpc_port:
            from export.serve.grpc_service import start_grpc_server

            grpc_server = await start_grpc_server(repository, app.state, version, grpc_host, grpc_port)
        # Everything loaded so far (onnxruntime, the sessions, the web stack) lives as long
        # as the server: out of the collector's sight, full collections stay short
        # instead of pausing every request in flight for tens of milliseconds.
        gc.freeze()
        app.state.ready = True
        yield
        app.state.ready = False
        if grpc_server is not None:
            await grpc_server.stop(grace=30)  # lets the calls in flight finish
        await repository.stop()

    app = FastAPI(title="pycnn model server", version=version, lifespan=lifespan,
                  summary="KServe v2 / Triton inference protocol over onnxruntime")
    app.state.ready = False
    app.add_middleware(ServingMiddleware, metrics=metrics, max_body_bytes=max_body_bytes,
                       known_model=repository.known)

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, error: ProtocolError):
        response = error_response(error.status, error.message)
        response.headers.update(error.headers or {})
        return response

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, error: BodyTooLarge):
        return too_large_response(max_body_bytes)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        message = error.detail if error.status_code != 404 else f"no such endpoint: {request.method} {request.url.path}"
        return error_response(error.status_code, str(message))

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        return error_response(400, problems)

    served = repository.get
    run_rows = repository.infer

    @app.get("/v2/health/live", tags=["health"])
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"])
    async def ready():
        return JSONResponse({"ready": app.state.ready}, status_code=200 if app.state.ready else 503)

    @app.get("/v2", tags=["metadata"])
    async def server_metadata():
        return {"name": "pycnn", "version": version, "extensions": protocol.SERVER_EXTENSIONS}

    # Before /v2/models/{name}, which would take "stats" for a model's name.
    @app.get("/v2/models/stats", tags=["statistics"])
    async def all_statistics():
        return statistics_response([model.statistics for model in repository.all_models()])

    @app.get("/v2/models/{name}/stats", tags=["statistics"])
    @app.get("/v2/models/{name}/versions/{version}/stats", tags=["statistics"])
    async def model_statistics(name: str, version: Optional[str] = None):
        return statistics_response([served(name, version).statistics])

    @app.get("/v2/models/{name}", tags=["metadata"])
    @app.get("/v2/models/{name}/versions/{version}", tags=["metadata"])
    async def model_metadata(name: str, version: Optional[str] = None):
        return served(name, version).metadata(repository.versions(name))

    @app.get("/v2/models/{name}/config", tags=["metadata"])
    @app.get("/v2/models/{name}/versions/{version}/config", tags=["metadata"])
    async def model_config(name: str, version: Optional[str] = None):
        """Triton's model configuration (JSON), for clients that ask for it."""
        return served(name, version).config(repository.settings.max_batch, repository.settings.batch_timeout_ms)

    @app.get("/v2/models/{name}/ready", tags=["health"])
    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["health"])
    async def model_ready(name: str, version: Optional[str] = None):
        served(name, version)
        return JSONResponse({"name": name, "ready": app.state.ready}, status_code=200 if app.state.ready else 503)

    @app.post("/v2/models/{name}/infer", tags=["inference"])
    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["inference"])
    async def infer(name: str, request: Request, version: Optional[str] = None):
        """KServe v2 inference: JSON tensors, or Triton's binary tensor extension."""
        model = served(name, version)
        body = await request.body()
        parse = (model.name, [model.input], model.outputs)
        header_length = request.headers.get(protocol.HEADER_LENGTH)
        if len(body) > LARGE_BODY_BYTES:
            parsed = await run_in_threadpool(protocol.parse_infer_request, body, header_length, *parse)
        else:
            parsed = protocol.parse_infer_request(body, header_length, *parse)
        outputs = await run_rows(model, parsed.inputs[model.input.name])
        results = {spec.name: output for spec, output in zip(model.outputs, outputs)}
        for output_name, count in parsed.classification.items():
            labels = model.labels if output_name == model.outputs[0].name else None
            results[output_name] = protocol.classification_strings(results[output_name], count, labels)
        content, headers = protocol.infer_response(model.name, model.version, parsed, results, model.output_specs)
        return Response(content, headers=headers)

    @app.post("/v2/models/{name}/classify", tags=["inference"],
              openapi_extra={"requestBody": {"content": {
                  "image/png": {"schema": {"type": "string", "format": "binary"}},
                  "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                  "multipart/form-data": {"schema": {"type": "object", "properties": {
                      "file": {"type": "string", "format": "binary"}}}}}}})
    async def classify(name: str, request: Request,
                       top_k: int = Query(3, ge=1, description="how many classes to return"),
                       preview: bool = Query(False, description="also return the model's input as a PNG")):
        """An image file (PNG or JPEG, any size, colour or grey; the body, or a
        multipart 'file' field) -> the top-k classes with probabilities (and the
        model's labels for them; "label" is null for a model without labels).
        preview=true adds "input": the image as the model sees it, a grey PNG
        (base64) of its input size."""
        model = served(name)
        channels, height, width = model.input.shape[1:]
        if channels != 1:
            raise ProtocolError(f"model {name!r} takes {channels}-channel images; classify feeds grey (1-channel) ones")
        data = await _image_bytes(request)
        rows = await run_in_threadpool(image_to_input, data, (height, width))
        if model.fixed_batch is not None:  # pad with blank images up to the exported batch
            rows = np.concatenate([rows, np.zeros((model.fixed_batch - 1, *rows.shape[1:]), rows.dtype)])
        logits = (await run_rows(model, rows))[0][0].astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        answer = {"model_name": name, "predictions": [
            {"label": model.labels[i] if model.labels else None, "index": int(i),
             "probability": float(probabilities[i])} for i in order]}
        if preview:
            answer["input"] = {"width": width, "height": height, "png": input_png(rows[0, 0])}
        return answer

    @app.post("/v2/repository/index", tags=["repository"])
    async def repository_index(request: Request):
        """Triton's repository index: every model and version with its state."""
        body = await request.body()
        options = protocol.load_json(body) if body.strip() else {}
        if not isinstance(options, dict) or not isinstance(options.get("ready", False), bool):
            raise ProtocolError('the index request must be a JSON object, optionally {"ready": true}')
        return repository.index(ready_only=options.get("ready", False))

    @app.post("/v2/repository/models/{name}/load", tags=["repository"])
    async def repository_load(name: str):
        await repository.load(name)
        return JSONResponse({})

    @app.post("/v2/repository/models/{name}/unload", tags=["repository"])
    async def repository_unload(name: str):
        await repository.unload(name)
        return JSONResponse({})

    @app.get("/metrics", tags=["metrics"])
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if ui:
        page = os.path.join(UI_DIR, "index.html")
        app.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")

        @app.get("/", tags=["page"], include_in_schema=False)
        @app.get("/models/{name}", tags=["page"], include_in_schema=False)
        async def serving_page(name: Optional[str] = None):
            """The page: served models, drop an image, see the top classes."""
            return FileResponse(page, media_type="text/html")

    return app


async def _image_bytes(request: Request) -> bytes:
    """The image of a classify request: a multipart form's file field, or the body itself."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10)
        files = [value for value in form.values() if hasattr(value, "read")]
        if not files:
            raise ProtocolError("the multipart form has no file; send the image as -F file=@image.png")
        return await files[0].read()
    return await request.body()


# --- command line -------------------------------------------------------------

def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _graph_batches(text: str) -> tuple:
    try:
        return parse_graph_batches(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export.serve", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[9:30]))
    parser.add_argument("models", nargs="*", metavar="MODEL.onnx", help="ONNX files written by python -m export.onnx")
    parser.add_argument("--model-repository", metavar="DIR", default=None,
                        help="serve a Triton model repository instead (DIR/NAME/VERSION/model.onnx, config.pbtxt: "
                             "what export.onnx --triton-repo writes), with load/unload")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001,
                        help="gRPC port of the KServe v2 / Triton gRPC service (default 8001; 0: no gRPC)")
    parser.add_argument("--providers", default=",".join(DEFAULT_PROVIDERS),
                        help="onnxruntime execution providers in order of preference, comma-separated: cuda, cpu "
                             "or onnxruntime's names (default: cuda,cpu; without a usable GPU, CPU with a warning)")
    parser.add_argument("--io-binding", choices=["auto", "always", "never"], default="auto",
                        help="run through onnxruntime's IOBinding: auto (on a GPU provider: the batch goes to the "
                             "device once, outputs come back once), always (on the CPU too), never")
    parser.add_argument("--cuda-graph-batches", metavar="N,N,...", type=_graph_batches, default=(),
                        help="CUDA provider: capture a CUDA graph per batch size at start-up (like 1,8,32) and run "
                             "every batch through the smallest that holds it, padded; larger batches in chunks of "
                             "the largest; --max-batch at most the largest (default: off)")
    parser.add_argument("--trt-cache", metavar="DIR", default=None,
                        help="TensorRT provider: keep built engines (and timings) in DIR across restarts")
    parser.add_argument("--trt-fp16", action="store_true", help="TensorRT provider: allow float16 kernels")
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime intra-op threads per model (default 0: onnxruntime's choice, one per core)")
    parser.add_argument("--max-batch", type=_positive_int, default=32,
                        help="dynamic batching: most rows gathered into one run (default 32; 1: no batching)")
    parser.add_argument("--batch-timeout-ms", type=_non_negative_float, default=0.0,
                        help="dynamic batching: longest wait for more requests after the first (default 0: "
                             "take what is waiting, no more)")
    parser.add_argument("--max-queue", type=_non_negative_int, default=512,
                        help="overload: most requests waiting per model; one more gets 503 with Retry-After at once "
                             "(default 512; 0: unbounded)")
    parser.add_argument("--request-timeout-ms", type=_non_negative_float, default=0.0,
                        help="overload: longest wait for a run; a request waiting longer gets 504 (default 0: none)")
    parser.add_argument("--max-body-mb", type=_positive_float, default=16.0,
                        help="largest request body in MiB; larger ones get 413 (default 16)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--access-log", action="store_true", help="log every request (off by default)")
    parser.add_argument("--no-ui", action="store_true", help="no page at / (the protocol's endpoints only)")
    args = parser.parse_args(argv)
    if bool(args.models) == bool(args.model_repository):
        parser.error("give the ONNX files to serve, or --model-repository DIR (one of the two)")
    return args


def port_problem(host: str, port: int) -> Optional[str]:
    """Why host:port cannot be listened on (in use, not an address here), or None."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        return error.strerror or str(error)
    return None


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose readiness turns false as soon as SIGTERM (or
    Ctrl-C) starts the drain, not only once the requests in flight are done."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.served_app = app

    def handle_exit(self, sig, frame):
        self.served_app.state.ready = False
        super().handle_exit(sig, frame)


def _run_path(model) -> str:
    """How a model's runs go, for its start-up line."""
    if model.graphs is not None:
        return f" (IOBinding, CUDA graphs for batches {', '.join(map(str, model.graphs.sizes))})"
    return " (IOBinding)" if model.binding_device else ""


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)-9s %(message)s", level=args.log_level.upper())
    # onnxruntime logs a failed CUDA provider as an error per session; the server says it once.
    onnxruntime.set_default_logger_severity(4)
    try:
        providers = resolve_providers([p.strip() for p in args.providers.split(",") if p.strip()])
        if "CUDAExecutionProvider" in providers:
            with contextlib.suppress(Exception):
                onnxruntime.preload_dlls()  # CUDA and cuDNN from the pip packages torch brings
        settings = Settings(provider_options(providers, args.trt_cache, args.trt_fp16), args.threads,
                            args.max_batch, args.batch_timeout_ms, args.max_queue, args.request_timeout_ms,
                            args.io_binding, args.cuda_graph_batches)
        if args.model_repository:
            repository = ModelRepository.from_directory(args.model_repository, settings)
        else:
            repository = ModelRepository.from_files(args.models, settings)
    except ServeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

    for option, port in (("--port", args.port), ("--grpc-port", args.grpc_port)):
        problem = port_problem(args.host, port) if port else None
        if problem:
            print(f"error: {option} {port}: cannot listen on {args.host}:{port} ({problem})", file=sys.stderr)
            sys.exit(2)
    models = repository.all_models()
    active = {p for model in models for p in model.session.get_providers()}
    if "CUDAExecutionProvider" in providers and "CUDAExecutionProvider" not in active:
        log.warning("the CUDA execution provider is unavailable here (no GPU, or CUDA 13/cuDNN 9 "
                    "libraries missing); serving on %s", ", ".join(sorted(active)))
    for model in models:
        output = ", ".join(f"{spec.name} {list(spec.shape)}" for spec in model.outputs)
        log.info("model %s version %s: %s on %s%s; input %s %s -> %s", model.name, model.version, model.path,
                 model.session.get_providers()[0], _run_path(model),
                 model.input.name, list(model.input.shape), output)
    if args.max_batch > 1:
        log.info("dynamic batching: up to %d rows per run, waiting at most %g ms", args.max_batch,
                 args.batch_timeout_ms)
    else:
        log.info("dynamic batching off (--max-batch 1)")
    if args.grpc_port:
        log.info("gRPC (KServe v2 / Triton) on %s:%d", args.host, args.grpc_port)
    app = create_app(repository, max_body_mb=args.max_body_mb, grpc_port=args.grpc_port, grpc_host=args.host,
                     ui=not args.no_ui)
    if not args.no_ui:
        log.info("the page: http://%s:%d/", args.host, args.port)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            access_log=args.access_log, timeout_graceful_shutdown=30)
    DrainingServer(config, app).run()


if __name__ == "__main__":
    main()
