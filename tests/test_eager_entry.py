"""pycnn._C.<op>: the eager entry of pycnn.functional's calls (csrc/eager_entry.cpp).

Each entry takes the arguments of torch.ops.pycnn.<op> and must behave as that
call does: the same results, recorded by autograd the same way, and every call
it does not parse itself (a __torch_function__ subclass or mode, keyword
arguments, SymInt-like or wrong arguments) handed to torch.ops unchanged, so
that its overrides run and its errors are the schema's.
"""
import threading

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import pycnn.functional as P
from pycnn import _C

ops = torch.ops.pycnn


def _tensors(requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=requires_grad)
    return make(2, 4, 7, 7), make(6, 2, 3, 3), make(6), make(4), make(4)


# name -> the positional arguments of torch.ops.pycnn.<name>, from (x, w, b, gamma, beta)
ARGUMENTS = {
    "corr2d": lambda x, w, b, g, s: (x, w, b, [2, 1], [1, 0], [1, 2], 2),
    "max_pool2d": lambda x, w, b, g, s: (x, [3, 2], [2, 2], [1, 1], [1, 1], True),
    "avg_pool2d": lambda x, w, b, g, s: (x, [3, 3], [2, 1], [1, 0], False, False, 5),
    "adaptive_avg_pool2d": lambda x, w, b, g, s: (x, [3, 2]),
    "batch_norm": lambda x, w, b, g, s: (x, g, s, torch.zeros(4, dtype=x.dtype), torch.ones(4, dtype=x.dtype),
                                         True, 0.25, 1e-3),
}


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("name", ARGUMENTS)
def test_entry_gives_what_torch_ops_gives_forward_and_backward(name):
    results = {}
    for call in ("entry", "torch.ops"):
        leaves = _tensors(requires_grad=True)
        function = getattr(_C if call == "entry" else ops, name)
        outputs = _as_tuple(function(*ARGUMENTS[name](*leaves)))
        outputs[0].pow(2).sum().backward()
        results[call] = (outputs, [leaf.grad for leaf in leaves], outputs[0].grad_fn.name())
    (outputs, grads, node), (expected, expected_grads, expected_node) = results["entry"], results["torch.ops"]
    assert type(outputs) is type(expected) and len(outputs) == len(expected)
    torch.testing.assert_close(outputs, expected)
    torch.testing.assert_close(grads, expected_grads)
    assert node == expected_node and node.startswith("pycnn::")


def test_tuple_arguments_are_taken_as_lists():
    x = _tensors()[0]
    torch.testing.assert_close(_C.max_pool2d(x, (2, 2), (2, 2), (0, 0), (1, 1), False),
                               ops.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False))


def test_functional_calls_go_through_the_entries(monkeypatch):
    calls = []

    class Recording:
        def __getattr__(self, name):
            def entry(*args):
                calls.append(name)
                return getattr(_C, name)(*args)

            return entry

    monkeypatch.setattr(P, "_C", Recording())
    x, w, _, g, s = _tensors()
    P.conv2d(x, w, padding=1, groups=2)
    P.max_pool2d(x, 2)
    P.avg_pool2d(x, 2)
    P.adaptive_avg_pool2d(x, 1)
    P.batch_norm(x, torch.zeros(4, dtype=x.dtype), torch.ones(4, dtype=x.dtype), g, s, training=True)
    assert calls == ["corr2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm"]


class Logged(torch.Tensor):
    """A subclass whose __torch_function__ sees every call it is an argument of."""

    seen = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("name", ARGUMENTS)
def test_a_torch_function_subclass_is_handed_to_torch_ops(name):
    x = _tensors()[0].as_subclass(Logged)
    Logged.seen.clear()
    tensors = _tensors()
    result = _as_tuple(getattr(_C, name)(*ARGUMENTS[name](x, *tensors[1:])))
    assert getattr(ops, name) in Logged.seen or getattr(ops, name).default in Logged.seen
    assert isinstance(result[0], Logged)
    torch.testing.assert_close(result[0].as_subclass(torch.Tensor),
                               _as_tuple(getattr(ops, name)(*ARGUMENTS[name](*tensors)))[0])


def test_a_torch_function_mode_sees_the_functional_call():
    class Mode(TorchFunctionMode):
        seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.seen.append(func)
            return func(*args, **(kwargs or {}))

    x = _tensors()[0]
    with Mode():
        P.max_pool2d(x, 2)
    assert any(func in (ops.max_pool2d, ops.max_pool2d.default) for func in Mode.seen)


def test_keyword_arguments_are_handed_to_torch_ops():
    x = _tensors()[0]
    expected = ops.adaptive_avg_pool2d(x, [2, 2])
    torch.testing.assert_close(_C.adaptive_avg_pool2d(x, output_size=[2, 2]), expected)
    torch.testing.assert_close(_C.adaptive_avg_pool2d(input=x, output_size=[2, 2]), expected)


def _assert_behaves_as_torch_ops(name, arguments):
    """_C.<name>(*arguments) returns what torch.ops.pycnn.<name> returns, or raises its error."""
    try:
        expected = getattr(ops, name)(*arguments)
    except Exception as error:
        with pytest.raises(type(error)) as raised:
            getattr(_C, name)(*arguments)
        assert str(raised.value) == str(error)
    else:
        torch.testing.assert_close(getattr(_C, name)(*arguments), expected)


@pytest.mark.parametrize(
    "arguments",
    [
        lambda x: (x, 2),  # an int for int[2]: the schema repeats it
        lambda x: (x, [2]),
        lambda x: (x, [torch.tensor(2), 2]),
        lambda x: (x, [True, 2]),
        lambda x: (x, [2**63, 1]),
        lambda x: (x, [1.5, 1]),
        lambda x: (x, "1"),
        lambda x: (x,),
        lambda x: (x, [2, 2], "extra"),
        lambda x: (x.numpy(), [2, 2]),
    ],
    ids=["int", "one-element list", "tensor element", "bool element", "int64 overflow", "float element", "string",
         "too few", "too many", "array"],
)
def test_arguments_the_entry_does_not_parse_behave_as_in_torch_ops(arguments):
    _assert_behaves_as_torch_ops("adaptive_avg_pool2d", arguments(_tensors()[0]))


@pytest.mark.parametrize(
    "arguments",
    [
        lambda x: (x, [2, 2], [2, 2], [0, 0], [1, 1], 1),
        lambda x: (x, [2, 2], [2, 2], [0, 0], [1, 1], None),
        lambda x: (x, [2, 2], [2, 2], [0, 0], [1, 1], "yes"),
    ],
    ids=["int for bool", "None for bool", "string for bool"],
)
def test_other_values_for_a_bool_behave_as_in_torch_ops(arguments):
    _assert_behaves_as_torch_ops("max_pool2d", arguments(_tensors()[0]))


@pytest.mark.parametrize(
    "arguments",
    [
        lambda x, g, s: (x, g, s, None, None, True, 1, 1e-5),  # an int for float
        lambda x, g, s: (x, g, s, None, None, True, 0.1, torch.tensor(1e-5)),
        lambda x, g, s: (x, g.float(), s, None, None, True, 0.1, 1e-5),
    ],
    ids=["int for float", "tensor for float", "float32 weight, float64 input"],
)
def test_batch_norm_arguments_behave_as_in_torch_ops(arguments):
    x, _, _, g, s = _tensors()
    _assert_behaves_as_torch_ops("batch_norm", arguments(x, g, s))


def test_kernel_errors_are_raised_as_through_torch_ops():
    x = _tensors()[0]
    with pytest.raises(RuntimeError) as expected:
        ops.max_pool2d(x[0, 0], [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError) as raised:
        _C.max_pool2d(x[0, 0], [2, 2], [2, 2], [0, 0], [1, 1], False)
    assert str(raised.value) == str(expected.value)
    assert "max_pool2d" in str(raised.value)


def test_forward_mode_through_the_entry_matches_native():
    import torch.autograd.forward_ad as fwAD

    x, tangent = _tensors()[0], torch.randn(2, 4, 7, 7, dtype=torch.float64)
    with fwAD.dual_level():
        ours = fwAD.unpack_dual(_C.avg_pool2d(fwAD.make_dual(x, tangent), [2, 2], [2, 2], [0, 0], False, True, None))
        native = fwAD.unpack_dual(F.avg_pool2d(fwAD.make_dual(x, tangent), 2))
    torch.testing.assert_close(ours.primal, native.primal)
    torch.testing.assert_close(ours.tangent, native.tangent)


def test_the_entry_releases_the_gil_while_the_operator_runs():
    # A Python thread keeps counting while the main thread is in one long
    # corr2d call; with the GIL held for the call, it could not.
    x, w = torch.randn(8, 64, 64, 64), torch.randn(64, 64, 3, 3)
    ticks, stop = [], threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(1)

    thread = threading.Thread(target=count)
    thread.start()
    try:
        while not ticks:  # the thread runs
            pass
        before = len(ticks)
        _C.corr2d(x, w, None, [1, 1], [1, 1], [1, 1], 1)
        during = len(ticks) - before
    finally:
        stop.set()
        thread.join()
    assert during > 0
