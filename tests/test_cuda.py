"""Paths only a GPU reaches: corr2d over several GEMM chunks and with one sample
per chunk, corr2d's grad_bias over many blocks and its output_mask,
batch-norm's split reductions and its (N, C) kernels, adaptive pooling's
warp-per-cell kernel, pooling at the 32-bit index boundary, batch 0, float16 /
bfloat16 against float32 native, 64-bit indexing, CUDA graphs and non-default streams. Skipped without CUDA; run by
tools/device_check. References are computed with TF32 off, or cuDNN's own
rounding (about 5e-4) would fail correct kernels."""

import pytest
import torch
import torch.nn.functional as F

from conftest import HAS_CUDA, assert_close_scaled

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="CUDA is not available on this machine")


@pytest.fixture(autouse=True)
def _no_tf32():
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


def _forward_backward(fn, *inputs):
    """[output, gradient of every input], on fresh leaves copied from the inputs."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    # Made in float32 and rounded: float16's own linspace gives NaN for millions of elements.
    grad = torch.linspace(-1, 1, out.numel(), device=out.device, dtype=torch.float32).to(out.dtype)
    out.backward(grad.view(out.shape))
    return [out] + [t.grad for t in leaves]


def _both(fn_ours, fn_native, *inputs):
    return _forward_backward(fn_ours, *inputs), _forward_backward(fn_native, *inputs)


@pytest.mark.parametrize("groups", [1, 4])
def test_corr2d_over_several_gemm_chunks(PF, groups):
    x = torch.randn(300, 64, 32, 32, device="cuda", dtype=torch.float64)
    w = torch.randn(64, 64 // groups, 3, 3, device="cuda", dtype=torch.float64)
    b = torch.randn(64, device="cuda", dtype=torch.float64)
    ours, native = _both(lambda x, w, b: PF.conv2d(x, w, b, padding=1, groups=groups),
                         lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=groups), x, w, b)
    for name, a, e in zip(["output", "grad_input", "grad_weight", "grad_bias"], ours, native):
        assert_close_scaled(a, e, torch.float64, "conv", msg=name)


@pytest.mark.parametrize("groups", [1, 4])
def test_corr2d_one_sample_per_chunk(PF, groups):
    # 256 * 9 column rows of 128 * 128 columns: 37.7M elements per sample, more
    # than half the column buffer, so every chunk holds one sample and the
    # GEMMs write the output (and read grad_output) in place, with groups too.
    x = torch.randn(3, 256, 128, 128, device="cuda", dtype=torch.float64)
    w = torch.randn(32, 256 // groups, 3, 3, device="cuda", dtype=torch.float64)
    b = torch.randn(32, device="cuda", dtype=torch.float64)
    ours, native = _both(lambda x, w, b: PF.conv2d(x, w, b, padding=1, groups=groups),
                         lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=groups), x, w, b)
    for name, a, e in zip(["output", "grad_input", "grad_weight", "grad_bias"], ours, native):
        assert_close_scaled(a, e, torch.float64, "conv", msg=name)


@pytest.mark.parametrize("shape, groups", [((64, 3, 64, 64), 1), ((8, 64, 8, 8), 1), ((64, 4, 64, 64), 2)],
                         ids=["per_sample_products", "channel_major_copy", "groups_copy"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=["float64", "float32", "float16"])
def test_corr2d_grad_weight_paths(ops, shape, groups, dtype):
    # backward_weight with several samples per chunk: one group with K = 27 < L
    # = 4096 sums per-sample products of a batched GEMM (float32 / float64);
    # K = 576 > L = 64, several groups, or float16 copy grad_output channel-major.
    n, c, h, w = shape
    x = torch.randn(shape, device="cuda", dtype=torch.float64)
    go = torch.randn(n, 16, h, w, device="cuda", dtype=torch.float64)
    reference = torch.float32 if dtype == torch.float16 else dtype
    gw, _ = ops.corr2d_backward_weight(go.to(dtype), x.to(dtype), [16, c // groups, 3, 3], [1, 1], [1, 1], [1, 1],
                                       groups, [True, False])
    expected = torch.nn.grad.conv2d_weight(x.to(reference), (16, c // groups, 3, 3), go.to(reference), 1, 1, 1, groups)
    assert gw.dtype == dtype
    assert_close_scaled(gw.to(reference), expected, dtype, "conv")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=["float64", "float32", "float16", "bfloat16"])
def test_corr2d_grad_bias_over_many_blocks(ops, dtype):
    # 37 * 75 * 83 = 230,325 elements per channel: 15 slices of grad_bias's
    # first pass (the last one short), summed in a fixed order in opmath.
    go = torch.randn(37, 5, 75, 83, device="cuda", dtype=torch.float64)
    x = torch.randn(37, 3, 77, 85, device="cuda", dtype=dtype)
    conv = ([1, 1], [0, 0], [1, 1], 1)
    gw, gb = ops.corr2d_backward_weight(go.to(dtype), x, [5, 3, 3, 3], *conv, [False, True])
    assert gw.shape == (0,) and gb.dtype == dtype
    expected = go.to(dtype).double().sum((0, 2, 3))
    # Accumulated in float32 for half / bfloat16 (float64 for float64): one rounding at the end.
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(gb.double(), expected, rtol=tolerance, atol=tolerance * go.numel() ** 0.5)
    again = ops.corr2d_backward_weight(go.to(dtype), x, [5, 3, 3, 3], *conv, [False, True])[1]
    assert torch.equal(gb, again)  # deterministic: no atomics


@pytest.mark.parametrize("mask", [[True, False], [False, True], [True, True]],
                         ids=["weight_only", "bias_only", "both"])
def test_corr2d_backward_weight_output_mask_on_cuda(ops, mask):
    go = torch.randn(20, 16, 30, 30, device="cuda", dtype=torch.float64)
    x = torch.randn(20, 8, 32, 32, device="cuda", dtype=torch.float64)
    conv = ([1, 1], [0, 0], [1, 1], 2)
    gw, gb = ops.corr2d_backward_weight(go, x, [16, 4, 3, 3], *conv, mask)
    gw_ref = torch.nn.grad.conv2d_weight(x, (16, 4, 3, 3), go, 1, 0, 1, 2)
    for got, ref, wanted in ((gw, gw_ref, mask[0]), (gb, go.sum((0, 2, 3)), mask[1])):
        if wanted:
            assert_close_scaled(got, ref, torch.float64, "conv")
        else:
            assert got.shape == (0,)


@pytest.mark.parametrize("shape, dtype, shift", [((64, 3, 128, 128), torch.float64, 0.0),
                                                 ((64, 3, 128, 128), torch.float32, 1e4),
                                                 ((4096, 1024), torch.float32, 0.0)],
                         ids=["split_reduction", "welford_large_mean", "batch_norm_1d_wide"])
def test_batch_norm_split_reductions(PF, shape, dtype, shift):
    x = torch.randn(shape, device="cuda", dtype=dtype) + shift
    c = shape[1]
    w, b = torch.rand(c, device="cuda", dtype=dtype), torch.randn(c, device="cuda", dtype=dtype)
    # Against native in float64 on the same values: native float32 is itself
    # off by more than the tolerance here (grad_bias of (4096, 1024) on the CPU).
    ours = _forward_backward(lambda x, w, b: PF.batch_norm(x, None, None, w, b, training=True), x, w, b)
    native = _forward_backward(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                               x.double(), w.double(), b.double())
    for name, a, e in zip(["output", "grad_input", "grad_weight", "grad_bias"], ours, native):
        assert_close_scaled(a.double(), e, dtype, "norm", msg=name)


@pytest.mark.parametrize("shape, dtype, shift", [((100003, 100), torch.float64, 0.0),
                                                 ((65536, 96), torch.float32, 1e2),
                                                 ((40000, 31), torch.float64, 0.0),
                                                 ((3, 4096), torch.float32, 0.0),
                                                 ((70000, 64), torch.float16, 0.0)],
                         ids=["large_n_partial_block", "large_n_shifted", "below_a_warp_of_channels",
                              "small_n_wide", "float16"])
def test_batch_norm_1d_channels_along_threads(PF, shape, dtype, shift):
    # The (N, C) first-pass kernels: threads along C, rows split across blocks
    # (100 channels: a last block of 4; 31: the general kernels), against
    # native in float64 on the same (rounded) values.
    x, w, b = (t.to(dtype) for t in (torch.randn(shape, device="cuda", dtype=torch.float64) + shift,
                                     torch.rand(shape[1], device="cuda", dtype=torch.float64),
                                     torch.randn(shape[1], device="cuda", dtype=torch.float64)))
    ours = _forward_backward(lambda x, w, b: PF.batch_norm(x, None, None, w, b, training=True), x, w, b)
    native = _forward_backward(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                               x.double(), w.double(), b.double())
    for name, a, e in zip(["output", "grad_input", "grad_weight", "grad_bias"], ours, native):
        assert a.dtype == dtype
        assert_close_scaled(a.double(), e, dtype, "norm", msg=name)
    running_mean = torch.zeros(shape[1], device="cuda", dtype=dtype)
    running_var = torch.ones(shape[1], device="cuda", dtype=dtype)
    PF.batch_norm(x, running_mean, running_var, training=True, momentum=1.0)
    assert_close_scaled(running_mean.double(), x.double().mean(0), dtype, "norm", msg="running_mean")
    assert_close_scaled(running_var.double(), x.double().var(0), dtype, "norm", msg="running_var")
    again = _forward_backward(lambda x, w, b: PF.batch_norm(x, None, None, w, b, training=True), x, w, b)
    assert all(torch.equal(a, e) for a, e in zip(ours, again))  # deterministic


@pytest.mark.parametrize("shape, output_size", [((2, 3, 1000, 1000), (3, 2)), ((2, 3, 1000, 1000), (40, 30)),
                                                ((4, 5, 301, 17), (2, 1)), ((2, 3, 64, 64), (9, 7))],
                         ids=["huge_windows", "many_warp_cells", "narrow_windows", "thread_per_cell"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=["float64", "float16"])
def test_adaptive_avg_pool2d_large_windows(PF, shape, output_size, dtype):
    # Windows of at least 256 elements take a warp per output cell.
    x = torch.randn(shape, device="cuda", dtype=torch.float64)
    reference = torch.float32 if dtype == torch.float16 else dtype
    ours = _forward_backward(lambda x: PF.adaptive_avg_pool2d(x, output_size), x.to(dtype))
    native = _forward_backward(lambda x: F.adaptive_avg_pool2d(x, output_size), x.to(reference))
    for name, a, e in zip(["output", "grad_input"], ours, native):
        assert a.dtype == dtype
        assert_close_scaled(a.to(reference), e, dtype, "pool", msg=name)
    again = PF.adaptive_avg_pool2d(x.to(dtype), output_size)
    assert torch.equal(ours[0], again)  # deterministic


LAYERS = {
    "conv2d": lambda m, x: m.conv2d(x, torch.ones(4, 3, 3, 3, device=x.device, dtype=x.dtype), padding=1),
    "max_pool2d": lambda m, x: m.max_pool2d(x, 3, 2, 1),
    "avg_pool2d": lambda m, x: m.avg_pool2d(x, 3, 2, 1),
    "adaptive_avg_pool2d": lambda m, x: m.adaptive_avg_pool2d(x, (2, 3)),
    "batch_norm": lambda m, x: m.batch_norm(x, torch.zeros(3, device=x.device, dtype=x.dtype),
                                            torch.ones(3, device=x.device, dtype=x.dtype), training=False),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_batch_zero_forward_and_backward(PF, name):
    x = torch.randn(0, 3, 8, 8, device="cuda", requires_grad=True)
    out = LAYERS[name](PF, x)
    assert out.shape == LAYERS[name](F, x.detach()).shape
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_reduced_precision_against_float32_native(PF, name, dtype):
    x = torch.randn(4, 3, 17, 15, device="cuda")
    ours = _forward_backward(lambda x: LAYERS[name](PF, x), x.to(dtype))
    native = _forward_backward(lambda x: LAYERS[name](F, x), x)
    for label, a, e in zip(["output", "grad_input"], ours, native):
        assert a.dtype == dtype
        assert_close_scaled(a.float(), e, dtype, "conv" if name == "conv2d" else "pool", msg=label)


def test_max_pool2d_past_two_to_the_31_elements(PF):
    shape = (2, 1, 32768, 32769)  # 2^31 + 65536 elements: 64-bit indexing
    needed = 3 * shape[0] * shape[2] * shape[3] * 2  # input, grad_input, and a quarter-size output with indices
    free, _ = torch.cuda.mem_get_info()
    if free < 2 * needed:
        pytest.skip(f"needs about {2 * needed / 2**30:.0f} GiB of free GPU memory")
    x = torch.zeros(shape, device="cuda", dtype=torch.float16)
    x[1, 0, -1, -1] = 1  # the last element: found only with 64-bit offsets
    x.requires_grad_()
    out, indices = PF.max_pool2d(x, 2, return_indices=True, ceil_mode=True)
    assert out[1, 0, -1, -1] == 1 and indices[1, 0, -1, -1] == shape[2] * shape[3] - 1
    out.backward(torch.ones_like(out))
    assert x.grad[1, 0, -1, -1] == 1


@pytest.mark.parametrize("width, path", [(32767, "int32"), (32769, "int64")])
def test_pooling_at_the_32bit_index_boundary(PF, width, path):
    # 65535 x 32767 = 2^31 - 98,305 elements: the 32-bit index path for the
    # forwards (their item count is the quarter-size output) with offsets up to
    # nearly 2^31, the 64-bit one for the backwards (count + grid > 2^31 - 1);
    # 65535 x 32769 = 2^31 + 32,767: 64-bit everywhere. Exact against native.
    shape = (1, 1, 65535, width)
    numel = shape[2] * shape[3]
    free, _ = torch.cuda.mem_get_info()
    if free < 6 * numel * 2 + 2**30:
        pytest.skip(f"needs about {(6 * numel * 2 + 2**30) / 2**30:.0f} GiB of free GPU memory")
    x = torch.zeros(shape, device="cuda", dtype=torch.float16)
    x[0, 0, -1, -1] = 1  # the last element
    x[0, 0, -2, 0] = 2
    x.requires_grad_()
    out, indices = PF.max_pool2d(x, 2, return_indices=True, ceil_mode=True)
    assert out[0, 0, -1, -1] == 1 and indices[0, 0, -1, -1] == numel - 1
    assert out[0, 0, -2, 0] == 2 and indices[0, 0, -2, 0] == (shape[2] - 2) * width
    out.backward(torch.ones_like(out))
    assert x.grad[0, 0, -1, -1] == 1 and x.grad[0, 0, -2, 0] == 1
    assert x.grad.sum(dtype=torch.float64).item() == out.numel()  # one gradient per window, none lost
    del out, indices
    x.grad = None
    avg = PF.avg_pool2d(x, 2, ceil_mode=True)
    assert avg[0, 0, -1, -1] == 1  # the last window holds one element (ceil_mode)
    avg.backward(torch.ones_like(avg))
    assert x.grad[0, 0, -1, -1] == 1 and x.grad[0, 0, 0, 0] == 0.25


def test_cuda_graph_capture_of_a_training_step(PN):
    model = torch.nn.Sequential(PN.Conv2d(3, 8, 3, padding=1), PN.BatchNorm2d(8), torch.nn.ReLU(),
                                PN.MaxPool2d(2), PN.AdaptiveAvgPool2d(1), torch.nn.Flatten()).cuda()
    static_x = torch.randn(8, 3, 16, 16, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as CUDA graphs require
        for _ in range(3):
            model.zero_grad(set_to_none=False)
            model(static_x).sum().backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    model.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):  # fails if anything inside synchronises with the host
        static_loss = model(static_x).sum()
        static_loss.backward()
    new_x = torch.randn_like(static_x)
    static_x.copy_(new_x)
    model.zero_grad(set_to_none=False)
    graph.replay()
    torch.cuda.synchronize()
    eager = model(new_x).sum()
    torch.testing.assert_close(static_loss, eager, rtol=1e-4, atol=1e-4)


def test_operators_on_a_non_default_stream(PF):
    x = torch.randn(16, 8, 32, 32, device="cuda")
    w = torch.randn(8, 8, 3, 3, device="cuda")
    expected = F.max_pool2d(F.conv2d(x, w, padding=1), 2)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = PF.max_pool2d(PF.conv2d(x, w, padding=1), 2)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
