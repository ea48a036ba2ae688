"""A torchvision classifier converted to pycnn's kernels (pycnn.convert) against the native model.

    python tools/bench_torchvision.py --model resnet50 --size 224 --batch 8 --repeats 5

Random weights, the same in both (the converted model is a copy). Training step: forward,
cross-entropy, backward, SGD step (lr 0.01), in training mode; inference: eval mode under
torch.no_grad(). Each repetition times the converted and the native model back to back, alternating
which goes first, as pycnn.bench models does; the table gives medians and ratio = pycnn / native
(below 1 pycnn is faster). One Markdown row per model.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pycnn  # noqa: E402
from pycnn.bench.models import _interleaved, _Runner  # noqa: E402
from pycnn.bench.ops import describe_machine  # noqa: E402


def measure(name, size, batch, device, repeats, warmup=1):
    import torchvision

    torch.manual_seed(0)
    native = torchvision.models.get_model(name, weights=None).to(device)
    converted = pycnn.convert(native)
    x = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    ours, theirs = _Runner(converted, x, labels), _Runner(native, x.clone(), labels.clone())
    for _ in range(warmup):
        for runner in (ours, theirs):
            runner.train_step()
            runner.inference()
    train = _interleaved(ours.train_step, theirs.train_step, device, repeats)
    infer = _interleaved(ours.inference, theirs.inference, device, repeats)
    return train, infer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50", help="comma-separated torchvision model names")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"# tools/bench_torchvision.py: {describe_machine(device)}; float32, batch {args.batch}, "
          f"{args.size}x{args.size}, median of {args.repeats}")
    print()
    print("| model | train pycnn ms | train native ms | train ratio | infer pycnn ms | infer native ms | infer ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in [n.strip() for n in args.model.split(",") if n.strip()]:
        (train_ours, train_native), (infer_ours, infer_native) = measure(name, args.size, args.batch, device,
                                                                         args.repeats)
        print(f"| {name} | {train_ours * 1e3:.0f} | {train_native * 1e3:.0f} | {train_ours / train_native:.2f} "
              f"| {infer_ours * 1e3:.0f} | {infer_native * 1e3:.0f} | {infer_ours / infer_native:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
