"""A quick check that pycnn's kernels agree with PyTorch's on this machine.

    python -m pycnn.check [--device cpu|cuda|all]

For each operator it runs a few layer shapes of the classic models forward
and backward through pycnn and through torch.nn.functional on the same
inputs, and prints the largest relative difference of the output and of
every gradient; in float64 also of the second derivatives (the gradient of a
squared-gradient penalty) and of the forward-mode tangent (torch.func.jvp).
Exits 1 if any exceeds the tolerance of its dtype. The full verification is
the test suite (python -m pytest tests).
"""
import argparse
import sys

import torch
import torch.nn.functional as F

import pycnn
import pycnn.functional as P

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 1e-2, torch.bfloat16: 5e-2}
# Second derivatives and tangents, float64: products of several rounded sums.
TOLERANCE_HIGHER_ORDER = 1e-9

# (name, make inputs (device, dtype) -> list of tensors, pycnn function, native function)
CASES = [
    ("conv2d 5x5 p2 (LeNet)", lambda d, t: [torch.randn(8, 1, 28, 28, device=d, dtype=t),
                                            torch.randn(6, 1, 5, 5, device=d, dtype=t),
                                            torch.randn(6, device=d, dtype=t)],
     lambda x, w, b: P.conv2d(x, w, b, padding=2), lambda x, w, b: F.conv2d(x, w, b, padding=2)),
    ("conv2d 3x3 s2 groups=2", lambda d, t: [torch.randn(4, 16, 15, 15, device=d, dtype=t),
                                             torch.randn(32, 8, 3, 3, device=d, dtype=t),
                                             torch.randn(32, device=d, dtype=t)],
     lambda x, w, b: P.conv2d(x, w, b, 2, 1, 1, 2), lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 2)),
    ("max_pool2d 3x3 s2 p1", lambda d, t: [torch.randn(4, 16, 24, 24, device=d, dtype=t)],
     lambda x: P.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1)),
    ("avg_pool2d 3x3 s2 ceil", lambda d, t: [torch.randn(4, 16, 13, 13, device=d, dtype=t)],
     lambda x: P.avg_pool2d(x, 3, 2, 1, True, False), lambda x: F.avg_pool2d(x, 3, 2, 1, True, False)),
    ("adaptive_avg_pool2d 1x1 (GAP)", lambda d, t: [torch.randn(4, 64, 7, 7, device=d, dtype=t)],
     lambda x: P.adaptive_avg_pool2d(x, 1), lambda x: F.adaptive_avg_pool2d(x, 1)),
    ("batch_norm training (N,C,H,W)", lambda d, t: [torch.randn(8, 16, 12, 12, device=d, dtype=t),
                                                    torch.rand(16, device=d, dtype=t),
                                                    torch.randn(16, device=d, dtype=t)],
     lambda x, w, b: P.batch_norm(x, None, None, w, b, True), lambda x, w, b: F.batch_norm(x, None, None, w, b, True)),
]


def relative_difference(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check_case(make, ours, native, device, dtype):
    """Largest relative difference over the output and every input gradient."""
    torch.manual_seed(0)
    inputs = make(device, dtype)
    ours_inputs = [t.clone().requires_grad_() for t in inputs]
    native_inputs = [t.clone().requires_grad_() for t in inputs]
    ours_out, native_out = ours(*ours_inputs), native(*native_inputs)
    grad = torch.randn_like(native_out)
    ours_out.backward(grad)
    native_out.backward(grad)
    diffs = [relative_difference(ours_out, native_out)]
    diffs += [relative_difference(a.grad, b.grad) for a, b in zip(ours_inputs, native_inputs)]
    return max(diffs)


def check_higher_order(make, ours, native, device):
    """Largest relative difference of the double backward and of the jvp (float64)."""
    torch.manual_seed(0)
    inputs = make(device, torch.float64)
    tangents = [torch.randn_like(t) for t in inputs]
    results = []
    for fn in (ours, native):
        leaves = [t.clone().requires_grad_() for t in inputs]
        first = torch.autograd.grad((fn(*leaves) ** 2).sum(), leaves, create_graph=True)
        second = torch.autograd.grad(sum((g**2).sum() for g in first), leaves)
        _, tangent = torch.func.jvp(fn, tuple(inputs), tuple(tangents))
        results.append([*second, tangent])
    return max(relative_difference(a, b) for a, b in zip(*results))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pycnn.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = parser.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if not torch.cuda.is_available():
        if args.device == "cuda":
            raise SystemExit("--device cuda: no CUDA device is available")
        devices = ["cpu"]
    print(f"pycnn {pycnn.__version__} on torch {torch.__version__}; CUDA kernels built: {pycnn.cuda_kernels_built()}")
    print(f"{'operator':34} {'device':6} {'dtype':9} {'max rel. diff':>13}  result")
    failures = 0
    for device in devices:
        for name, make, ours, native in CASES:
            for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
                diff = check_case(make, ours, native, device, dtype)
                ok = diff <= TOLERANCE[dtype]
                failures += not ok
                print(f"{name:34} {device:6} {str(dtype)[6:]:9} {diff:13.2e}  {'ok' if ok else 'MISMATCH'}")
            diff = check_higher_order(make, ours, native, device)
            ok = diff <= TOLERANCE_HIGHER_ORDER
            failures += not ok
            print(f"{'  2nd order + jvp':34} {device:6} {'float64':9} {diff:13.2e}  {'ok' if ok else 'MISMATCH'}")
    if not torch.cuda.is_available():
        print("(no GPU here: the CUDA kernels were not run)")
    print("all operators agree with PyTorch" if failures == 0 else f"{failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
