"""torch.func over pycnn's operators: vmap's batching rules (every operator,
every combination of batched arguments, against a loop over the samples),
per-sample gradients of every classic model against its native twin, and the
Hessian of a small network."""

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, hessian, jacrev, vmap

import pycnn.nn as pnn
from pycnn.models import create

from test_models import LIGHT, MODELS

F64 = torch.float64
B = 3  # vmapped samples


def _loop(fn, in_dims, args):
    """fn applied to each sample in turn, results stacked along dim 0."""
    results = []
    for i in range(B):
        sample = [a if d is None else a.select(d, i) for a, d in zip(args, in_dims)]
        results.append(fn(*sample))
    if isinstance(results[0], tuple):
        return tuple(torch.stack(parts) for parts in zip(*results))
    return torch.stack(results)


def _check_vmap(fn, args, in_dims):
    expected = _loop(fn, in_dims, args)
    actual = vmap(fn, in_dims=in_dims)(*args)
    if not isinstance(expected, tuple):
        actual, expected = (actual,), (expected,)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def _batched(tensor, batched, dim=0):
    """tensor with a vmapped dimension of size B inserted at dim, or as it is."""
    if not batched:
        return tensor
    return torch.stack([torch.randn_like(tensor) for _ in range(B)], dim=dim)


# Every subset of (input, weight, bias) batched, the batch dimension in various places.
@pytest.mark.parametrize("batched", [b for b in itertools.product([False, True], repeat=3) if any(b)],
                         ids=lambda b: "".join("xwb"[i] if v else "-" for i, v in enumerate(b)))
@pytest.mark.parametrize("groups", [1, 2])
def test_vmap_corr2d(ops, batched, groups, device):
    x = torch.randn(2, 4, 7, 6, dtype=F64, device=device)
    w = torch.randn(6, 4 // groups, 3, 2, dtype=F64, device=device)
    b = torch.randn(6, dtype=F64, device=device)
    dims = (1 if batched[0] else None, 0 if batched[1] else None, 0 if batched[2] else None)
    args = [_batched(x, batched[0], 1), _batched(w, batched[1]), _batched(b, batched[2])]
    fn = lambda x, w, b: ops.corr2d(x, w, b, [2, 1], [1, 0], [1, 2], groups)  # noqa: E731
    _check_vmap(fn, args, dims)


@pytest.mark.parametrize("batched", [(True, False), (False, True), (True, True)], ids=["gy", "w", "gy-w"])
def test_vmap_corr2d_backward_operators(ops, batched, device):
    x = torch.randn(2, 4, 7, 6, dtype=F64, device=device)
    w = torch.randn(6, 2, 3, 2, dtype=F64, device=device)
    gy = torch.randn(2, 6, 4, 4, dtype=F64, device=device)
    conv = ([2, 1], [1, 0], [1, 2], 2)
    dims = tuple(0 if b else None for b in batched)
    _check_vmap(lambda gy, w: ops.corr2d_backward_input(gy, w, list(x.shape), *conv),
                [_batched(gy, batched[0]), _batched(w, batched[1])], dims)
    _check_vmap(lambda gy, x: ops.corr2d_backward_weight(gy, x, list(w.shape), *conv),
                [_batched(gy, batched[0]), _batched(x, batched[1])], dims)


@pytest.mark.parametrize("batched", [(True, False), (False, True), (True, True)], ids=["gy", "x", "gy-x"])
def test_vmap_pooling_and_backward_operators(ops, batched, device):
    x = torch.randn(2, 3, 7, 6, dtype=F64, device=device)
    dims = tuple(0 if b else None for b in batched)
    _check_vmap(lambda x: ops.max_pool2d(x, [3, 2], [2, 1], [1, 1], [1, 1], True), [_batched(x, True, 2)], (2,))
    _check_vmap(lambda x: ops.avg_pool2d(x, [3, 2], [2, 1], [1, 1], True, False, None), [_batched(x, True, 3)], (3,))
    _check_vmap(lambda x: ops.adaptive_avg_pool2d(x, [3, 4]), [_batched(x, True, 1)], (1,))

    window = ([3, 2], [2, 1], [1, 1], [1, 1], True)
    _, indices = ops.max_pool2d(x, *window)
    gy = torch.randn(indices.shape, dtype=F64, device=device)
    _check_vmap(lambda gy, x: ops.max_pool2d_backward(gy, x, indices, *window),
                [_batched(gy, batched[0]), _batched(x, batched[1])], dims)
    gy = torch.randn_like(ops.avg_pool2d(x, [3, 2], [2, 1], [1, 1], True, False, None))
    _check_vmap(lambda gy, x: ops.avg_pool2d_backward(gy, x, [3, 2], [2, 1], [1, 1], True, False, None),
                [_batched(gy, batched[0]), _batched(x, batched[1])], dims)
    gy = torch.randn(2, 3, 3, 4, dtype=F64, device=device)
    _check_vmap(lambda gy, x: ops.adaptive_avg_pool2d_backward(gy, x),
                [_batched(gy, batched[0]), _batched(x, batched[1])], dims)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("batched", [(True, False, False), (False, True, False), (True, True, True),
                                     (True, False, True)], ids=["x", "w", "x-w-stats", "x-stats"])
def test_vmap_batch_norm(ops, training, batched, device):
    x = torch.randn(4, 3, 5, 2, dtype=F64, device=device)
    w, b = torch.randn(3, dtype=F64, device=device), torch.randn(3, dtype=F64, device=device)
    mean, var = torch.randn(3, dtype=F64, device=device), torch.rand(3, dtype=F64, device=device) + 0.5
    args = [_batched(x, batched[0], 1), _batched(w, batched[1]), b,
            _batched(mean, batched[2]), _batched(var, batched[2]).abs() + 0.5]
    dims = (1 if batched[0] else None, 0 if batched[1] else None, None) + ((0, 0) if batched[2] else (None, None))
    _check_vmap(lambda x, w, b, m, v: ops.batch_norm(x, w, b, m, v, training, 0.1, 1e-5), args, dims)
    # and without running statistics
    _check_vmap(lambda x, w: ops.batch_norm(x, w, None, None, None, True, 0.1, 1e-5)[:3], args[:2], dims[:2])


@pytest.mark.parametrize("used_batch_stats", [True, False], ids=["batch_stats", "running_stats"])
def test_vmap_batch_norm_backward(ops, used_batch_stats, device):
    x = torch.randn(4, 3, 5, dtype=F64, device=device)
    w = torch.randn(3, dtype=F64, device=device)
    _, mean, invstd, _, _ = ops.batch_norm(x, w, None, None, None, True, 0.1, 1e-5)
    gy = torch.randn_like(x)
    _check_vmap(lambda gy, x, w: ops.batch_norm_backward(gy, x, w, mean, invstd, used_batch_stats),
                [_batched(gy, True), _batched(x, True), _batched(w, True)], (0, 0, 0))
    _check_vmap(lambda gy: ops.batch_norm_backward(gy, x, w, mean, invstd, used_batch_stats),
                [_batched(gy, True, 2)], (2,))


def _per_sample_gradients(model, x, y):
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(params, sample, target):
        out = functional_call(model, (params, buffers), (sample.unsqueeze(0),))
        return F.cross_entropy(out, target.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


@pytest.mark.parametrize("name", MODELS)
def test_per_sample_gradients_match_native(name, device):
    """vmap(grad(loss)) over the samples, as DP-SGD does: each sample's
    gradient of every parameter equals the native twin's (eval mode: dropout
    off, batch-norm on its running statistics)."""
    native = create(name, backend="native", **LIGHT.get(name, {})).to(device=device, dtype=F64).eval()
    ours = create(name, backend="pycnn", **LIGHT.get(name, {})).to(device=device, dtype=F64).eval()
    ours.load_state_dict(native.state_dict())
    x = torch.randn(2, *ours.default_input_size, dtype=F64, device=device)
    y = torch.tensor([3, 7], device=device)
    got, expected = _per_sample_gradients(ours, x, y), _per_sample_gradients(native, x, y)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key].shape[0] == 2
        scale = float(expected[key].abs().max()) + 1e-30
        torch.testing.assert_close(got[key], expected[key], rtol=1e-7, atol=1e-9 * scale, msg=key)


def test_per_sample_gradients_with_batch_statistics(device):
    """Training-mode batch-norm under vmap: each vmapped group of 4 images is
    normalised with its own statistics (torch.func.replace_all_batch_norm_modules_
    stops the running-statistics update, as for native layers)."""
    results = []
    for backend in ("pycnn", "native"):
        torch.manual_seed(0)
        model = create("lenet_bn", backend=backend).to(device=device, dtype=F64).train()
        torch.func.replace_all_batch_norm_modules_(model)
        params = {k: v.detach() for k, v in model.named_parameters()}
        x = torch.randn(3, 4, 1, 28, 28, dtype=F64, device=device)
        y = torch.randint(0, 10, (3, 4), device=device)

        def loss(params, images, targets):
            return F.cross_entropy(functional_call(model, params, (images,)), targets)

        results.append(vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y))
    # A convolution bias followed by batch-norm has a zero gradient in exact
    # arithmetic: absolute tolerances relative to the largest gradient of all.
    scale = max(float(g.abs().max()) for g in results[1].values())
    for key in results[1]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-7, atol=1e-10 * scale, msg=key)


def _small_net(layers, train):
    torch.manual_seed(1)
    return nn.Sequential(
        layers.Conv2d(2, 3, 3, padding=1), layers.BatchNorm2d(3, track_running_stats=not train), nn.Tanh(),
        layers.MaxPool2d(2), layers.AvgPool2d(2, ceil_mode=True), layers.AdaptiveAvgPool2d(1), nn.Flatten(),
    ).to(F64).train(train)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_hessian_of_a_small_network(train, device):
    """torch.func.hessian (forward over reverse) and jacrev(jacrev) of a
    conv / batch-norm / pooling net in its input, against the native net's."""
    x = torch.randn(2, 2, 8, 8, dtype=F64, device=device)
    results = []
    for layers in (pnn, nn):
        model = _small_net(layers, train).to(device)
        loss = lambda x: model(x).pow(2).sum()  # noqa: E731
        results.append((hessian(loss)(x), jacrev(jacrev(loss))(x)))
    for ours, native in zip(*results):
        assert ours.abs().max() > 0
        torch.testing.assert_close(ours, native, rtol=1e-8, atol=1e-10)


def test_hessian_vector_product_in_the_weights(device):
    """A Hessian-vector product in the parameters (double backward through
    every layer), against the native twin's."""
    results = []
    for layers in (pnn, nn):
        model = _small_net(layers, train=True).to(device)
        x = torch.randn(4, 2, 8, 8, dtype=F64, device=device)
        params = list(model.parameters())
        grads = torch.autograd.grad(model(x).pow(2).sum(), params, create_graph=True)
        vector = [torch.linspace(-1, 1, p.numel(), dtype=F64, device=device).view_as(p) for p in params]
        results.append(torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vector)), params))
    for ours, native in zip(*results):
        torch.testing.assert_close(ours, native, rtol=1e-8, atol=1e-10)
