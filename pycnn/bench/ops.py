"""Forward+backward time of each pycnn operator against the native one, on the
layer shapes of the classic models (LeNet, AlexNet, VGG-11/4, NiN, GoogLeNet,
ResNet-18, DenseNet at their Fashion-MNIST input sizes).

Both run in the same process on the same tensors; each repetition times
pycnn and native back to back (alternating which goes first), and the table
reports medians. Ratio = pycnn / native: below 1 pycnn is faster. For pooling
and batch-norm it also reports the achieved memory bandwidth: the bytes the
forward and backward must move at the least (each tensor read or written
once), over the time; on CUDA as a fraction of a device-to-device copy's
bandwidth measured in the same run.
"""
import math
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

import pycnn.functional as P

# Targets from the kernels issue: geometric-mean ratio pycnn/native at most this.
TARGETS = {"cpu": {"corr2d": 1.5, "pooling": 1.2, "batch_norm": 1.2},
           "cuda": {"corr2d": 2.0, "pooling": 1.2, "batch_norm": 1.2}}


@dataclass
class Case:
    family: str  # corr2d, pooling or batch_norm
    name: str  # which layer of which model
    shape: tuple  # input shape without the batch
    make: Callable  # (batch, device, dtype, memory_format) -> (inputs, run_pycnn, run_native, bytes moved)


def _input(batch, shape, device, dtype, memory_format):
    """The layer's input, a leaf that requires grad; 4-D ones in memory_format."""
    x = torch.randn(batch, *shape, device=device, dtype=dtype)
    if x.dim() == 4:
        x = x.contiguous(memory_format=memory_format)
    return x.requires_grad_()


def _conv_case(name, c, h, w, out, k, stride=1, padding=0, groups=1):
    def make(batch, device, dtype, memory_format):
        x = _input(batch, (c, h, w), device, dtype, memory_format)
        weight = torch.randn(out, c // groups, k, k, device=device, dtype=dtype) * (1.0 / math.sqrt(c * k * k))
        weight.requires_grad_()
        bias = torch.randn(out, device=device, dtype=dtype, requires_grad=True)
        args = (stride, padding, 1, groups)
        return (x, weight, bias), (lambda: P.conv2d(x, weight, bias, *args)), (lambda: F.conv2d(x, weight, bias, *args)), None

    return Case("corr2d", name, (c, h, w), make)


def _pool_case(name, c, h, w, kind, **kwargs):
    functions = {"max": (P.max_pool2d, F.max_pool2d), "avg": (P.avg_pool2d, F.avg_pool2d),
                 "gap": (P.adaptive_avg_pool2d, F.adaptive_avg_pool2d)}
    ours, native = functions[kind]

    def make(batch, device, dtype, memory_format):
        x = _input(batch, (c, h, w), device, dtype, memory_format)
        out = native(x.detach(), **kwargs)
        size = x.element_size()
        # forward: read x, write out (+ int64 indices); backward: read grad_out (+ indices), write grad_x
        index_bytes = 2 * out.numel() * 8 if kind == "max" else 0
        moved = 2 * x.numel() * size + 2 * out.numel() * size + index_bytes
        return (x,), (lambda: ours(x, **kwargs)), (lambda: native(x, **kwargs)), moved

    return Case("pooling", name, (c, h, w), make)


def _bn_case(name, shape):
    def make(batch, device, dtype, memory_format):
        x = _input(batch, shape, device, dtype, memory_format)
        c = shape[0]
        weight = torch.rand(c, device=device, dtype=dtype, requires_grad=True)
        bias = torch.randn(c, device=device, dtype=dtype, requires_grad=True)
        stats = [torch.zeros(c, device=device, dtype=dtype), torch.ones(c, device=device, dtype=dtype)]
        native_stats = [s.clone() for s in stats]
        # forward: read x twice (statistics, normalise), write y; backward: read x and dy twice, write dx
        moved = 6 * x.numel() * x.element_size()
        return ((x, weight, bias),
                lambda: P.batch_norm(x, *stats, weight, bias, training=True),
                lambda: F.batch_norm(x, *native_stats, weight, bias, training=True),
                moved)

    return Case("batch_norm", name, shape, make)


CASES: List[Case] = [
    _conv_case("lenet conv1 5x5 p2", 1, 28, 28, 6, 5, padding=2),
    _conv_case("lenet conv2 5x5", 6, 14, 14, 16, 5),
    _conv_case("alexnet conv1 11x11 s4", 1, 224, 224, 96, 11, stride=4, padding=1),
    _conv_case("alexnet conv2 5x5", 96, 26, 26, 256, 5, padding=2),
    _conv_case("alexnet conv3 3x3", 256, 12, 12, 384, 3, padding=1),
    _conv_case("vgg11/4 block2 3x3", 16, 112, 112, 32, 3, padding=1),
    _conv_case("nin block1 1x1", 96, 54, 54, 96, 1),
    _conv_case("googlenet b2 3x3", 64, 24, 24, 192, 3, padding=1),
    _conv_case("googlenet inception 1x1", 192, 12, 12, 64, 1),
    _conv_case("googlenet inception 5x5", 16, 12, 12, 32, 5, padding=2),
    _conv_case("resnet18 b3 3x3 s2", 64, 24, 24, 128, 3, stride=2, padding=1),
    _conv_case("resnet18 b3 shortcut 1x1 s2", 64, 24, 24, 128, 1, stride=2),
    _conv_case("resnet18 b5 3x3", 512, 3, 3, 512, 3, padding=1),
    _conv_case("densenet conv block 3x3", 128, 12, 12, 32, 3, padding=1),
    _pool_case("lenet avg 2x2", 6, 28, 28, "avg", kernel_size=2, stride=2),
    _pool_case("alexnet max 3x3 s2", 96, 54, 54, "max", kernel_size=3, stride=2),
    _pool_case("resnet18 b1 max 3x3 s2 p1", 64, 48, 48, "max", kernel_size=3, stride=2, padding=1),
    _pool_case("vgg11/4 max 2x2", 16, 224, 224, "max", kernel_size=2, stride=2),
    _pool_case("googlenet inception max 3x3 s1 p1", 192, 12, 12, "max", kernel_size=3, stride=1, padding=1),
    _pool_case("densenet transition avg 2x2", 96, 24, 24, "avg", kernel_size=2, stride=2),
    _pool_case("resnet18 global avg", 512, 3, 3, "gap", output_size=1),
    _pool_case("nin global avg", 10, 5, 5, "gap", output_size=1),
    _bn_case("lenet_bn conv1 BN(6)", (6, 24, 24)),
    _bn_case("lenet_bn fc BN1d(120)", (120,)),
    _bn_case("resnet18 b1 BN(64)", (64, 48, 48)),
    _bn_case("resnet18 b3 BN(128)", (128, 12, 12)),
    _bn_case("resnet18 b5 BN(512)", (512, 3, 3)),
    _bn_case("densenet BN(192)", (192, 24, 24)),
]


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(run, inputs):
    """One forward+backward; gradients of every input that requires them."""
    out = run()
    out.backward(torch.ones_like(out))
    for t in inputs:
        t.grad = None


def _time(run, inputs, device):
    _synchronize(device)
    start = time.perf_counter()
    _step(run, inputs)
    _synchronize(device)
    return time.perf_counter() - start


def measure(case: Case, batch: int, device, dtype, repeats: int, warmup: int = 3,
            memory_format=torch.contiguous_format) -> Dict:
    inputs, ours, native, moved = case.make(batch, device, dtype, memory_format)
    for _ in range(warmup):
        _step(ours, inputs)
        _step(native, inputs)
    ours_times, native_times = [], []
    for r in range(repeats):
        # Alternate the order so neither always runs on a warmer cache.
        if r % 2 == 0:
            ours_times.append(_time(ours, inputs, device))
            native_times.append(_time(native, inputs, device))
        else:
            native_times.append(_time(native, inputs, device))
            ours_times.append(_time(ours, inputs, device))
    ours_s, native_s = statistics.median(ours_times), statistics.median(native_times)
    return {"case": case, "pycnn_ms": ours_s * 1e3, "native_ms": native_s * 1e3, "ratio": ours_s / native_s,
            "pycnn_gbs": moved / ours_s / 1e9 if moved else None,
            "native_gbs": moved / native_s / 1e9 if moved else None}


def copy_bandwidth(device, nbytes=1 << 30, repeats=10):
    """Bytes read plus written per second by a large device-to-device copy."""
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times) / 1e9


def geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def add_arguments(parser):
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 16 on CPU, 128 on CUDA)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default: 15 CPU, 50 CUDA)")
    parser.add_argument("--dtype", choices=["float32", "float64", "float16", "bfloat16"], default="float32")
    parser.add_argument("--only", choices=["corr2d", "pooling", "batch_norm"], default=None)
    parser.add_argument("--channels-last", action="store_true",
                        help="4-D inputs in channels_last memory format (both libraries)")


def describe_machine(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def run(args):
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    batch = args.batch or (128 if device.type == "cuda" else 16)
    repeats = args.repeats or (50 if device.type == "cuda" else 15)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    layout = ", channels_last" if args.channels_last else ""
    print(f"# pycnn.bench ops: {describe_machine(device)}; batch {batch}, {args.dtype}{layout}, median of {repeats}")
    peak = copy_bandwidth(device) if device.type == "cuda" else None
    if peak:
        print(f"# device-to-device copy bandwidth (read + write): {peak:.0f} GB/s")
    print()
    print("| family | layer | input (C, H, W) | pycnn ms | native ms | ratio | pycnn GB/s | native GB/s |"
          + (" pycnn % of copy |" if peak else ""))
    print("|---|---|---|---:|---:|---:|---:|---:|" + ("---:|" if peak else ""))
    results = []
    for case in CASES:
        if args.only and case.family != args.only:
            continue
        r = measure(case, batch, device, dtype, repeats, memory_format=memory_format)
        results.append(r)
        gbs = lambda v: f"{v:.1f}" if v is not None else "–"  # noqa: E731
        row = (f"| {case.family} | {case.name} | {case.shape} | {r['pycnn_ms']:.3f} | {r['native_ms']:.3f} | "
               f"{r['ratio']:.2f} | {gbs(r['pycnn_gbs'])} | {gbs(r['native_gbs'])} |")
        if peak:
            row += f" {100 * r['pycnn_gbs'] / peak:.0f}% |" if r["pycnn_gbs"] else " – |"
        print(row, flush=True)
    print()
    print("| family | geometric-mean ratio pycnn/native | target | met |")
    print("|---|---:|---:|---|")
    all_met = True
    for family, target in TARGETS[device.type].items():
        ratios = [r["ratio"] for r in results if r["case"].family == family]
        if not ratios:
            continue
        mean = geometric_mean(ratios)
        met = mean <= target
        all_met &= met
        print(f"| {family} | {mean:.2f} | ≤ {target} | {'yes' if met else 'NO'} |")
    return 0
