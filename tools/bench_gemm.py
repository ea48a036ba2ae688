"""GFLOP/s of the three CPU GEMMs corr2d could use, on the same products.

    python tools/bench_gemm.py                       # pycnn's GEMM in the pycnn column
    PYCNN_CPU_GEMM=aten python tools/bench_gemm.py   # ATen's in the pycnn column, to compare

A 1x1 convolution of one sample (stride 1, no padding) is a single GEMM
[O, C] @ [C, H*W] in each library: pycnn.corr2d (pycnn's GEMM, csrc/cpu/gemm.cpp,
or ATen's with PYCNN_CPU_GEMM=aten), torch.mm (ATen's BLAS: MKL on x86) and
F.conv2d (oneDNN). Best of five loops of --calls calls each; one Markdown row
per product.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pycnn  # noqa: E402,F401  (registers torch.ops.pycnn)

PRODUCTS = [(1024, 1024, 32), (128, 256, 28), (64, 128, 56)]  # (O, C, H = W)


def best_seconds(f, calls):
    for _ in range(3):
        f()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            f()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gemm = "ATen's" if os.environ.get("PYCNN_CPU_GEMM") == "aten" else "pycnn's"
    print(f"{torch.get_num_threads()} threads; pycnn.corr2d on {gemm} GEMM\n")
    print("| GEMM [O, C] @ [C, H*W] | pycnn.corr2d GFLOP/s | torch.mm GFLOP/s | F.conv2d GFLOP/s |")
    print("|---|---:|---:|---:|")
    for out_channels, channels, side in PRODUCTS:
        x = torch.randn(1, channels, side, side)
        w = torch.randn(out_channels, channels, 1, 1)
        flop = 2 * out_channels * channels * side * side
        ours = best_seconds(lambda: torch.ops.pycnn.corr2d(x, w, None, [1, 1], [0, 0], [1, 1], 1), args.calls)
        mm = best_seconds(lambda: torch.mm(w.view(out_channels, channels), x.view(channels, side * side)), args.calls)
        dnn = best_seconds(lambda: F.conv2d(x, w), args.calls)
        print(f"| [{out_channels}, {channels}] @ [{channels}, {side * side}] | {flop / ours / 1e9:.0f} | "
              f"{flop / mm / 1e9:.0f} | {flop / dnn / 1e9:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
