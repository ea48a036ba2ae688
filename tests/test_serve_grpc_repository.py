"""export.serve over gRPC (Triton's own tritonclient.grpc against the real
server) and with a Triton model repository (written by export.onnx's
repository writer): the endpoints over both transports, one set of statistics
for both, load/unload and Triton's version policy, label files, and bad
repositories refused with their reason."""
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

import onnxruntime  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import pycnn.models  # noqa: E402
from export import onnx as onnx_export  # noqa: E402
from pycnn.data import CLASSES  # noqa: E402
from test_serve import (INFER, Server, direct, expected_classification, infer_body, onnx_files,  # noqa: E402,F401
                        random_input)  # (direct, onnx_files: fixtures)


def grpc_client(server):
    return grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")


def grpc_infer(client, name, x, version="", **output_options):
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(name, [tensor], model_version=version,
                        outputs=[grpcclient.InferRequestedOutput("logits", **output_options)])


def run_direct(path, x):
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]


# --- gRPC beside HTTP -----------------------------------------------------------

def test_grpc_endpoints_answer_as_http_does(onnx_files, tmp_path, direct):
    server = Server(str(tmp_path), onnx_files["lenet_bn"], onnx_files["lenet_fixed"], "--max-batch", "16")
    client = grpc_client(server)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("lenet_bn") and client.is_model_ready("lenet_bn", "1")
        metadata = client.get_server_metadata(as_json=True)
        assert metadata["name"] == "pycnn" and {"statistics", "classification", "model_repository"} <= set(
            metadata["extensions"])
        model = client.get_model_metadata("lenet_bn", as_json=True)
        assert model["inputs"][0]["shape"] == ["-1", "1", "28", "28"] and model["versions"] == ["1"]
        config = client.get_model_config("lenet_bn", as_json=True)["config"]
        assert config["max_batch_size"] == 16 and config["input"][0]["dims"] == ["1", "28", "28"]

        x = random_input(5, seed=21)
        np.testing.assert_allclose(grpc_infer(client, "lenet_bn", x).as_numpy("logits"), direct["lenet_bn"](x),
                                   rtol=1e-5, atol=1e-5)
        classes = grpc_infer(client, "lenet_bn", x, class_count=3).as_numpy("logits")
        assert [[v.decode() for v in row] for row in classes.tolist()] == expected_classification(
            direct["lenet_bn"](x), 3)

        # One set of statistics for both transports.
        http_before = server.client.get("/v2/models/lenet_bn/stats").json()["model_stats"][0]
        grpc_infer(client, "lenet_bn", x)
        http_after = server.client.get("/v2/models/lenet_bn/stats").json()["model_stats"][0]
        assert http_after["inference_count"] - http_before["inference_count"] == 5
        stats = client.get_inference_statistics("lenet_bn", as_json=True)["model_stats"][0]
        assert int(stats["inference_count"]) == http_after["inference_count"]
        assert len(client.get_inference_statistics(as_json=True)["model_stats"]) == 2

        # Errors: the HTTP message, as the matching gRPC status.
        with pytest.raises(InferenceServerException, match="unknown model 'vgg99'") as unknown:
            client.get_model_metadata("vgg99")
        assert unknown.value.status() == "StatusCode.NOT_FOUND"
        wrong = random_input(2, seed=1)[:, :, :27, :]
        http_message = server.client.post(INFER, json=infer_body(wrong)).json()["error"]
        with pytest.raises(InferenceServerException) as bad:
            grpc_infer(client, "lenet_bn", wrong)
        assert bad.value.status() == "StatusCode.INVALID_ARGUMENT" and http_message in bad.value.message()
        with pytest.raises(InferenceServerException, match="needs a model repository"):
            client.load_model("lenet_bn")
    finally:
        client.close()
        server.stop()


# --- a Triton model repository ----------------------------------------------------

def _export(path, seed):
    torch.manual_seed(seed)
    onnx_export.export_onnx(pycnn.models.create("lenet_bn").eval(), path, labels=CLASSES)
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """lenet_bn with versions 1 and 2 (default policy: the newest), lenet_all
    (policy all, versions 1 and 2) and lenet_pick (policy specific: 1 of 1, 2, 3)."""
    root = tmp_path_factory.mktemp("repo")
    exports = tmp_path_factory.mktemp("repo-exports")
    files = {seed: _export(str(exports / f"v{seed}.onnx"), seed) for seed in (1, 2, 3)}
    policies = {"lenet_bn": "", "lenet_all": "version_policy: { all { } }\n",
                "lenet_pick": "version_policy: { specific { versions: [ 1 ] } }\n"}
    for name, policy in policies.items():
        onnx_export.write_triton_repo(str(root), name, files[1], (1, 28, 28), 10, None, CLASSES)
        versions = (2, 3) if name == "lenet_pick" else (2,)
        for version in versions:
            os.makedirs(root / name / str(version))
            shutil.copyfile(files[version], root / name / str(version) / "model.onnx")
        with open(root / name / "config.pbtxt", "a") as f:
            f.write(policy)
    return root, files


def test_repository_version_policy_load_and_unload(repository, tmp_path):
    root, files = repository
    server = Server(str(tmp_path), "--model-repository", str(root))
    client = grpc_client(server)
    http = server.client
    try:
        index = {(m["name"], m["version"]): m["state"] for m in http.post("/v2/repository/index").json()}
        assert index == {("lenet_all", "1"): "READY", ("lenet_all", "2"): "READY", ("lenet_bn", "2"): "READY",
                         ("lenet_pick", "1"): "READY"}
        assert http.get("/v2/models/lenet_all").json()["versions"] == ["1", "2"]
        x = random_input(3, seed=22)
        for name, version, source in (("lenet_bn", None, 2), ("lenet_all", "1", 1), ("lenet_all", "2", 2),
                                      ("lenet_pick", None, 1)):
            path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
            logits = np.asarray(http.post(path, json=infer_body(x)).json()["outputs"][0]["data"], np.float32)
            np.testing.assert_allclose(logits.reshape(3, 10), run_direct(files[source], x), rtol=1e-5, atol=1e-5)
        assert http.post("/v2/models/lenet_bn/versions/1/infer", json=infer_body(x)).status_code == 404
        # Classification's labels come from the repository's label file.
        classes = grpc_infer(client, "lenet_bn", x, class_count=2).as_numpy("logits")
        assert [[v.decode() for v in row] for row in classes.tolist()] == expected_classification(
            run_direct(files[2], x), 2)

        # Unload: gone from routing at once, UNAVAILABLE in the index; load: back.
        assert http.post("/v2/repository/models/lenet_bn/unload").status_code == 200
        gone = http.post(INFER, json=infer_body(x))
        assert gone.status_code == 404 and "not loaded" in gone.json()["error"]
        index = http.post("/v2/repository/index").json()
        assert {"name": "lenet_bn", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"} in index
        assert all(m["name"] != "lenet_bn" for m in http.post("/v2/repository/index", json={"ready": True}).json())
        client.load_model("lenet_bn")  # over gRPC this time
        assert client.is_model_ready("lenet_bn")

        # A new version on disk is served after a load (the policy: the newest only).
        os.makedirs(root / "lenet_bn" / "3")
        shutil.copyfile(files[3], root / "lenet_bn" / "3" / "model.onnx")
        assert http.post("/v2/repository/models/lenet_bn/load").status_code == 200
        assert http.get("/v2/models/lenet_bn").json()["versions"] == ["3"]
        np.testing.assert_allclose(grpc_infer(client, "lenet_bn", x).as_numpy("logits"), run_direct(files[3], x),
                                   rtol=1e-5, atol=1e-5)
        grpc_index = client.get_model_repository_index(as_json=True)["models"]
        assert {"name": "lenet_bn", "version": "3", "state": "READY"} in [
            {k: m.get(k, "") for k in ("name", "version", "state")} for m in grpc_index]

        # A model that cannot load: 400 with the reason; the versions serving stay.
        (root / "lenet_pick" / "1" / "model.onnx").write_text("not a model")
        failed = http.post("/v2/repository/models/lenet_pick/load")
        assert failed.status_code == 400 and "onnxruntime cannot load it" in failed.json()["error"]
        assert http.post("/v2/models/lenet_pick/infer", json=infer_body(x)).status_code == 200
        assert http.post("/v2/repository/models/vgg99/load").status_code == 404
    finally:
        shutil.rmtree(root / "lenet_bn" / "3", ignore_errors=True)
        shutil.copyfile(files[1], root / "lenet_pick" / "1" / "model.onnx")
        client.close()
        server.stop()


@pytest.mark.parametrize("problem, config, message", [
    ("wrong name", 'name: "other"\nplatform: "onnxruntime_onnx"\n', "names the model 'other'"),
    ("not onnx", 'platform: "tensorflow_savedmodel"\n', "serves ONNX models"),
    ("bad text", "max_batch_size: lots\n", "not a valid Triton model configuration"),
    ("policy", 'platform: "onnxruntime_onnx"\nversion_policy: { specific { versions: [ 7 ] } }\n', "version(s) 7"),
])
def test_bad_repositories_are_refused_with_their_reason(repository, tmp_path, problem, config, message):
    root, files = repository
    bad = tmp_path / "repo"
    (bad / "m" / "1").mkdir(parents=True)
    shutil.copyfile(files[1], bad / "m" / "1" / "model.onnx")
    (bad / "m" / "config.pbtxt").write_text(config)
    from test_serve import _serve_cli

    result = _serve_cli("--model-repository", str(bad))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
