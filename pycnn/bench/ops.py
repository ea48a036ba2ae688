"""Forward+backward time of each pycnn operator against the native one.

Tables (``--tables``, default all three):

* ``shapes``: every distinct layer geometry of pycnn.models (the eight classic
  models and resnet9), read off the models themselves (each model's default
  input run through it once, with forward hooks on its pycnn.nn layers; VGG-11
  at width_divisor 4, the reference run), plus grouped, depthwise and dilated convolutions and eval-mode
  batch-norm, at each batch of ``--batches`` (default 1, 8 and 64 on the CPU).
  Per family and batch: the geometric-mean ratio and the largest single ratio,
  against the targets.
* ``overhead``: the fixed cost of one call of each operator on tiny tensors,
  forward + backward, against native (pycnn.bench.overhead's cases, fewer calls;
  ``python -m pycnn.bench overhead`` for steadier figures).
* ``scaling``: one representative convolution and one pooling against batch
  size and against map size, with each row's work and time relative to the
  first, so the growth of the cost is visible.

Both libraries run in the same process on the same tensors; each repetition
times pycnn and native back to back (alternating which goes first), and the
tables report medians, of ``--repeats`` repetitions or as many as fit in
``--budget`` seconds per case (at least three). Ratio = pycnn / native: below 1
pycnn is faster. Convolutions of more than ``--max-gmacs`` forward
multiply-accumulates per call are left out (listed under the table), to keep a
default CPU run to a few minutes. For pooling and batch-norm it also reports
the achieved memory bandwidth: the bytes the forward and backward must move at
the least (each tensor read or written once), over the time; on CUDA as a
fraction of a device-to-device copy's bandwidth measured in the same run.
"""
import math
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import pycnn.functional as P

# Targets of the CPU-speed issue (geometric mean per family, largest single shape);
# CUDA: the earlier kernels issue's geometric means, no single-shape target.
TARGETS = {"cpu": {"corr2d": (1.0, 1.5), "pooling": (1.0, 1.5), "batch_norm": (1.0, 1.5)},
           "cuda": {"corr2d": (2.0, None), "pooling": (1.2, None), "batch_norm": (1.2, None)}}
FAMILIES = ("corr2d", "pooling", "batch_norm")
TABLES = ("shapes", "overhead", "scaling")


@dataclass
class Case:
    family: str  # corr2d, pooling or batch_norm
    name: str  # which layer of which model
    shape: tuple  # input shape without the batch
    make: Callable  # (batch, device, dtype, memory_format) -> (inputs, run_pycnn, run_native, bytes moved)
    macs: int = 0  # forward multiply-accumulates per sample (convolutions)
    min_batch: int = 1  # batch-norm in training needs more than one value per channel


def _input(batch, shape, device, dtype, memory_format):
    """The layer's input, a leaf that requires grad; 4-D ones in memory_format."""
    x = torch.randn(batch, *shape, device=device, dtype=dtype)
    if x.dim() == 4:
        x = x.contiguous(memory_format=memory_format)
    return x.requires_grad_()


def _out_size(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _conv_case(name, c, h, w, out, k, stride=1, padding=0, groups=1, dilation=1, bias=True):
    kh, kw = (k, k) if isinstance(k, int) else k
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    macs = out * _out_size(h, kh, sh, ph, dh) * _out_size(w, kw, sw, pw, dw) * (c // groups) * kh * kw

    def make(batch, device, dtype, memory_format):
        x = _input(batch, (c, h, w), device, dtype, memory_format)
        weight = torch.randn(out, c // groups, kh, kw, device=device, dtype=dtype) * (1.0 / math.sqrt(c * kh * kw))
        weight.requires_grad_()
        b = torch.randn(out, device=device, dtype=dtype, requires_grad=True) if bias else None
        args = ((sh, sw), (ph, pw), (dh, dw), groups)
        leaves = (x, weight) + ((b,) if bias else ())
        return leaves, (lambda: P.conv2d(x, weight, b, *args)), (lambda: F.conv2d(x, weight, b, *args)), None

    return Case("corr2d", name, (c, h, w), make, macs)


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


def _bn_case(name, shape, training=True):
    def make(batch, device, dtype, memory_format):
        x = _input(batch, shape, device, dtype, memory_format)
        c = shape[0]
        weight = torch.rand(c, device=device, dtype=dtype, requires_grad=True)
        bias = torch.randn(c, device=device, dtype=dtype, requires_grad=True)
        stats = [torch.randn(c, device=device, dtype=dtype) * 0.1, torch.rand(c, device=device, dtype=dtype) + 0.5]
        native_stats = [s.clone() for s in stats]
        # training: read x twice (statistics, normalise), write y; backward: read x and dy twice, write dx.
        # eval: read x, write y; backward: read dy, write dx.
        moved = (6 if training else 4) * x.numel() * x.element_size()
        return ((x, weight, bias),
                lambda: P.batch_norm(x, *stats, weight, bias, training=training),
                lambda: F.batch_norm(x, *native_stats, weight, bias, training=training),
                moved)

    values = math.prod(shape[1:])
    return Case("batch_norm", name, shape, make, min_batch=2 if training and values < 2 else 1)


# --- the shapes of the models, read off the models ---------------------------------------------


def _geometry(text, values, default):
    values = tuple(values)
    if all(v == default for v in values):
        return ""
    return f" {text}{values[0]}" if len(set(values)) == 1 else f" {text}{values[0]}x{values[1]}"


def _layer_case(model: str, qualname: str, module, shape) -> Tuple[tuple, Callable[[str], Case]]:
    """(geometry key, name -> Case) of one pycnn.nn layer called on an input of `shape` (no batch)."""
    import pycnn.nn as pnn

    where = f"{model} {qualname}"
    if isinstance(module, pnn.Conv2d):
        c, h, w = shape
        if module._pre_pad:  # padding modes and 'same': the input is padded first; bench the convolution
            pad = module._reversed_padding_repeated_twice
            h, w, padding = h + pad[2] + pad[3], w + pad[0] + pad[1], (0, 0)
        else:
            padding = tuple(module._corr2d_padding)
        k, stride, dilation = tuple(module.kernel_size), tuple(module.stride), tuple(module.dilation)
        groups, out, bias = module.groups, module.out_channels, module.bias is not None
        key = ("corr2d", (c, h, w), out, k, stride, padding, dilation, groups, bias)
        text = (f"{k[0]}x{k[1]}{_geometry('s', stride, 1)}{_geometry('p', padding, 0)}"
                f"{_geometry('d', dilation, 1)}{' g' + str(groups) if groups > 1 else ''} {c}→{out}")
        return key, lambda extra: _conv_case(f"{where} {text}{extra}", c, h, w, out, k, stride, padding, groups,
                                             dilation, bias)
    if isinstance(module, pnn.MaxPool2d):
        kw = dict(kernel_size=tuple(module._kernel), stride=tuple(module._stride), padding=tuple(module._padding),
                  dilation=tuple(module._dilation), ceil_mode=bool(module.ceil_mode))
        kind, text = "max", f"max {kw['kernel_size'][0]}x{kw['kernel_size'][1]}"
    elif isinstance(module, pnn.AvgPool2d):
        kw = dict(kernel_size=tuple(module._kernel), stride=tuple(module._stride), padding=tuple(module._padding),
                  ceil_mode=bool(module.ceil_mode), count_include_pad=bool(module.count_include_pad),
                  divisor_override=module.divisor_override)
        kind, text = "avg", f"avg {kw['kernel_size'][0]}x{kw['kernel_size'][1]}"
    elif isinstance(module, pnn.AdaptiveAvgPool2d):
        size = [shape[-2] if module._size[0] == -1 else module._size[0],
                shape[-1] if module._size[1] == -1 else module._size[1]]
        kw, kind, text = dict(output_size=tuple(size)), "gap", f"adaptive avg → {size[0]}x{size[1]}"
    else:  # batch-norm
        key = ("batch_norm", tuple(shape))
        kind_text = f"BN{'1d' if len(shape) < 3 else ''}({shape[0]})"
        return key, lambda extra: _bn_case(f"{where} {kind_text}{extra}", tuple(shape))
    if kind != "gap":
        text += _geometry("s", kw["stride"], kw["kernel_size"][0]) + _geometry("p", kw["padding"], 0)
    key = ("pooling", kind, tuple(shape), tuple(sorted(kw.items())))
    return key, lambda extra: _pool_case(f"{where} {text}{extra}", *shape, kind, **kw)


def model_cases(names: Optional[Sequence[str]] = None) -> List[Case]:
    """One Case per distinct layer geometry of the models `names` (default: all of
    pycnn.models.list_models()), in the order first met; the name is the first layer
    with that geometry, '(+N)' when N other layers share it."""
    import pycnn.models
    import pycnn.nn

    found: Dict[tuple, list] = {}
    for name in names or pycnn.models.list_models():
        options = {"width_divisor": 4} if name == "vgg11" else {}
        with torch.device("meta"):  # shapes only: no weights to initialise, no arithmetic (the fake kernels)
            model = pycnn.models.create(name, **options).eval()
        handles = []
        for qualname, module in model.named_modules():
            if type(module).__module__ != pycnn.nn.__name__:
                continue

            def hook(module, args, output, qualname=qualname, name=name):
                key, make = _layer_case(name, qualname, module, tuple(args[0].shape[1:]))
                found.setdefault(key, [make, 0])[1] += 1

            handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            model(torch.zeros(1, *model.default_input_size, device="meta"))
        for handle in handles:
            handle.remove()
    return [make(f" (+{count - 1})" if count > 1 else "") for make, count in found.values()]


def extra_cases() -> List[Case]:
    """Layers the models lack: grouped, depthwise and dilated convolutions, eval-mode batch-norm."""
    return [
        _conv_case("grouped 3x3 p1 g4 64→64", 64, 24, 24, 64, 3, padding=1, groups=4),
        _conv_case("grouped dilated 3x3 p2 d2 g4 64→64", 64, 24, 24, 64, 3, padding=2, groups=4, dilation=2),
        _conv_case("depthwise 3x3 p1 g64 64→64", 64, 24, 24, 64, 3, padding=1, groups=64),
        _conv_case("depthwise 3x3 s2 p1 g128 128→128", 128, 24, 24, 128, 3, stride=2, padding=1, groups=128),
        _conv_case("depthwise 5x5 p2 g32 32→32", 32, 48, 48, 32, 5, padding=2, groups=32),
        _conv_case("dilated 3x3 p2 d2 64→64", 64, 24, 24, 64, 3, padding=2, dilation=2),
        _conv_case("dilated 3x3 p4 d4 32→32", 32, 48, 48, 32, 3, padding=4, dilation=4),
        _bn_case("BN1d(120), eval", (120,), training=False),
        _bn_case("BN(64), eval", (64, 48, 48), training=False),
        _bn_case("BN(256), eval", (256, 12, 12), training=False),
        _bn_case("BN(512), eval", (512, 3, 3), training=False),
    ]


def all_cases() -> List[Case]:
    return model_cases() + extra_cases()


# --- timing ------------------------------------------------------------------------------------


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
            memory_format=torch.contiguous_format, budget: Optional[float] = None) -> Dict:
    """Medians of `repeats` back-to-back timings (fewer, but at least min(3, repeats),
    once `budget` seconds have been spent timing)."""
    inputs, ours, native, moved = case.make(batch, device, dtype, memory_format)
    for _ in range(warmup):
        _step(ours, inputs)
        _step(native, inputs)
    ours_times, native_times = [], []
    started = time.perf_counter()
    for r in range(repeats):
        # Alternate the order so neither always runs on a warmer cache.
        if r % 2 == 0:
            ours_times.append(_time(ours, inputs, device))
            native_times.append(_time(native, inputs, device))
        else:
            native_times.append(_time(native, inputs, device))
            ours_times.append(_time(ours, inputs, device))
        if budget is not None and r + 1 >= 3 and time.perf_counter() - started > budget:
            break
    ours_s, native_s = statistics.median(ours_times), statistics.median(native_times)
    return {"case": case, "batch": batch, "pycnn_ms": ours_s * 1e3, "native_ms": native_s * 1e3,
            "ratio": ours_s / native_s, "repeats": len(ours_times),
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


# --- the command -------------------------------------------------------------------------------


def _int_list(text):
    import argparse

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _table_list(text):
    import argparse

    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in TABLES]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"unknown table(s) {', '.join(unknown) or repr(text)}; "
                                         f"expected some of {', '.join(TABLES)}")
    return values


def add_arguments(parser):
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batches", type=_int_list, default=None, metavar="N,N,...",
                        help="batch sizes of the shapes table (default: 1,8,64 on CPU, 128 on CUDA; --quick: 8)")
    parser.add_argument("--batch", type=int, default=None, help="a single batch size (the same as --batches N)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per case, at most (default: 15 CPU, 50 CUDA; --quick: 5)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timing per case after which to stop, having at least 3 repetitions "
                             "(default: 0.2 CPU, 0.25 CUDA; --quick: 0.1)")
    parser.add_argument("--max-gmacs", type=float, default=None,
                        help="leave out convolutions of more forward GMACs per call (default: 2 on CPU, "
                             "no limit on CUDA; 0: no limit)")
    parser.add_argument("--tables", type=_table_list, default=list(TABLES), metavar="T,T,...",
                        help=f"which tables: {', '.join(TABLES)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: batch 8 (128 on CUDA), at most 5 repeats, smaller scaling sweeps")
    parser.add_argument("--dtype", choices=["float32", "float64", "float16", "bfloat16"], default="float32")
    parser.add_argument("--only", choices=list(FAMILIES), default=None, help="one operator family only")
    parser.add_argument("--channels-last", action="store_true",
                        help="4-D inputs in channels_last memory format (both libraries)")


def describe_machine(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _shapes_table(args, cases, batches, device, dtype, repeats, budget, memory_format, peak, max_gmacs):
    print("| family | layer | input (C, H, W) | batch | pycnn ms | native ms | ratio | pycnn GB/s | native GB/s |"
          + (" pycnn % of copy |" if peak else ""))
    print("|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if peak else ""))
    results, left_out = [], []
    gbs = lambda v: f"{v:.1f}" if v is not None else "–"  # noqa: E731
    for batch in batches:
        for case in cases:
            if max_gmacs and case.macs * batch > max_gmacs * 1e9:
                left_out.append((case, batch, f"over --max-gmacs {max_gmacs:g}"))
                continue
            if batch < case.min_batch:
                left_out.append((case, batch, "training batch-norm needs more than one value per channel"))
                continue
            warmup = 1 if case.macs * batch > 2.5e8 else 2  # the big convolutions: one warm-up call is enough
            r = measure(case, batch, device, dtype, repeats, warmup=warmup, memory_format=memory_format,
                        budget=budget)
            results.append(r)
            row = (f"| {case.family} | {case.name} | {case.shape} | {batch} | {r['pycnn_ms']:.3f} | "
                   f"{r['native_ms']:.3f} | {r['ratio']:.2f} | {gbs(r['pycnn_gbs'])} | {gbs(r['native_gbs'])} |")
            if peak:
                row += f" {100 * r['pycnn_gbs'] / peak:.0f}% |" if r["pycnn_gbs"] else " – |"
            print(row, flush=True)
    if left_out:
        print()
        print("Left out: " + "; ".join(f"{c.name} at batch {b} ({why})" for c, b, why in left_out))
    print()
    print("| family | batch | shapes | geometric-mean ratio pycnn/native | target | max ratio | at layer | target |"
          " met |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---|")
    for family in FAMILIES:
        mean_target, max_target = TARGETS[device.type][family]
        groups = [(str(b), [r for r in results if r["case"].family == family and r["batch"] == b]) for b in batches]
        if len(batches) > 1:
            groups.append(("all", [r for r in results if r["case"].family == family]))
        for label, rs in groups:
            if not rs:
                continue
            mean = geometric_mean([r["ratio"] for r in rs])
            worst = max(rs, key=lambda r: r["ratio"])
            met = mean <= mean_target and (max_target is None or worst["ratio"] <= max_target)
            print(f"| {family} | {label} | {len(rs)} | {mean:.2f} | ≤ {mean_target} | {worst['ratio']:.2f} | "
                  f"{worst['case'].name} | {'≤ ' + str(max_target) if max_target else '–'} | "
                  f"{'yes' if met else 'NO'} |")
    return results


def _overhead_table(args, device, calls):
    from pycnn.bench import overhead

    print(f"Per-call overhead on tiny tensors, input {tuple(overhead.TINY_INPUT)} on the CPU: 10th percentile of "
          f"{calls} calls (python -m pycnn.bench overhead for more)")
    print()
    overhead.print_table(calls, warmup=max(20, calls // 10), families=[args.only] if args.only else None)


def scaling_cases(quick: bool, cuda: bool):
    """(sweep, case, batch) of the scaling table: one convolution (ResNet-18's 3x3 64→64) and one
    pooling (ResNet-18's stem max 3x3 s2 p1 on 64 channels), against batch and against map size."""
    batches = (1, 8) if quick else ((1, 4, 16, 64, 256) if cuda else (1, 2, 4, 8, 16, 32, 64))
    conv_maps = (12, 24) if quick else (6, 12, 24, 48)
    pool_maps = (24, 48) if quick else (12, 24, 48, 96)
    rows = []
    for b in batches:
        rows.append(("batch", _conv_case("conv 3x3 p1 64→64", 64, 24, 24, 64, 3, padding=1), b))
    for side in conv_maps:
        rows.append(("map", _conv_case("conv 3x3 p1 64→64", 64, side, side, 64, 3, padding=1), 8))
    for b in batches:
        rows.append(("batch", _pool_case("max 3x3 s2 p1", 64, 48, 48, "max", kernel_size=3, stride=2, padding=1), b))
    for side in pool_maps:
        rows.append(("map", _pool_case("max 3x3 s2 p1", 64, side, side, "max", kernel_size=3, stride=2, padding=1), 8))
    return rows


def _scaling_table(args, device, dtype, repeats, budget, memory_format):
    print("| family | layer | against | batch | input (C, H, W) | work × | pycnn ms | native ms | ratio | "
          "pycnn time × | native time × |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    first = {}
    results = []
    for sweep, case, batch in scaling_cases(args.quick, device.type == "cuda"):
        if args.only and case.family != args.only:
            continue
        r = measure(case, batch, device, dtype, repeats, warmup=2, memory_format=memory_format, budget=budget)
        work = batch * math.prod(case.shape)
        base = first.setdefault((case.family, sweep), (work, r["pycnn_ms"], r["native_ms"]))
        results.append(r)
        print(f"| {case.family} | {case.name} | {sweep} | {batch} | {case.shape} | {work / base[0]:.0f} | "
              f"{r['pycnn_ms']:.3f} | {r['native_ms']:.3f} | {r['ratio']:.2f} | {r['pycnn_ms'] / base[1]:.1f} | "
              f"{r['native_ms'] / base[2]:.1f} |", flush=True)
    return results


def run(args):
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    cuda = device.type == "cuda"
    if args.batch is not None and args.batch <= 0:
        raise SystemExit("--batch must be positive")
    if args.batch is not None:
        batches = [args.batch]
    elif args.batches:
        batches = args.batches
    else:
        batches = [128] if cuda else ([8] if args.quick else [1, 8, 64])
    repeats = args.repeats or (5 if args.quick else (50 if cuda else 15))
    budget = args.budget if args.budget is not None else (0.1 if args.quick else (0.25 if cuda else 0.2))
    max_gmacs = args.max_gmacs if args.max_gmacs is not None else (0 if cuda else 2.0)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    layout = ", channels_last" if args.channels_last else ""
    print(f"# pycnn.bench ops: {describe_machine(device)}; batch {','.join(map(str, batches))}, {args.dtype}{layout}, "
          f"median of up to {repeats} (at most {budget:g} s of timing per case)")
    if "shapes" in args.tables:
        cases = [c for c in all_cases() if not args.only or c.family == args.only]
        peak = copy_bandwidth(device) if cuda else None
        if peak:
            print(f"# device-to-device copy bandwidth (read + write): {peak:.0f} GB/s")
        print()
        print(f"## Layers: {len(cases)} shapes (the distinct layer shapes of pycnn.models; grouped, depthwise "
              "and dilated convolutions; eval-mode batch-norm)")
        print()
        _shapes_table(args, cases, batches, device, dtype, repeats, budget, memory_format, peak, max_gmacs)
    if "overhead" in args.tables:
        print()
        print("## Per-call overhead")
        print()
        _overhead_table(args, device, calls=100 if args.quick else 300)
    if "scaling" in args.tables:
        print()
        print("## Scaling: time against batch size and map size (work × and time × relative to the first row)")
        print()
        _scaling_table(args, device, dtype, repeats, budget, memory_format)
    return 0
