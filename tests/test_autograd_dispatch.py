"""The C++ Autograd kernel of every operator (csrc/python_module.cpp).

A call that needs no derivative runs the kernels below autograd straight from
C++; a forward operator's call that needs reverse mode alone is recorded by a
C++ node (csrc/first_order_autograd.cpp); every other call runs the Python
derivatives of pycnn/_autograd.py. The tests below check the lines between
the three: each kind of call that must be recorded (an input requiring grad, a
forward-mode tangent on any input, a torch.func transform) still is, by the
node meant for it, with native's gradients, and the calls that need nothing
give the same values, without a graph.
"""
import itertools

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

import pycnn.functional as P

ops = torch.ops.pycnn

# name -> (pycnn call, native call) on one 4-D input
CALLS = {
    "corr2d": (lambda x, w: P.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1)),
    "max_pool2d": (lambda x, w: P.max_pool2d(x * w.sum(), 2), lambda x, w: F.max_pool2d(x * w.sum(), 2)),
    "avg_pool2d": (
        lambda x, w: P.avg_pool2d(x * w.sum(), 2, padding=1),
        lambda x, w: F.avg_pool2d(x * w.sum(), 2, padding=1),
    ),
    "adaptive_avg_pool2d": (
        lambda x, w: P.adaptive_avg_pool2d(x * w.sum(), 3),
        lambda x, w: F.adaptive_avg_pool2d(x * w.sum(), 3),
    ),
    "batch_norm": (
        lambda x, w: P.batch_norm(x, None, None, w[:, 0, 0, 0], None, training=True),
        lambda x, w: F.batch_norm(x, None, None, w[:, 0, 0, 0], None, training=True),
    ),
}


def _inputs(requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64, requires_grad=requires_grad)
    w = torch.randn(4, 4, 3, 3, generator=gen, dtype=torch.float64, requires_grad=requires_grad)
    return x, w


@pytest.mark.parametrize("name", CALLS)
def test_calls_without_derivatives_match_and_record_nothing(name):
    ours, native = CALLS[name]
    x, w = _inputs()
    expected = native(x, w)
    with torch.no_grad():
        torch.testing.assert_close(ours(*_inputs(requires_grad=True)), expected)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x, w), expected)
    y = ours(x, w)  # grad mode on, nothing requires grad
    assert y.grad_fn is None and not y.requires_grad
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("name", CALLS)
def test_an_input_requiring_grad_is_recorded(name):
    ours, native = CALLS[name]
    for which in (0, 1):  # only x, then only w, requires grad
        x, w = _inputs()
        (x if which == 0 else w).requires_grad_()
        y = ours(x, w)
        assert y.grad_fn is not None
        leaf = x if which == 0 else w
        (grad,) = torch.autograd.grad(y.sum(), leaf, create_graph=True)
        xn, wn = x.detach().requires_grad_(which == 0), w.detach().requires_grad_(which == 1)
        (expected,) = torch.autograd.grad(native(xn, wn).sum(), xn if which == 0 else wn, create_graph=True)
        torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("name", CALLS)
def test_a_forward_mode_tangent_is_recorded_without_requires_grad(name):
    ours, native = CALLS[name]
    x, w = _inputs()
    tangent = torch.ones_like(x)
    results = []
    for f in (ours, native):
        with fwAD.dual_level():
            y = f(fwAD.make_dual(x, tangent), w)
            results.append(fwAD.unpack_dual(y).tangent)
    assert results[0] is not None
    torch.testing.assert_close(results[0], results[1])


def test_torch_func_transforms_are_recorded():
    x, w = _inputs()
    f = lambda x: P.max_pool2d(P.conv2d(x, w, padding=1), 2).sum()  # noqa: E731
    g = lambda x: F.max_pool2d(F.conv2d(x, w, padding=1), 2).sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(x), torch.func.grad(g)(x))
    per_sample = torch.func.vmap(torch.func.grad(f))
    torch.testing.assert_close(per_sample(x[:, None]), torch.func.vmap(torch.func.grad(g))(x[:, None]))
    tangent = (torch.ones_like(x),)
    torch.testing.assert_close(torch.func.jvp(f, (x,), tangent)[1], torch.func.jvp(g, (x,), tangent)[1])


def _recorded_by(tensor):
    name = tensor.grad_fn.name()
    return "C++" if name.startswith("pycnn::") else name


@pytest.mark.parametrize("name", CALLS)
def test_reverse_mode_alone_is_recorded_in_cpp_and_the_rest_in_python(name):
    ours, _ = CALLS[name]
    x, w = _inputs(requires_grad=True)
    assert _recorded_by(ours(x, w)) == "C++"
    with fwAD.dual_level():  # a tangent too: the Python function, which has the jvp
        y = ours(fwAD.make_dual(x, torch.ones_like(x)), w)
        assert _recorded_by(y) == f"pycnn_{name}_derivativesBackward"
    # With create_graph, the C++ node's backward calls the backward operator, whose call is
    # recorded by its Python function (which has its derivatives).
    (gx,) = torch.autograd.grad((ours(x, w) ** 2).sum(), x, create_graph=True)
    backward_operator = "corr2d_backward_input" if name == "corr2d" else f"{name}_backward"
    assert f"pycnn_{backward_operator}_derivativesBackward" in _graph_names(gx.grad_fn)


def _graph_names(node):
    """The names of every node of an autograd graph."""
    names, stack, seen = set(), [node], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def _grads(f, tensors, wanted):
    """Gradients of (f(*tensors) ** 2).sum() in the tensors whose flag in wanted is set."""
    leaves = [t.detach().requires_grad_(want) if t is not None else None for t, want in zip(tensors, wanted)]
    output = f(*leaves)
    return torch.autograd.grad((output**2).sum(), [t for t, want in zip(leaves, wanted) if want])


def _some_tensors_optional(count):
    """Every choice of which of `count` tensors requires grad, none excepted."""
    return [mask for mask in itertools.product([False, True], repeat=count) if any(mask)]


@pytest.mark.parametrize("with_bias", [False, True])
def test_corr2d_cpp_gradients_for_every_subset_of_inputs(with_bias):
    x, w = _inputs()
    b = torch.randn(4, dtype=torch.float64) if with_bias else None
    tensors = (x, w, b) if with_bias else (x, w)
    for wanted in _some_tensors_optional(len(tensors)):
        ours = _grads(lambda *t: P.conv2d(*t, stride=2, padding=1), tensors, wanted)
        native = _grads(lambda *t: F.conv2d(*t, stride=2, padding=1), tensors, wanted)
        torch.testing.assert_close(ours, native)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("affine", ["none", "weight", "bias", "both"])
def test_batch_norm_cpp_gradients_for_every_optional_argument(training, affine):
    """weight or bias may be None, which shifts the position of the other among the node's inputs."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64)
    weight = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5 if affine in ("weight", "both") else None
    bias = torch.randn(3, generator=gen, dtype=torch.float64) if affine in ("bias", "both") else None
    mean, var = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    tensors = [t for t in (x, weight, bias) if t is not None]

    def call(module):
        def f(*leaves):
            leaves = iter(leaves)
            x_ = next(leaves)
            w_ = next(leaves) if weight is not None else None
            b_ = next(leaves) if bias is not None else None
            return module.batch_norm(x_, mean.clone(), var.clone(), w_, b_, training=training)
        return f

    for wanted in _some_tensors_optional(len(tensors)):
        torch.testing.assert_close(_grads(call(P), tensors, wanted), _grads(call(F), tensors, wanted))


def test_errors_of_the_kernels_come_through_both_paths():
    x = torch.randn(1, 3, 5, 5)
    w = torch.randn(2, 4, 3, 3)  # 4 input channels, the input has 3
    for requires_grad in (False, True):
        with pytest.raises(RuntimeError, match="pycnn.corr2d: input has 3 channels but weight expects in_channels"):
            ops.corr2d(x.requires_grad_(requires_grad), w, None, [1, 1], [0, 0], [1, 1], 1)


@pytest.mark.parametrize("name", CALLS)
def test_every_backward_operator_is_recorded_too(name):
    """With create_graph, the backward formulas' own operators (corr2d_backward_*, *_backward) need
    derivatives: their calls are recorded, and a second derivative matches native's."""
    ours, native = CALLS[name]
    results = []
    for f in (ours, native):
        x, w = _inputs(requires_grad=True)
        (gx,) = torch.autograd.grad((f(x, w) ** 2).sum(), x, create_graph=True)
        assert gx.grad_fn is not None
        results.append(torch.autograd.grad(gx.sum(), w)[0])
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("name", CALLS)
def test_the_cpp_node_frees_its_saved_tensors_unless_the_graph_is_retained(name):
    ours, _ = CALLS[name]
    x, w = _inputs(requires_grad=True)
    y = ours(x, w)
    assert _recorded_by(y) == "C++"
    first = torch.autograd.grad(y.sum(), x, retain_graph=True)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0], first[0])  # retained: again
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(y.sum(), x)


def test_the_cpp_node_sees_an_in_place_change_of_a_saved_tensor():
    x, w = _inputs(requires_grad=True)
    h = x * 1.0
    y = P.conv2d(h, w, padding=1)
    assert _recorded_by(y) == "C++"
    h.add_(1.0)  # corr2d saved h for the weight's gradient
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


# name -> a call of the operator on the input alone, so that its node is the only one that saves tensors
ON_THE_INPUT = {
    "corr2d": lambda x, w: P.conv2d(x, w.detach(), padding=1),
    "max_pool2d": lambda x, w: P.max_pool2d(x, 2),
    "avg_pool2d": lambda x, w: P.avg_pool2d(x, 2, padding=1),
    "adaptive_avg_pool2d": lambda x, w: P.adaptive_avg_pool2d(x, 3),
    "batch_norm": lambda x, w: P.batch_norm(x, None, None, w.detach()[:, 0, 0, 0], None, training=True),
}


@pytest.mark.parametrize("name", ON_THE_INPUT)
def test_the_cpp_node_saves_through_saved_tensors_hooks(name):
    """torch.autograd.graph.saved_tensors_hooks sees every tensor the node saves (offloading, checkpointing)."""
    packed, unpacked = [], []

    def pack(tensor):
        packed.append(tensor.shape)
        return tensor.clone()

    def unpack(tensor):
        unpacked.append(tensor.shape)
        return tensor

    x, w = _inputs(requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        y = ON_THE_INPUT[name](x, w)
    assert _recorded_by(y) == "C++" and packed
    (grad,) = torch.autograd.grad((y**2).sum(), x)
    assert sorted(unpacked) == sorted(packed)
    xn = x.detach().requires_grad_()
    torch.testing.assert_close(grad, torch.autograd.grad((ON_THE_INPUT[name](xn, w) ** 2).sum(), xn)[0])


def test_compiled_autograd_raises_a_clear_error():
    """Compiled autograd (torch._dynamo.compiled_autograd) asks every node to describe its saved
    state; the C++ nodes of a training step do not, and say so by name (not an internal assert)."""
    enable = getattr(getattr(torch._dynamo, "compiled_autograd", None), "_enable", None)
    if enable is None:
        pytest.skip("this torch has no torch._dynamo.compiled_autograd._enable")
    x, w = _inputs(requires_grad=True)
    y = P.max_pool2d(P.conv2d(x, w, padding=1), 2)
    with pytest.raises(NotImplementedError, match=r"compiled_args not implemented: pycnn::MaxPool2dBackward"):
        with enable(torch.compile(backend="eager")):
            y.sum().backward()
