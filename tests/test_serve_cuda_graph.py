"""export.serve --cuda-graph-batches: CUDA graphs per batch size.

Without a GPU: the option's parsing, the plan that pads a batch up to a
captured size or cuts it into chunks, the very padded-batch code path
(CapturedBatches: fixed bound buffers, update in place, one run per captured
size) run with the CPU provider against plain runs, alone and under the
dynamic batcher, Triton's configuration field, and every error. With a GPU
(skipped unless onnxruntime's CUDA provider can create a session; an error
instead under PYCNN_SERVE_REQUIRE_CUDA=1, which tools/device_check sets): the
captured graphs against runs without them, directly and through the server.
"""
import asyncio
import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import onnxruntime  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

import pycnn.models  # noqa: E402
from export import onnx as onnx_export  # noqa: E402
from export.serve import app as serve_app  # noqa: E402
from export.serve.batching import DynamicBatcher  # noqa: E402
from export.serve.models import (CapturedBatches, ServeError, _graph_sizes, _with_cuda_graph, batch_plan,  # noqa: E402
                                 load_model, parse_graph_batches)
from export.serve.protocol import TensorSpec  # noqa: E402
from export.serve.repository import Settings  # noqa: E402
from pycnn.data import CLASSES  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = ["CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
SIZES = (1, 4, 8)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """lenet_bn.onnx (dynamic batch) and lenet_fixed.onnx (a fixed batch of 2), as export.onnx writes them."""
    directory = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    files = {}
    for name, arch, batch in (("lenet_bn", "lenet_bn", None), ("lenet_fixed", "lenet", 2)):
        files[name] = str(directory / f"{name}.onnx")
        onnx_export.export_onnx(pycnn.models.create(arch).eval(), files[name], batch_size=batch, labels=CLASSES)
    return files


@pytest.fixture(scope="module")
def plain(onnx_files):
    """A plain CPU onnxruntime run of lenet_bn: the reference."""
    session = onnxruntime.InferenceSession(onnx_files["lenet_bn"], providers=CPU)
    return lambda x: session.run(["logits"], {"input": x})[0]


def rows(n, seed=0):
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def cpu_graph_model(path, sizes=SIZES):
    """lenet_bn served through CapturedBatches on the CPU provider: the CUDA-graph
    code path, buffers on the host instead of the device, warmed up as at load."""
    model = load_model(path, CPU, 1, io_binding="always")
    model.graphs = CapturedBatches(model.session, model.input, model.outputs, sizes, "cpu", path)
    model.warm_up()
    return model


# --- the option -------------------------------------------------------------------

def test_batch_sizes_are_parsed_sorted_and_once():
    assert parse_graph_batches("1,8,32") == (1, 8, 32)
    assert parse_graph_batches(" 32, 1 ,8,8") == (1, 8, 32)
    assert serve_app.parse_args(["m.onnx", "--cuda-graph-batches", "8,1"]).cuda_graph_batches == (1, 8)
    assert serve_app.parse_args(["m.onnx"]).cuda_graph_batches == ()  # off by default


@pytest.mark.parametrize("text", ["0", "-1", "1,0", "a", "", "1,,8", "1.5", "8;16"])
def test_batch_sizes_must_be_positive_integers(text):
    with pytest.raises(ValueError, match="positive integers"):
        parse_graph_batches(text)


# --- the plan: pad up, chunk beyond the largest -------------------------------------

@pytest.mark.parametrize("rows_, sizes, plan", [
    (1, (1, 8, 32), [(1, 1)]),
    (2, (1, 8, 32), [(2, 8)]),
    (8, (1, 8, 32), [(8, 8)]),
    (9, (1, 8, 32), [(9, 32)]),
    (32, (1, 8, 32), [(32, 32)]),
    (33, (1, 8, 32), [(32, 32), (1, 1)]),
    (70, (1, 8, 32), [(32, 32), (32, 32), (6, 8)]),
    (3, (4,), [(3, 4)]),
    (9, (4,), [(4, 4), (4, 4), (1, 4)]),
    (0, (1, 8), [(0, 1)]),  # an empty batch: an empty slice of the smallest run
])
def test_batch_plan(rows_, sizes, plan):
    assert batch_plan(rows_, sizes) == plan


def test_batch_plan_covers_every_row_on_the_smallest_fitting_size():
    sizes = (2, 5, 16)
    for n in range(1, 60):
        plan = batch_plan(n, sizes)
        assert sum(r for r, _ in plan) == n
        assert all(r == s == 16 for r, s in plan[:-1])
        last_rows, last_size = plan[-1]
        assert 0 < last_rows <= last_size and last_size == min(s for s in sizes if s >= last_rows)


# --- the padded-batch code path, on the CPU provider ------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 17, 0])
def test_padded_runs_equal_a_plain_run(onnx_files, plain, n):
    model = cpu_graph_model(onnx_files["lenet_bn"])
    x = rows(n, seed=n)
    (got,) = model.run(x)
    assert got.shape == (n, 10) and got.dtype == np.float32
    if n:
        np.testing.assert_allclose(got, plain(x), rtol=1e-5, atol=1e-6)


def test_buffers_are_reused_without_leaking_between_runs(onnx_files, plain):
    """Runs through one slot: each sees only its own rows (the padding is zeroed),
    and an answer handed out is not overwritten by the next run into the buffer."""
    model = cpu_graph_model(onnx_files["lenet_bn"])
    slot = model.graphs._slots[8]
    big, small = rows(8, seed=1), rows(5, seed=2)
    (first,) = model.run(big)
    (second,) = model.run(small)
    assert np.all(slot.staging[5:] == 0)
    np.testing.assert_allclose(second, plain(small), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first, plain(big), rtol=1e-5, atol=1e-6)  # still the first run's answer


def test_under_the_dynamic_batcher_each_caller_gets_its_rows(onnx_files, plain):
    model = cpu_graph_model(onnx_files["lenet_bn"])
    requests = [rows(n, seed=10 + i) for i, n in enumerate([1, 3, 2, 8, 1, 5, 12, 4])]

    async def serve():
        batcher = DynamicBatcher(model.run, 8, 0.02, "lenet_bn")
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.infer(x) for x in requests))
        finally:
            await batcher.stop()

    for x, (got,) in zip(requests, asyncio.run(serve())):
        np.testing.assert_allclose(got, plain(x), rtol=1e-5, atol=1e-6)


def test_start_up_line_and_triton_config_name_the_graphs(onnx_files):
    model = cpu_graph_model(onnx_files["lenet_bn"])
    assert serve_app._run_path(model) == " (IOBinding, CUDA graphs for batches 1, 4, 8)"  # its start-up line
    config = model.config(8, 0.0)
    assert config["optimization"] == {"cuda": {"graphs": True, "graph_spec": [
        {"batch_size": 1}, {"batch_size": 4}, {"batch_size": 8}]}}
    parsed = json_format.ParseDict(config, model_config_pb2.ModelConfig())  # what the gRPC config answers
    assert parsed.optimization.cuda.graphs and [g.batch_size for g in parsed.optimization.cuda.graph_spec] == [1, 4, 8]
    assert "optimization" not in load_model(onnx_files["lenet_bn"], CPU, 1).config(8, 0.0)


# --- the errors ------------------------------------------------------------------------

def test_cuda_provider_option_is_set_and_others_kept():
    chosen = _with_cuda_graph([("TensorrtExecutionProvider", {"trt_fp16_enable": "True"}),
                               ("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"], "auto")
    assert chosen == [("TensorrtExecutionProvider", {"trt_fp16_enable": "True"}),
                      ("CUDAExecutionProvider", {"device_id": "0", "enable_cuda_graph": "1"}), "CPUExecutionProvider"]
    assert _with_cuda_graph(CUDA, "always") == [("CUDAExecutionProvider", {"enable_cuda_graph": "1"}),
                                                "CPUExecutionProvider"]


def test_without_the_cuda_provider_it_refuses(onnx_files):
    with pytest.raises(ServeError, match="needs onnxruntime's CUDA execution provider, and the providers are "
                                         "CPUExecutionProvider"):
        load_model(onnx_files["lenet_bn"], CPU, 1, cuda_graph_batches=SIZES)
    with pytest.raises(ServeError, match="cannot be combined with --io-binding never"):
        load_model(onnx_files["lenet_bn"], CUDA, 1, io_binding="never", cuda_graph_batches=SIZES)


def test_a_model_on_another_provider_is_refused_not_served(onnx_files):
    model = load_model(onnx_files["lenet_bn"], CPU, 1)
    for provider in ("CPUExecutionProvider", "TensorrtExecutionProvider"):
        with pytest.raises(ServeError, match=f"needs onnxruntime's CUDA execution provider, but the model runs on "
                                             f"{provider}"):
            _graph_sizes(model, provider, SIZES)


def test_a_fixed_batch_must_be_one_of_the_sizes(onnx_files):
    fixed = load_model(onnx_files["lenet_fixed"], CPU, 1)
    with pytest.raises(ServeError, match="fixed batch of 2, which --cuda-graph-batches 1,4,8 does not name"):
        _graph_sizes(fixed, "CUDAExecutionProvider", SIZES)
    assert _graph_sizes(fixed, "CUDAExecutionProvider", (1, 2, 8)) == (2,)  # its only batch
    dynamic = load_model(onnx_files["lenet_bn"], CPU, 1)
    assert _graph_sizes(dynamic, "CUDAExecutionProvider", (8, 1)) == (1, 8)


def test_outputs_need_fixed_shapes():
    with pytest.raises(ServeError, match="output 'boxes' has the shape \\[-1, -1, 4\\]; CUDA graphs need"):
        CapturedBatches(None, TensorSpec("input", "FP32", (-1, 1, 28, 28)),
                        [TensorSpec("boxes", "FP32", (-1, -1, 4))], (1,), "cpu")


def test_max_batch_must_fit_the_largest_graph():
    with pytest.raises(ServeError, match="--max-batch 32 is larger than the largest of --cuda-graph-batches 1,8"):
        Settings(CPU, max_batch=32, cuda_graph_batches=(1, 8))
    assert Settings(CPU, max_batch=8, cuda_graph_batches=(1, 8)).max_batch == 8
    assert Settings(CPU, max_batch=4, cuda_graph_batches=(1, 8)).max_batch == 4  # the 8 serves larger requests


def _serve_cli(*args):
    return subprocess.run([sys.executable, "-m", "export.serve", *args, "--port", "0", "--grpc-port", "0"],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=120)


def test_command_line_errors(onnx_files):
    path = onnx_files["lenet_bn"]
    sizes = _serve_cli(path, "--cuda-graph-batches", "1,0")
    assert sizes.returncode == 2 and "--cuda-graph-batches: batch sizes must be positive integers" in sizes.stderr
    too_big = _serve_cli(path, "--cuda-graph-batches", "1,8")  # --max-batch defaults to 32
    assert too_big.returncode == 2 and "error: --max-batch 32 is larger" in too_big.stderr, too_big.stderr
    cpu = _serve_cli(path, "--providers", "cpu", "--cuda-graph-batches", "1,32")
    assert cpu.returncode == 2 and "needs onnxruntime's CUDA execution provider" in cpu.stderr, cpu.stderr
    assert "Traceback" not in sizes.stderr + too_big.stderr + cpu.stderr
    if not cuda_works(path):  # the default providers, cuda,cpu, fall back to the CPU here: refused
        fallback = _serve_cli(path, "--cuda-graph-batches", "1,32")
        assert fallback.returncode == 2 and "but the model runs on CPUExecutionProvider" in fallback.stderr, \
            fallback.stderr


# --- on a GPU ----------------------------------------------------------------------------

def cuda_works(path) -> bool:
    """Whether onnxruntime's CUDA provider can create a session here (a GPU and its libraries)."""
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return False
    try:
        with contextlib.suppress(Exception):
            onnxruntime.preload_dlls()  # CUDA and cuDNN from the pip packages, as the server does
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 4
        session = onnxruntime.InferenceSession(path, options, providers=["CUDAExecutionProvider"])
        return session.get_providers()[0] == "CUDAExecutionProvider"
    except Exception:  # noqa: BLE001 -- no GPU, or no CUDA libraries: the provider cannot start
        return False


@pytest.fixture(scope="module")
def on_gpu(onnx_files):
    if not cuda_works(onnx_files["lenet_bn"]):
        if os.environ.get("PYCNN_SERVE_REQUIRE_CUDA") == "1":
            pytest.fail("PYCNN_SERVE_REQUIRE_CUDA=1, but onnxruntime's CUDA provider cannot create a session here")
        pytest.skip("onnxruntime's CUDA provider cannot create a session here (no GPU, or no CUDA libraries)")


def test_gpu_cuda_graphs_equal_runs_without_them(onnx_files, on_gpu):
    """Captured graphs of 1, 4 and 8 rows, replayed for every batch size up to
    three chunks, with new rows each time (a replay reading stale addresses
    would answer the previous batch), against the CUDA provider without graphs
    and against the CPU."""
    path = onnx_files["lenet_bn"]
    graphs = load_model(path, CUDA, 0, cuda_graph_batches=SIZES)
    assert graphs.graphs is not None and graphs.graphs.sizes == SIZES and graphs.graphs.device == "cuda"
    assert graphs.session.get_providers()[0] == "CUDAExecutionProvider"
    assert graphs.session.get_provider_options()["CUDAExecutionProvider"]["enable_cuda_graph"] == "1"
    without = load_model(path, CUDA, 0)
    cpu = onnxruntime.InferenceSession(path, providers=CPU)
    for i, n in enumerate([1, 2, 3, 4, 5, 8, 8, 1, 9, 20, 3]):
        x = rows(n, seed=100 + i)
        (got,) = graphs.run(x)
        (expected,) = without.run(x)
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3, err_msg=f"batch {n}")
        np.testing.assert_allclose(got, cpu.run(["logits"], {"input": x})[0], rtol=1e-3, atol=1e-3,
                                   err_msg=f"batch {n} against the CPU")
    a, b = rows(4, seed=1), rows(4, seed=2)
    (first,), (second,) = graphs.run(a), graphs.run(b)
    assert not np.allclose(first, second)  # the replay read the new rows
    np.testing.assert_allclose(second, without.run(b)[0], rtol=1e-3, atol=1e-3)


def test_gpu_server_with_cuda_graphs(onnx_files, on_gpu, tmp_path):
    """The real server with --cuda-graph-batches: it says so at start-up and
    answers as a plain run does, for batches padded and chunked."""
    from test_serve import INFER, Server, infer_body, logits_of

    server = Server(str(tmp_path), onnx_files["lenet_bn"], "--cuda-graph-batches", "1,4,8", "--max-batch", "8")
    try:
        assert "lenet_bn.onnx on CUDAExecutionProvider (IOBinding, CUDA graphs for batches 1, 4, 8)" in server.output()
        cpu = onnxruntime.InferenceSession(onnx_files["lenet_bn"], providers=CPU)
        for n in (1, 3, 8, 13):
            x = rows(n, seed=200 + n)
            np.testing.assert_allclose(logits_of(server.client.post(INFER, json=infer_body(x))),
                                       cpu.run(["logits"], {"input": x})[0], rtol=1e-3, atol=1e-3)
        config = server.client.get("/v2/models/lenet_bn/config").json()
        assert config["optimization"]["cuda"]["graph_spec"] == [{"batch_size": s} for s in (1, 4, 8)]
    finally:
        server.stop()
