"""The fixed cost of one call of each operator: forward + backward (and a
no_grad forward) on tiny tensors, where the arithmetic is negligible and what
is left is dispatch, autograd bookkeeping and Python, against native.

Each figure is a low quantile (the 10th percentile) of many single calls, so
that it reads the cost itself rather than the machine's noise, and pycnn's and
native's calls take turns; pin the process to one core (taskset -c 1) for the
steadiest figures.
"""
import statistics
import time

import torch
import torch.nn.functional as F

import pycnn.functional as P


TINY_INPUT = (2, 4, 6, 6)


def _cases():
    """{operator: (family, library -> the call on x)}: every operator of every family, on TINY_INPUT."""
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    wg = torch.randn(4, 1, 3, 3, requires_grad=True)
    bn_weight, bn_bias = torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)
    mean, var = torch.zeros(4), torch.ones(4)
    return {
        "conv2d 3x3": ("corr2d", lambda m: lambda x: m.conv2d(x, w, padding=1)),
        "conv2d 3x3 depthwise": ("corr2d", lambda m: lambda x: m.conv2d(x, wg, padding=1, groups=4)),
        "max_pool2d 2x2": ("pooling", lambda m: lambda x: m.max_pool2d(x, 2)),
        "avg_pool2d 2x2": ("pooling", lambda m: lambda x: m.avg_pool2d(x, 2)),
        "adaptive_avg_pool2d 1x1": ("pooling", lambda m: lambda x: m.adaptive_avg_pool2d(x, 1)),
        "batch_norm training": ("batch_norm",
                                lambda m: lambda x: m.batch_norm(x, None, None, bn_weight, bn_bias, training=True)),
        "batch_norm eval": ("batch_norm",
                            lambda m: lambda x: m.batch_norm(x, mean, var, bn_weight, bn_bias, training=False)),
    }


def _quantile_us(times):
    return statistics.quantiles(times, n=10)[0] * 1e6


def measure(fns, x0, calls, warmup):
    """{name: (fwd+bwd µs, no_grad fwd µs)} of each call in fns, the calls taking turns call by call.

    Taking turns puts pycnn's and native's calls in the same moments of a noisy
    machine (another process, a frequency step), so their difference holds
    still where two blocks of calls one after the other would not.
    """
    step = {name: [] for name in fns}
    forward = {name: [] for name in fns}
    for i in range(calls + warmup):
        for name, fn in fns.items():
            x = x0.clone().requires_grad_()
            start = time.perf_counter()
            fn(x).sum().backward()
            if i >= warmup:
                step[name].append(time.perf_counter() - start)
    with torch.no_grad():
        for i in range(calls + warmup):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(x0)
                if i >= warmup:
                    forward[name].append(time.perf_counter() - start)
    return {name: (_quantile_us(step[name]), _quantile_us(forward[name])) for name in fns}


def add_arguments(parser):
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per operator and library")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")


def print_table(calls, warmup=200, families=None):
    """The table: one row per operator (of `families`, default all), forward+backward and no_grad forward."""
    torch.manual_seed(0)
    x0 = torch.randn(*TINY_INPUT)
    print("| family | operator | pycnn fwd+bwd µs | native fwd+bwd µs | extra µs | pycnn no_grad fwd µs | "
          "native no_grad fwd µs | extra µs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, (family, make) in _cases().items():
        if families and family not in families:
            continue
        times = measure({"pycnn": make(P), "native": make(F)}, x0, calls, warmup=warmup)
        (ours_step, ours_forward), (native_step, native_forward) = times["pycnn"], times["native"]
        print(f"| {family} | {name} | {ours_step:.1f} | {native_step:.1f} | {ours_step - native_step:+.1f} | "
              f"{ours_forward:.1f} | {native_forward:.1f} | {ours_forward - native_forward:+.1f} |", flush=True)


def run(args):
    torch.set_num_threads(args.threads)
    print(f"# pycnn.bench overhead: torch {torch.__version__}, {args.threads} thread(s), input {TINY_INPUT}, "
          f"10th percentile of {args.calls} calls")
    print()
    print_table(args.calls)
    return 0
