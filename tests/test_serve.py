"""export.serve: the real server, started in a subprocess on a free loopback
port and spoken to over HTTP (httpx, and Triton's own client when installed).

Metadata, inference equal to a direct onnxruntime run (JSON and binary
tensors), classify on real Fashion-MNIST test images saved as PNG, every bad
request followed by a good one, dynamic batching, metrics, graceful shutdown,
command-line errors and the load-test CLI.
"""
import concurrent.futures
import importlib.metadata
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
Image = pytest.importorskip("PIL.Image")

import onnx  # noqa: E402
import onnxruntime  # noqa: E402

import pycnn.models  # noqa: E402
from export import _common  # noqa: E402
from export import onnx as onnx_export  # noqa: E402
from export.serve import image as serve_image  # noqa: E402
from export.serve.image import image_to_input, to_fashion_mnist  # noqa: E402
from pycnn.data import CLASSES, IMAGE_HW, load_split, prepare_images  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDS_DATA = pytest.mark.skipif(not _common.fashion_mnist_available(),
                                reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
FIXED_BATCH = 2


# --- a real server in a subprocess --------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# python -c WITHOUT_TORCH ARGS: python -m export.serve ARGS in a process where
# importing torch or pycnn (and so pycnn._C) raises ImportError.
WITHOUT_TORCH = ("import runpy, sys; sys.modules.update(torch=None, pycnn=None); "
                 "runpy.run_module('export.serve', run_name='__main__', alter_sys=True)")


class Server:
    """python -m export.serve ARGS on a free port; .url, .client, .stop().
    without_torch: in a process that cannot import torch or pycnn."""

    def __init__(self, log_dir, *args, without_torch=False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(log_dir, f"serve-{self.port}.log")
        self.log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONPATH=ROOT)
        launch = ["-c", WITHOUT_TORCH] if without_torch else ["-m", "export.serve"]
        self.grpc_port = free_port()
        self.process = subprocess.Popen([sys.executable, *launch, *args, "--port", str(self.port),
                                         "--grpc-port", str(self.grpc_port)],
                                        cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if self.client.get("/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not become ready:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> int:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """lenet_bn.onnx with a dynamic batch and lenet_fixed.onnx with a batch of FIXED_BATCH,
    both labelled with the Fashion-MNIST classes (as python -m export.onnx writes them)."""
    directory = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    files = {}
    for name, arch, batch in (("lenet_bn", "lenet_bn", None), ("lenet_fixed", "lenet", FIXED_BATCH)):
        model = pycnn.models.create(arch).eval()
        files[name] = str(directory / f"{name}.onnx")
        onnx_export.export_onnx(model, files[name], batch_size=batch, labels=CLASSES)
    return files


@pytest.fixture(scope="module")
def server(onnx_files, tmp_path_factory):
    # A long batch timeout, so the batching test can count on company.
    server = Server(str(tmp_path_factory.mktemp("logs")), onnx_files["lenet_bn"], onnx_files["lenet_fixed"],
                    "--max-batch", "16", "--batch-timeout-ms", "20", "--max-body-mb", "1", "--threads", "1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def direct(onnx_files):
    """name -> a function running that ONNX file in onnxruntime directly."""
    sessions = {name: onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
                for name, path in onnx_files.items()}
    return {name: (lambda x, s=session: s.run(["logits"], {"input": x})[0]) for name, session in sessions.items()}


def random_input(batch, seed=0):
    return np.random.default_rng(seed).random((batch, 1, 28, 28), dtype=np.float32)


def infer_body(x, **extra):
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            **extra}


def logits_of(response):
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["name"] == "logits" and output["datatype"] == "FP32"
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def assert_serves(server, seed=7):
    """A good request after a bad one: the server still answers correctly."""
    x = random_input(1, seed)
    assert logits_of(server.client.post("/v2/models/lenet_bn/infer", json=infer_body(x))).shape == (1, 10)


# --- metadata and health --------------------------------------------------------

def test_health_and_server_metadata(server):
    assert server.client.get("/v2/health/live").json() == {"live": True}
    assert server.client.get("/v2/health/ready").json() == {"ready": True}
    metadata = server.client.get("/v2").json()
    assert metadata["name"] == "pycnn" and "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_and_readiness(server):
    assert server.client.get("/v2/models/lenet_bn").json() == {
        "name": "lenet_bn", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]}
    fixed = server.client.get("/v2/models/lenet_fixed/versions/1").json()
    assert fixed["inputs"][0]["shape"] == [FIXED_BATCH, 1, 28, 28]
    assert fixed["outputs"][0]["shape"] == [FIXED_BATCH, 10]
    for path in ("/v2/models/lenet_bn/ready", "/v2/models/lenet_fixed/versions/1/ready"):
        assert server.client.get(path).json()["ready"] is True
    assert server.client.get("/v2/models/lenet_bn/config").json() == {
        "name": "lenet_bn", "platform": "onnxruntime_onnx", "backend": "onnxruntime", "max_batch_size": 16,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 20000}}
    fixed_config = server.client.get("/v2/models/lenet_fixed/config").json()
    assert fixed_config["max_batch_size"] == 0 and fixed_config["input"][0]["dims"] == [FIXED_BATCH, 1, 28, 28]
    assert "dynamic_batching" not in fixed_config


# --- inference ------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 3, 20])
def test_infer_equals_onnxruntime(server, direct, batch):
    x = random_input(batch, seed=batch)
    response = server.client.post("/v2/models/lenet_bn/infer", json=infer_body(x, id="request-7"))
    np.testing.assert_allclose(logits_of(response), direct["lenet_bn"](x), rtol=1e-5, atol=1e-5)
    assert response.json()["id"] == "request-7"
    assert response.json()["model_name"] == "lenet_bn"


def test_infer_accepts_nested_data_and_requested_outputs(server, direct):
    x = random_input(2, seed=3)
    body = {"inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": x.tolist()}],
            "outputs": [{"name": "logits"}]}
    response = server.client.post("/v2/models/lenet_bn/versions/1/infer", json=body)
    np.testing.assert_allclose(logits_of(response), direct["lenet_bn"](x), rtol=1e-5, atol=1e-5)


def test_binary_tensor_extension(server, direct):
    x = random_input(4, seed=4)
    raw = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": [4, 1, 28, 28], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    response = server.client.post("/v2/models/lenet_bn/infer", content=header + raw,
                                  headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    meta = json.loads(response.content[:length])
    output = meta["outputs"][0]
    assert output["parameters"]["binary_data_size"] == 4 * 10 * 4 and "data" not in output
    logits = np.frombuffer(response.content[length:], "<f4").reshape(output["shape"])
    np.testing.assert_allclose(logits, direct["lenet_bn"](x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritons_own_client(server, direct, binary):
    """A client written for Triton works unchanged."""
    triton = pytest.importorskip("tritonclient.http")
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("lenet_bn")
    assert client.get_model_metadata("lenet_bn")["inputs"][0]["shape"] == [-1, 1, 28, 28]
    assert client.get_model_config("lenet_bn")["max_batch_size"] == 16
    x = random_input(3, seed=5)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = client.infer("lenet_bn", [tensor], outputs=[triton.InferRequestedOutput("logits", binary_data=binary)],
                          request_id="triton-1")
    np.testing.assert_allclose(result.as_numpy("logits"), direct["lenet_bn"](x), rtol=1e-5, atol=1e-5)
    assert result.get_response()["id"] == "triton-1"
    client.close()


def expected_classification(logits, count, labels=CLASSES):
    """Triton's "score:index:label" strings of a direct run's top `count`."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :count]
    return [[f"{float(row[i]):f}:{i}:{labels[i]}" for i in picks] for row, picks in zip(logits, order)]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_classification_extension(server, direct, binary):
    """"parameters": {"classification": K} on an output: Triton's strings of the
    top K scores with the model's labels, over JSON, raw BYTES and tritonclient."""
    x = random_input(4, seed=8)
    expected = expected_classification(direct["lenet_bn"](x), 3)
    body = infer_body(x, outputs=[{"name": "logits", "parameters": {"classification": 3, "binary_data": binary}}])
    response = server.client.post(INFER, json=body)
    assert response.status_code == 200, response.text
    if binary:
        length = int(response.headers["inference-header-content-length"])
        header, raw = json.loads(response.content[:length]), response.content[length:]
        output = header["outputs"][0]
        assert output["parameters"]["binary_data_size"] == len(raw)
        strings, offset = [], 0
        while offset < len(raw):  # 4-byte little-endian length, then the bytes
            size = int.from_bytes(raw[offset:offset + 4], "little")
            strings.append(raw[offset + 4:offset + 4 + size].decode())
            offset += 4 + size
    else:
        output = response.json()["outputs"][0]
        strings = output["data"]
    assert output["datatype"] == "BYTES" and output["shape"] == [4, 3]
    assert np.array(strings).reshape(4, 3).tolist() == expected

    triton = pytest.importorskip("tritonclient.http")
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = client.infer("lenet_bn", [tensor], outputs=[
        triton.InferRequestedOutput("logits", binary_data=binary, class_count=10)])
    got = [[v.decode() if isinstance(v, bytes) else v for v in row] for row in result.as_numpy("logits").tolist()]
    assert got == expected_classification(direct["lenet_bn"](x), 10)
    client.close()
    # More classes than the model has: all of them, as Triton does.
    many = server.client.post(INFER, json=infer_body(x, outputs=[{"name": "logits", "parameters": {"classification": 99}}]))
    assert many.json()["outputs"][0]["shape"] == [4, 10]


def test_statistics_add_up_to_the_requests_sent(server):
    """Triton's statistics extension: the deltas of success and inference counts
    equal what was sent; executions by batch size add up to the runs; over
    plain HTTP and tritonclient."""
    def stats():
        return server.client.get("/v2/models/lenet_bn/stats").json()["model_stats"][0]

    before = stats()
    sizes = [1, 3, 2, 5, 1, 4]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda n: server.client.post(INFER, json=infer_body(random_input(n, seed=n))), sizes))
    assert all(r.status_code == 200 for r in responses)
    after = stats()
    assert after["name"] == "lenet_bn" and after["version"] == "1" and after["last_inference"] > 0
    success = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    assert success == len(sizes)
    assert after["inference_count"] - before["inference_count"] == sum(sizes)
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert after["inference_stats"][phase]["count"] - before["inference_stats"][phase]["count"] == len(sizes)
    assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    runs = sum(b["compute_infer"]["count"] for b in after["batch_stats"])
    assert runs == after["execution_count"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in after["batch_stats"]) >= after["inference_count"]
    every = server.client.get("/v2/models/stats").json()["model_stats"]
    assert sorted(m["name"] for m in every) == ["lenet_bn", "lenet_fixed"]
    assert server.client.get("/v2/models/lenet_bn/versions/1/stats").status_code == 200
    assert server.client.get("/v2/models/vgg99/stats").status_code == 404

    triton = pytest.importorskip("tritonclient.http")
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.get_inference_statistics("lenet_bn")["model_stats"][0]["inference_count"] == after["inference_count"]
    client.close()


def test_fixed_batch_model(server, direct):
    x = random_input(FIXED_BATCH, seed=6)
    np.testing.assert_allclose(logits_of(server.client.post("/v2/models/lenet_fixed/infer", json=infer_body(x))),
                               direct["lenet_fixed"](x), rtol=1e-5, atol=1e-5)


# --- classify -------------------------------------------------------------------

def png_bytes(array, mode=None):
    buffer = io.BytesIO()
    (Image.fromarray(array) if mode is None else Image.fromarray(array, mode)).save(buffer, "PNG")
    return buffer.getvalue()


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@NEEDS_DATA
def test_classify_real_test_images(server, direct):
    """The PNG of a test image gives exactly the probabilities of the training
    transform's tensor run directly; the top-k are sorted and named."""
    images, _ = load_split("test")
    images = images[:6]
    expected = softmax(direct["lenet_bn"](prepare_images(torch.from_numpy(images).unsqueeze(1), (28, 28)).numpy())
                       .astype(np.float64))
    for i, image in enumerate(images):
        data = png_bytes(image)
        if i % 2:  # a multipart upload (curl -F file=@image.png) ...
            response = server.client.post("/v2/models/lenet_bn/classify", params={"top_k": 10},
                                          files={"file": ("image.png", data, "image/png")})
        else:  # ... or the file as the body (curl --data-binary @image.png)
            response = server.client.post("/v2/models/lenet_bn/classify?top_k=10", content=data,
                                          headers={"content-type": "image/png"})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert [p["index"] for p in predictions] == list(np.argsort(-expected[i], kind="stable"))
        assert [p["label"] for p in predictions] == [CLASSES[p["index"]] for p in predictions]
        np.testing.assert_allclose([p["probability"] for p in predictions],
                                   expected[i][[p["index"] for p in predictions]], rtol=1e-5, atol=1e-6)
    top3 = server.client.post("/v2/models/lenet_bn/classify", content=png_bytes(images[0])).json()
    assert len(top3["predictions"]) == 3 and top3["model_name"] == "lenet_bn"


@pytest.mark.parametrize("size", [(32, 32), (96, 96), (224, 224), (227, 227), (24, 24), (29, 31), (1, 1), (2, 100)])
def test_resize_is_the_training_transform(size):
    """The server's numpy resize (no torch there) is prepare_images': the very
    interpolation weights, read back from torch's kernel with one-hot images, and
    values within float32 rounding (torch fuses its multiply-adds differently
    on each instruction set)."""
    for size_in, size_out in ((IMAGE_HW[0], size[0]), (IMAGE_HW[1], size[1])):
        one_hot = torch.eye(size_in)[:, None, None, :]  # (size_in, 1, 1, size_in): image j is pixel j
        torch_weights = torch.nn.functional.interpolate(one_hot, size=(1, size_out), mode="bilinear",
                                                        align_corners=False)[:, 0, 0, :].T.numpy()
        np.testing.assert_array_equal(serve_image.bilinear_weights(size_in, size_out), torch_weights)
    grey = np.random.default_rng(sum(size)).integers(0, 256, (28, 28), dtype=np.uint8)
    x = image_to_input(png_bytes(grey), size)
    assert x.dtype == np.float32 and x.shape == (1, 1, *size)
    expected = prepare_images(torch.from_numpy(grey)[None, None], size).numpy()
    np.testing.assert_allclose(x, expected, rtol=0, atol=4 * np.finfo(np.float32).eps)


def test_classify_colour_photos_of_any_size(server):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8), "RGB")
    jpeg = io.BytesIO()
    rgb.save(jpeg, "JPEG")
    rgba = png_bytes(rng.integers(0, 256, (40, 90, 4), dtype=np.uint8), "RGBA")
    for data in (jpeg.getvalue(), rgba):
        response = server.client.post("/v2/models/lenet_bn/classify", params={"top_k": 10}, content=data)
        assert response.status_code == 200, response.text
        assert sum(p["probability"] for p in response.json()["predictions"]) == pytest.approx(1.0, abs=1e-6)
    # A model exported with a fixed batch classifies one image too.
    assert server.client.post("/v2/models/lenet_fixed/classify", content=jpeg.getvalue()).status_code == 200


def test_image_conversion():
    """28x28 grey is the identity before the training transform; transparency is
    black; other sizes are padded square with black, then resized to 28x28."""
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    x = image_to_input(png_bytes(grey), (28, 28))
    assert x.dtype == np.float32 and x.shape == (1, 1, 28, 28)
    np.testing.assert_array_equal(x, prepare_images(torch.from_numpy(grey)[None, None]).numpy())
    assert serve_image.IMAGE_HW == IMAGE_HW

    transparent = np.zeros((28, 28, 4), np.uint8)
    transparent[..., :3] = 255  # white, but fully transparent
    assert to_fashion_mnist(Image.open(io.BytesIO(png_bytes(transparent, "RGBA")))).max() == 0

    deep = (np.arange(28 * 28, dtype=np.uint32).reshape(28, 28) * 83).astype(np.uint16)  # 16-bit grey
    expected = np.round(deep / 257).astype(np.uint8)
    np.testing.assert_array_equal(to_fashion_mnist(Image.open(io.BytesIO(png_bytes(deep)))), expected)

    wide = np.full((10, 56), 255, np.uint8)  # white 56x10 -> a white band across the middle
    converted = to_fashion_mnist(Image.open(io.BytesIO(png_bytes(wide))))
    assert converted.shape == (28, 28)
    assert converted[0].max() == 0 and converted[-1].max() == 0 and converted[14].min() == 255


# --- bad requests -----------------------------------------------------------------

def _input(**changes):
    tensor = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}
    tensor.update(changes)
    return {"inputs": [{k: v for k, v in tensor.items() if v is not None}]}


def _binary_request(size):
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]}).encode()
    return {"content": header + bytes(size), "headers": {"Inference-Header-Content-Length": str(len(header))}}


def _truncated_png():
    data = png_bytes(np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8))
    return data[:len(data) // 2]


INFER = "/v2/models/lenet_bn/infer"
BAD_REQUESTS = {
    # name: (method, path, keyword arguments for httpx, status, words the error must contain)
    "invalid json": ("POST", INFER, {"content": b'{"inputs": [}'}, 400, "invalid JSON"),
    "not an object": ("POST", INFER, {"json": [1, 2]}, 400, "JSON object"),
    "no inputs": ("POST", INFER, {"json": {"id": "x"}}, 400, "no 'inputs'"),
    "empty inputs": ("POST", INFER, {"json": {"inputs": []}}, 400, "non-empty list"),
    "missing datatype": ("POST", INFER, {"json": {"inputs": [{"name": "input", "shape": [1, 1, 28, 28],
                                                              "data": [0] * 784}]}}, 400, "no 'datatype'"),
    "missing data": ("POST", INFER, {"json": _input(data=None)}, 400, "no 'data'"),
    "unknown input": ("POST", INFER, {"json": _input(name="image")}, 400, "no input 'image'"),
    "wrong shape": ("POST", INFER, {"json": _input(shape=[1, 28, 28])}, 400, "does not match the model's"),
    "zero batch": ("POST", INFER, {"json": _input(shape=[0, 1, 28, 28], data=[])}, 400, "does not match"),
    "shape not ints": ("POST", INFER, {"json": _input(shape=[1, 1, 28, "28"])}, 400, "list of integers"),
    "data length": ("POST", INFER, {"json": _input(data=[0.5] * 783)}, 400, "needs 784 values but 'data' has 783"),
    "wrong datatype": ("POST", INFER, {"json": _input(datatype="FP64")}, 400, "FP64 does not match the model's FP32"),
    "unknown datatype": ("POST", INFER, {"json": _input(datatype="FLOAT")}, 400, "unknown datatype 'FLOAT'"),
    "string data": ("POST", INFER, {"json": _input(data=["0.5"] * 784)}, 400, "numbers only (found the string"),
    "null data": ("POST", INFER, {"json": _input(data=[None] * 784)}, 400, "numbers only (found null)"),
    "boolean data": ("POST", INFER, {"json": _input(data=[True] * 784)}, 400, "numbers only (found a boolean)"),
    "ragged data": ("POST", INFER, {"json": _input(data=[[0.5] * 783, [0.5]])}, 400, "ragged"),
    "unknown output": ("POST", INFER, {"json": {**_input(), "outputs": [{"name": "probs"}]}}, 400, "no output 'probs'"),
    "bad header length": ("POST", INFER, {"json": _input(), "headers": {"Inference-Header-Content-Length": "x"}},
                          400, "must be an integer"),
    "binary size mismatch": ("POST", INFER, _binary_request(12), 400, "binary_data_size is 12 bytes but shape"),
    "fixed batch rows": ("POST", "/v2/models/lenet_fixed/infer", {"json": _input()}, 400,
                         "shape [1, 1, 28, 28] does not match the model's [2, 1, 28, 28]"),
    "unknown model infer": ("POST", "/v2/models/alexnet/infer", {"json": _input()}, 404, "unknown model 'alexnet'"),
    "unknown model metadata": ("GET", "/v2/models/alexnet", {}, 404, "unknown model"),
    "unknown model ready": ("GET", "/v2/models/alexnet/ready", {}, 404, "unknown model"),
    "unknown version": ("GET", "/v2/models/lenet_bn/versions/2", {}, 404, "no version '2'"),
    "unknown model classify": ("POST", "/v2/models/alexnet/classify", {"content": b"x"}, 404, "unknown model"),
    "unknown endpoint": ("GET", "/v2/nothing", {}, 404, "no such endpoint"),
    "wrong method": ("GET", INFER, {}, 405, "Method Not Allowed"),
    "body over limit": ("POST", INFER, {"content": b"0" * (2 << 20)}, 413, "limit of 1 MiB"),
    "chunked body over limit": ("POST", INFER, {"content": iter([b"0" * (1 << 19)] * 4)}, 413, "limit of 1 MiB"),
    "not an image": ("POST", "/v2/models/lenet_bn/classify", {"content": b"GIF? no."}, 400, "not an image"),
    "truncated image": ("POST", "/v2/models/lenet_bn/classify", {"content": _truncated_png()}, 400, "does not decode"),
    "empty image": ("POST", "/v2/models/lenet_bn/classify", {"content": b""}, 400, "has no image"),
    "form without file": ("POST", "/v2/models/lenet_bn/classify", {"files": {"x": (None, "1")}}, 400, "has no file"),
    "bad top_k": ("POST", "/v2/models/lenet_bn/classify?top_k=0", {"content": b"x"}, 400, "top_k"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_gets_a_clear_4xx_and_the_server_goes_on(server, case):
    method, path, kwargs, status, words = BAD_REQUESTS[case]
    response = server.client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["error"], response.json()
    assert_serves(server)


# --- batching and metrics -----------------------------------------------------

def metric(server, name, **labels):
    """The value of one Prometheus sample of the server's /metrics."""
    text = server.client.get("/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name and ",".join(sorted((match.group(2) or "").split(","))) == wanted:
            return float(match.group(3))
    return 0.0


def test_dynamic_batching_returns_each_caller_its_rows(server, direct):
    count_before = metric(server, "pycnn_serve_batch_size_count", model="lenet_bn")
    singles_before = metric(server, "pycnn_serve_batch_size_bucket", model="lenet_bn", le="1.0")
    requests = [random_input(1 + i % 3, seed=100 + i) for i in range(24)]
    barrier = threading.Barrier(len(requests))

    def send(x):
        barrier.wait()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            return logits_of(client.post(INFER, json=infer_body(x)))

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(send, requests))
    for x, logits in zip(requests, answers):
        np.testing.assert_allclose(logits, direct["lenet_bn"](x), rtol=1e-5, atol=1e-5)
    runs = metric(server, "pycnn_serve_batch_size_count", model="lenet_bn") - count_before
    singles = metric(server, "pycnn_serve_batch_size_bucket", model="lenet_bn", le="1.0") - singles_before
    assert runs < len(requests), "every request ran on its own"
    assert singles < runs, "no batch above 1 row"


def test_metrics_count_requests_and_errors(server):
    before = metric(server, "pycnn_serve_errors_total", endpoint="infer", model="lenet_bn", code="400")
    ok_before = metric(server, "pycnn_serve_requests_total", endpoint="infer", model="lenet_bn", code="200")
    server.client.post(INFER, content=b"not json")
    assert_serves(server)
    assert metric(server, "pycnn_serve_errors_total", endpoint="infer", model="lenet_bn", code="400") == before + 1
    assert metric(server, "pycnn_serve_requests_total", endpoint="infer", model="lenet_bn", code="200") == ok_before + 1
    assert metric(server, "pycnn_serve_request_duration_seconds_count", endpoint="infer", model="lenet_bn") > 0
    assert metric(server, "pycnn_serve_inference_duration_seconds_count", model="lenet_bn") > 0
    server.client.get("/v2/models/vgg99")  # an unknown name does not become a label
    assert 'model="vgg99"' not in server.client.get("/metrics").text


# --- lifecycle and command line ----------------------------------------------

def test_sigterm_finishes_requests_in_flight(onnx_files, tmp_path, direct):
    # A request waits 3 s for company; SIGTERM arrives meanwhile.
    server = Server(str(tmp_path), onnx_files["lenet_bn"], "--max-batch", "64", "--batch-timeout-ms", "3000")
    x = random_input(2, seed=9)
    answer = {}

    def send():
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answer["response"] = client.post(INFER, json=infer_body(x))

    thread = threading.Thread(target=send)
    thread.start()
    deadline = time.monotonic() + 2.5
    while metric(server, "pycnn_serve_requests_in_flight") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # until the server holds the request (the other one is this /metrics)
    assert metric(server, "pycnn_serve_requests_in_flight") == 2
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):  # no new connections while it drains
        httpx.get(server.url + "/v2/health/live", timeout=2)
    thread.join(30)
    np.testing.assert_allclose(logits_of(answer["response"]), direct["lenet_bn"](x), rtol=1e-5, atol=1e-5)
    assert server.process.wait(30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.output()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the CUDA provider is used")
def test_missing_cuda_provider_falls_back_to_cpu_with_one_warning(server):
    output = server.output()
    assert output.count("CUDA execution provider is unavailable") == 1, output
    assert "lenet_bn.onnx on CPUExecutionProvider" in output


def test_onnxruntime_without_cuda_serves_on_cpu_with_one_warning(monkeypatch, caplog):
    from export.serve import app

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level("WARNING", logger="export.serve"):
        assert app.resolve_providers(["cuda", "cpu"]) == ["CPUExecutionProvider"]
    assert [r.getMessage() for r in caplog.records] == [
        "this onnxruntime has no CUDAExecutionProvider; serving on the others (CPUExecutionProvider)"]


def binary_infer(client, x, path=INFER):
    raw = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return client.post(path, content=header + raw, headers={"Inference-Header-Content-Length": str(len(header))})


def test_overload_is_refused_quickly_and_service_resumes(onnx_files, tmp_path, direct):
    """Far beyond capacity: every request gets 200, or 503 with Retry-After at
    once (the queue is full), or 504 (it waited too long); never a 500; the
    503s and 504s are counted as failures; afterwards the server serves normally."""
    server = Server(str(tmp_path), onnx_files["lenet_bn"], "--max-batch", "1", "--max-queue", "2",
                    "--request-timeout-ms", "200", "--threads", "1")
    try:
        x = random_input(512, seed=11)
        answers = []

        def send(_):
            started = time.perf_counter()
            response = binary_infer(server.client, x)
            answers.append((response.status_code, time.perf_counter() - started, response.headers, response.text))

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            list(pool.map(send, range(96)))
        codes = [code for code, *_ in answers]
        assert set(codes) <= {200, 503, 504}, [text for code, _, _, text in answers if code not in (200, 503, 504)]
        assert codes.count(200) >= 3 and codes.count(503) >= 1, codes
        for code, seconds, headers, text in answers:
            if code == 503:
                assert headers["retry-after"] == "1" and "--max-queue" in text
            if code == 504:
                assert "--request-timeout-ms" in text
        stats = server.client.get("/v2/models/lenet_bn/stats").json()["model_stats"][0]["inference_stats"]
        assert stats["success"]["count"] == codes.count(200)
        assert stats["fail"]["count"] == codes.count(503) + codes.count(504)
        assert metric(server, "pycnn_serve_errors_total", endpoint="infer", model="lenet_bn", code="503") == codes.count(503)
        small = random_input(2, seed=12)
        np.testing.assert_allclose(logits_of(server.client.post(INFER, json=infer_body(small))),
                                   direct["lenet_bn"](small), rtol=1e-5, atol=1e-6)
    finally:
        server.stop()


def test_io_binding_path_gives_the_same_answers(onnx_files, tmp_path, direct):
    """The IOBinding run (automatic on a GPU provider) exercised on the CPU:
    the same outputs as a plain onnxruntime run, classification included."""
    server = Server(str(tmp_path), onnx_files["lenet_bn"], onnx_files["lenet_fixed"], "--io-binding", "always")
    try:
        assert "lenet_bn.onnx on CPUExecutionProvider (IOBinding)" in server.output()
        x = random_input(6, seed=31)
        np.testing.assert_allclose(logits_of(server.client.post(INFER, json=infer_body(x))), direct["lenet_bn"](x),
                                   rtol=1e-5, atol=1e-6)
        fixed = random_input(FIXED_BATCH, seed=32)
        np.testing.assert_allclose(
            logits_of(server.client.post("/v2/models/lenet_fixed/infer", json=infer_body(fixed))),
            direct["lenet_fixed"](fixed), rtol=1e-5, atol=1e-6)
    finally:
        server.stop()


def test_tensorrt_options():
    from export.serve.models import provider_options

    assert provider_options(["CUDAExecutionProvider", "CPUExecutionProvider"], "/cache") == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]  # no TensorRT: nothing to set
    (trt, options), cuda = provider_options(["TensorrtExecutionProvider", "CUDAExecutionProvider"], "/cache", True)
    assert trt == "TensorrtExecutionProvider" and cuda == "CUDAExecutionProvider"
    assert options == {"trt_fp16_enable": "True", "trt_engine_cache_enable": "True", "trt_engine_cache_path": "/cache",
                       "trt_timing_cache_enable": "True", "trt_timing_cache_path": "/cache"}


def test_readiness_turns_false_when_the_drain_starts(onnx_files):
    from export.serve import app as serve_app

    from export.serve.repository import ModelRepository, Settings

    repository = ModelRepository.from_files([onnx_files["lenet_bn"]], Settings(["CPUExecutionProvider"], 1))
    application = serve_app.create_app(repository)
    application.state.ready = True
    server = serve_app.DrainingServer(uvicorn.Config(application), application)
    server.handle_exit(signal.SIGTERM, None)
    assert application.state.ready is False and server.should_exit


def _serve_cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "export.serve", *args, "--port", str(free_port()),
                           "--grpc-port", str(free_port())], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_command_line_errors(onnx_files, tmp_path):
    missing = _serve_cli(str(tmp_path / "nothing.onnx"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr

    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    broken = _serve_cli(str(not_onnx))
    assert broken.returncode == 2 and "onnxruntime cannot load it" in broken.stderr

    (tmp_path / "copy").mkdir()
    twin = tmp_path / "copy" / "lenet_bn.onnx"
    twin.write_bytes(open(onnx_files["lenet_bn"], "rb").read())
    clash = _serve_cli(onnx_files["lenet_bn"], str(twin))
    assert clash.returncode == 2 and "both be served as 'lenet_bn'" in clash.stderr

    provider = _serve_cli(onnx_files["lenet_bn"], "--providers", "quantum")
    assert provider.returncode == 2 and "'quantum' is not a provider" in provider.stderr

    batch = _serve_cli(onnx_files["lenet_bn"], "--max-batch", "0")
    assert batch.returncode == 2 and "--max-batch" in batch.stderr

    with socket.socket() as taken:  # a port another process listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([sys.executable, "-m", "export.serve", onnx_files["lenet_bn"], "--port",
                               str(free_port()), "--grpc-port", str(port)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                              capture_output=True, text=True, timeout=120)
    assert busy.returncode == 2 and f"--grpc-port {port}: cannot listen" in busy.stderr, busy.stderr
    assert "Traceback" not in busy.stderr

    mislabelled = tmp_path / "mislabelled.onnx"
    proto = onnx.load(onnx_files["lenet_bn"])
    onnx.helper.set_model_props(proto, {"labels": json.dumps(["shirt", "shoe"])})
    onnx.save(proto, str(mislabelled))
    labels = _serve_cli(str(mislabelled))
    assert labels.returncode == 2 and "names 2 classes, but output 'logits' has 10" in labels.stderr


def test_server_needs_neither_torch_nor_pycnn(onnx_files, tmp_path, direct):
    """A serving host needs onnxruntime, the web stack, numpy and Pillow: with
    torch and pycnn unimportable the server starts, infers and classifies, with
    the labels the model file carries; a model without labels classifies too."""
    unlabelled = tmp_path / "unlabelled.onnx"
    proto = onnx.load(onnx_files["lenet_bn"])
    del proto.metadata_props[:]
    onnx.save(proto, str(unlabelled))
    server = Server(str(tmp_path), onnx_files["lenet_bn"], str(unlabelled), "--threads", "1", without_torch=True)
    try:
        assert server.client.get("/v2").json()["version"] == importlib.metadata.version("pycnn")
        x = random_input(3, seed=4)
        np.testing.assert_allclose(logits_of(server.client.post(INFER, json=infer_body(x))),
                                   direct["lenet_bn"](x), rtol=1e-5, atol=1e-6)
        image = png_bytes(np.random.default_rng(5).integers(0, 256, (28, 28), dtype=np.uint8))
        expected = softmax(direct["lenet_bn"](image_to_input(image, (28, 28))).astype(np.float64))[0]
        for name, labels in (("lenet_bn", CLASSES), ("unlabelled", None)):
            response = server.client.post(f"/v2/models/{name}/classify", params={"top_k": 10}, content=image)
            assert response.status_code == 200, response.text
            predictions = response.json()["predictions"]
            assert [p["index"] for p in predictions] == list(np.argsort(-expected, kind="stable"))
            assert [p["label"] for p in predictions] == [labels[p["index"]] if labels else None for p in predictions]
            np.testing.assert_allclose([p["probability"] for p in predictions],
                                       expected[[p["index"] for p in predictions]], rtol=1e-5, atol=1e-6)
    finally:
        server.stop()
    assert "Application shutdown complete" in server.output() and "Traceback" not in server.output()


def _loadtest(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "export.serve.loadtest", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _table(stdout):
    """The load test's rows: concurrency -> {column: value}."""
    lines = stdout.splitlines()
    header = re.split(r"\s{2,}", lines[1].strip())
    rows = [dict(zip(header, line.split())) for line in lines[2:] if line.strip()[:1].isdigit()]
    return {int(row["concurrency"]): row for row in rows}


@NEEDS_DATA
@pytest.mark.parametrize("transport", ["json", "binary", "grpc"])
def test_loadtest_cli(server, transport):
    options = {"json": [], "binary": ["--binary"], "grpc": ["--grpc", f"127.0.0.1:{server.grpc_port}"]}[transport]
    result = _loadtest("--url", f"{server.url}/v2/models/lenet_bn", "--concurrency", "1,4", "--requests", "40",
                       "--rows", "2", "--warmup", "4", *options)
    assert result.returncode == 0, result.stdout + result.stderr
    table = _table(result.stdout)
    assert sorted(table) == [1, 4]
    for row in table.values():
        assert row["errors"] == "0"
        assert float(row["images/s"]) == pytest.approx(2 * float(row["requests/s"]), rel=0.01)
        assert 0 < float(row["p50 ms"]) <= float(row["p99 ms"]) <= float(row["max ms"])
        assert float(row["rows/run"]) >= 2


def test_short_soak_has_no_errors_and_bounded_memory(server):
    """The soak of BENCHMARKS.md (60 s at concurrency 64, RSS growth under 50 MB), shortened to 4 s."""
    result = _loadtest("--url", f"{server.url}/v2/models/lenet_bn", "--concurrency", "64", "--duration", "4",
                       "--binary", "--warmup", "64", "--max-rss-growth-mb", "50")
    assert result.returncode == 0, result.stdout + result.stderr
    row = _table(result.stdout)[64]
    assert row["errors"] == "0" and float(row["rss MB"]) > 0 and float(row["requests/s"]) > 0


def test_loadtest_counts_failures(server):
    """Requests the server refuses are errors, and the exit status says so."""
    result = _loadtest("--url", f"{server.url}/v2/models/lenet_fixed", "--concurrency", "2", "--requests", "6",
                       "--warmup", "0")
    assert result.returncode == 1
    assert _table(result.stdout)[2]["errors"] == "6"
    assert "does not match the model's [2, 1, 28, 28]" in result.stderr
