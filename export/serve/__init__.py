"""The model server: exported ONNX models over the KServe v2 / Triton protocol.

    python -m export.serve exports/lenet_bn.onnx [more.onnx ...]    # the server (app.py)
    python -m export.serve.loadtest --url http://127.0.0.1:8000/v2/models/lenet_bn

app.py        the FastAPI application, its metrics and the command line
protocol.py   the KServe v2 protocol: tensor metadata, infer requests (JSON and
              Triton's binary tensors) and responses
batching.py   dynamic batching: concurrent requests gathered into one run
image.py      classify's preprocessing: an image file -> the model's input
loadtest.py   a bounded load test of a KServe v2 endpoint (a client; it may use torch)

Serving is an application, not an exporter: a serving host needs only
onnxruntime, the web stack, numpy and Pillow. Nothing in app.py, protocol.py,
batching.py or image.py imports torch or pycnn.
"""
