"""The model server: exported ONNX models over the KServe v2 / Triton protocol.

    python -m export.serve exports/lenet_bn.onnx [more.onnx ...]    # the server (app.py)
    python -m export.serve.loadtest --url http://127.0.0.1:8000/v2/models/lenet_bn

app.py           the HTTP application (FastAPI), its metrics and the command line
grpc_service.py  the same over gRPC (Triton's GRPCInferenceService)
repository.py    the models served, by name and version: files or a Triton repository, load/unload
models.py        one ONNX file in an onnxruntime session, with its metadata and labels
protocol.py      the KServe v2 protocol: tensor metadata, infer requests (JSON and
                 Triton's binary tensors), responses, classification
batching.py      dynamic batching with a bounded queue: concurrent requests in one run
statistics.py    Triton's statistics extension
image.py         classify's preprocessing: an image file -> the model's input
ui/              the page at / (static HTML, CSS, JavaScript, sample images)
loadtest.py      a bounded load test of a KServe v2 endpoint (a client; it may use torch)

Serving is an application, not an exporter: a serving host needs only
onnxruntime, the web stack, gRPC, numpy and Pillow. Nothing the server runs
imports torch or pycnn (a test starts it with both unimportable).
"""
