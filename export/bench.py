"""Inference speed of each model in every form pycnn exports it to, side by side.

    python -m export.bench [--models lenet,resnet18] [--device cpu|cuda] [--repeats R]

For each model (untrained weights: speed does not depend on them), in one
process and with interleaved runs, it times PyTorch eager on pycnn's kernels,
PyTorch eager on the native twin (same weights), the TorchScript module
(pycnn operators) and the ONNX file in onnxruntime (standard operators; the
CUDA provider on a GPU). It reports the median latency of a batch of 1 and
the throughput (images/s) at batch 64.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

import pycnn.models
from export import onnx as onnx_export
from export._common import quiet_exporter_logs
from export.torchscript import export_torchscript

LATENCY_BATCH = 1
THROUGHPUT_BATCH = 64


def _runners(name, device, workdir):
    """name -> callable(x) for each form of the model, all with the same weights."""
    import onnxruntime

    model = pycnn.models.create(name).eval().to(device)
    native = pycnn.models.create(name, backend="native").eval().to(device)
    native.load_state_dict(model.state_dict())
    scripted = export_torchscript(model, os.path.join(workdir, f"{name}.pt"))
    onnx_path = os.path.join(workdir, f"{name}.onnx")
    onnx_export.export_onnx(model.cpu(), onnx_path)
    model.to(device)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(onnx_path, options, providers=onnx_export.providers())

    def run_onnx(x):
        return session.run([onnx_export.OUTPUT_NAME], {onnx_export.INPUT_NAME: x.cpu().numpy()})[0]

    return {"pycnn eager": model, "native eager": native, "TorchScript": scripted, "onnxruntime": run_onnx}


def _time(run, x, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(name, device, repeats, workdir):
    runners = _runners(name, device, workdir)
    size = pycnn.models.create(name).default_input_size
    results = {}
    for batch in (LATENCY_BATCH, THROUGHPUT_BATCH):
        x = torch.rand(batch, *size, device=device)
        times = {form: [] for form in runners}
        with torch.no_grad():
            for run in runners.values():  # warm-up (graph optimisation, allocations)
                run(x)
                run(x)
            for r in range(repeats):
                forms = list(runners) if r % 2 == 0 else list(reversed(runners))
                for form in forms:
                    times[form].append(_time(runners[form], x, device))
        results[batch] = {form: statistics.median(t) for form, t in times.items()}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(pycnn.models.list_models()))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    names = args.models.split(",")
    quiet_exporter_logs()
    forms = ["pycnn eager", "native eager", "TorchScript", "onnxruntime"]
    print(f"# export.bench: {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}; latency at batch {LATENCY_BATCH}, throughput at batch {THROUGHPUT_BATCH}")
    print()
    print("| model | " + " | ".join(f"{f} ms (b{LATENCY_BATCH})" for f in forms) + " | "
          + " | ".join(f"{f} img/s (b{THROUGHPUT_BATCH})" for f in forms) + " |")
    print("|---|" + "---:|" * (2 * len(forms)))
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            r = measure(name, device, args.repeats, workdir)
            latency = " | ".join(f"{1e3 * r[LATENCY_BATCH][f]:.2f}" for f in forms)
            throughput = " | ".join(f"{THROUGHPUT_BATCH / r[THROUGHPUT_BATCH][f]:,.0f}" for f in forms)
            print(f"| {name} | {latency} | {throughput} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
