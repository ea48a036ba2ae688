"""Run an existing torch.nn model (a torchvision classifier, your own) on pycnn's kernels.

    import torchvision, pycnn
    model = pycnn.convert(torchvision.models.resnet50())      # a converted copy
    pycnn.convert(model, inplace=True)                         # or in place

``convert(module)`` does two things, both on the module tree itself, so that
the converted model stays an ordinary nn.Module of the same classes
(``isinstance(model, torchvision.models.ResNet)`` still holds, state_dict keys
and parameter objects are the same, ``model.fc = ...`` still works):

1. **Layers.** Every ``torch.nn`` Conv2d, MaxPool2d, AvgPool2d,
   AdaptiveAvgPool2d, BatchNorm1d and BatchNorm2d is replaced by its
   :mod:`pycnn.nn` twin, in the idiom of
   ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: the twin is constructed
   with the layer's own arguments (on the meta device, so nothing is
   allocated) and then takes over the layer's parameters, buffers, hooks,
   training flag and any other attribute -- the very tensors, so device,
   dtype, ``requires_grad`` and an optimizer built beforehand carry over.

2. **Functional calls.** Some models call ``torch.nn.functional`` in their own
   forward (Inception v3's branch pooling and auxiliary head, GoogLeNet's
   auxiliary head, DenseNet's and MobileNet v2's final pooling). For every
   module whose class (outside torch.nn itself) has methods naming conv2d,
   max_pool2d, max_pool2d_with_indices, avg_pool2d, adaptive_avg_pool2d or
   batch_norm, the module's class is swapped (``module.__class__``) for a
   subclass whose methods are the very same code objects bound to other
   globals: ``F``/``torch.nn.functional``, ``nn``/``torch.nn`` and ``torch``
   there resolve to stand-ins whose six functions run pycnn's kernels and
   whose every other name is torch's own. The source, the line numbers and
   the class hierarchy are unchanged.

Why this design and not a ``__torch_function__`` mode or torch.fx:

* TorchScript. ``torch.jit.script`` compiles a method from its source and
  resolves its global names through the function's ``__globals__``; with the
  globals rebound, it compiles the stand-ins, which have the signatures of
  torch.nn.functional (BroadcastingList2 arguments, max_pool2d's boolean
  dispatch on return_indices) and a TorchScript path straight to pycnn's
  ``torch.ops.pycnn.*`` operators. A TorchFunctionMode is invisible to
  scripted code (the native ops would run after scripting) and cannot be
  entered from a scripted forward; a wrapper module entering one would not
  script at all.
* torch.export / ONNX and torch.jit.trace see plain Python calling pycnn's
  operators, which pycnn.onnx's translation table turns into standard ONNX.
* torch.fx would trace away Python control flow -- the training/eval switch
  of Inception v3's and GoogLeNet's auxiliary heads would be frozen at
  conversion time -- and would turn the model into a GraphModule of another
  class.

Limits (honest ones): a functional call made outside the module's own
methods (in a free helper function the forward calls) is not redirected;
a module whose class was swapped pickles only with ``state_dict`` (a whole
``torch.save(model)`` pickles classes by name and the swapped classes are
made at run time); ``copy.deepcopy`` works.

Layers convert cannot take stay native and are reported, in one warning
listing each qualified name and why (``strict=True`` raises
:class:`ConversionError` with the same list instead):

* a subclass of one of the six torch.nn classes (its own methods would be
  lost; convert replaces only the torch.nn classes themselves) -- the lazy
  ones (LazyConv2d, LazyBatchNorm2d, ...) before their first forward among
  them;
* parameters or buffers of a dtype pycnn's kernels do not take (float32 and
  float64 on the CPU; also float16 and bfloat16 on CUDA), or on a device
  pycnn has no kernels for (CUDA without pycnn's CUDA kernels built, MPS, ...).

Conv2d's padding modes ('reflect', 'replicate', 'circular') and padding='same'
are taken: pycnn.nn.Conv2d pads the input first, as torch.nn.Conv2d does.
Other layer types (Conv1d, Conv3d, MaxPool1d, ...) are out of pycnn's scope and
are neither converted nor reported.
"""
import copy
import types
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._jit_internal import BroadcastingList2, boolean_dispatch

import pycnn.functional as pf
import pycnn.nn
from pycnn._library import cuda_kernels_built
from pycnn.functional import _adaptive_avg_pool2d, _avg_pool2d, _batch_norm, _corr2d, _max_pool2d

__all__ = ["convert", "ConversionError", "TWINS", "torchvision_classifier", "checked_input_size"]

# torch.nn class -> pycnn.nn twin (exact classes only; see the module docstring).
TWINS = {
    nn.Conv2d: pycnn.nn.Conv2d,
    nn.MaxPool2d: pycnn.nn.MaxPool2d,
    nn.AvgPool2d: pycnn.nn.AvgPool2d,
    nn.AdaptiveAvgPool2d: pycnn.nn.AdaptiveAvgPool2d,
    nn.BatchNorm1d: pycnn.nn.BatchNorm1d,
    nn.BatchNorm2d: pycnn.nn.BatchNorm2d,
}
_PYCNN_CLASSES = tuple(TWINS.values())
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class ConversionError(ValueError):
    """convert(strict=True) met layers it cannot take; ``layers`` lists (qualified name, reason)."""

    def __init__(self, layers: List[Tuple[str, str]]):
        self.layers = layers
        super().__init__(_describe(layers))


def _describe(layers: List[Tuple[str, str]]) -> str:
    items = "; ".join(f"{name or '(the model itself)'}: {reason}" for name, reason in layers)
    return f"pycnn.convert: {len(layers)} layer(s) left native: {items}"


# --- layers ---------------------------------------------------------------------


def _constructor_args(module: nn.Module) -> Tuple[tuple, dict]:
    if isinstance(module, nn.Conv2d):
        return (module.in_channels, module.out_channels, module.kernel_size), dict(
            stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups,
            bias=module.bias is not None, padding_mode=module.padding_mode)
    if isinstance(module, nn.MaxPool2d):
        return (module.kernel_size,), dict(stride=module.stride, padding=module.padding, dilation=module.dilation,
                                           return_indices=module.return_indices, ceil_mode=module.ceil_mode)
    if isinstance(module, nn.AvgPool2d):
        return (module.kernel_size,), dict(stride=module.stride, padding=module.padding, ceil_mode=module.ceil_mode,
                                           count_include_pad=module.count_include_pad,
                                           divisor_override=module.divisor_override)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return (module.output_size,), {}
    # Batch norm.
    return (module.num_features,), dict(eps=module.eps, momentum=module.momentum, affine=module.affine,
                                        track_running_stats=module.track_running_stats)


def _why_not(module: nn.Module) -> Optional[str]:
    """None when convert takes this layer, else the reason it stays native."""
    cls = type(module)
    if cls not in TWINS:
        base = next(b for b in cls.__mro__ if b in TWINS)
        if isinstance(module, nn.modules.lazy.LazyModuleMixin):
            return (f"{cls.__name__} is lazy and not initialised yet; run one forward before converting "
                    f"(it then becomes a torch.nn.{base.__name__})")
        return (f"{cls.__module__}.{cls.__qualname__} subclasses torch.nn.{base.__name__}; convert replaces only "
                f"torch.nn.{base.__name__} itself (the subclass's own methods would be lost)")
    for kind, tensor in [("parameter", p) for p in module.parameters(recurse=False)] + \
                        [("buffer", b) for b in module.buffers(recurse=False) if b.is_floating_point()]:
        device = tensor.device
        if device.type == "cpu":
            if tensor.dtype not in _CPU_DTYPES:
                return f"a {tensor.dtype} {kind} on the CPU; pycnn's CPU kernels take float32 and float64"
        elif device.type == "cuda":
            if not cuda_kernels_built():
                return "on CUDA, and pycnn was built without its CUDA kernels"
            if tensor.dtype not in _CUDA_DTYPES:
                return f"a {tensor.dtype} {kind}; pycnn's CUDA kernels take float32/64, float16 and bfloat16"
        elif device.type != "meta":
            return f"on device {device}; pycnn has kernels for the CPU and CUDA only"
    return None


def _twin(module: nn.Module) -> nn.Module:
    args, kwargs = _constructor_args(module)
    cls = TWINS[type(module)]
    if cls in (pycnn.nn.Conv2d, pycnn.nn.BatchNorm1d, pycnn.nn.BatchNorm2d):
        kwargs["device"] = "meta"  # nothing allocated: the layer's own tensors are taken over below
    new = cls(*args, **kwargs)
    # Everything of the old layer (parameters, buffers, hooks, training flag, user attributes) wins;
    # the twin keeps only what its constructor derived from the same arguments.
    new.__dict__.update(module.__dict__)
    return new


def _replace_layers(module: nn.Module, prefix: str, skipped: List[Tuple[str, str]]) -> nn.Module:
    if isinstance(module, _PYCNN_CLASSES):
        return module
    if isinstance(module, tuple(TWINS)):
        reason = _why_not(module)
        if reason is None:
            return _twin(module)
        skipped.append((prefix, reason))
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        new = _replace_layers(child, f"{prefix}.{name}" if prefix else name, skipped)
        if new is not child:
            module._modules[name] = new
    return module


# --- functional calls -----------------------------------------------------------
# Stand-ins with torch.nn.functional's signatures. Eager (and torch.jit.trace,
# torch.export) take pycnn.functional's drop-ins, which accept everything
# torch.nn.functional does; TorchScript compiles the typed path below the
# is_scripting() test (the eager branch is skipped by the compiler).


def _two(values: List[int]) -> List[int]:
    return [values[0], values[0]] if len(values) == 1 else values


def _conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: BroadcastingList2[int] = 1,
            padding: BroadcastingList2[int] = 0, dilation: BroadcastingList2[int] = 1, groups: int = 1) -> Tensor:
    if not torch.jit.is_scripting():
        return pf.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return _corr2d(input, weight, bias, _two(stride), _two(padding), _two(dilation), groups)


def _pool_stride(stride: Optional[List[int]], kernel: List[int]) -> List[int]:
    if stride is None or len(stride) == 0:
        return kernel
    return _two(stride)


def _max_pool2d_with_indices(input: Tensor, kernel_size: BroadcastingList2[int],
                             stride: Optional[BroadcastingList2[int]] = None, padding: BroadcastingList2[int] = 0,
                             dilation: BroadcastingList2[int] = 1, ceil_mode: bool = False,
                             return_indices: bool = False) -> Tuple[Tensor, Tensor]:
    if not torch.jit.is_scripting():
        return pf.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
    kernel = _two(kernel_size)
    return _max_pool2d(input, kernel, _pool_stride(stride, kernel), _two(padding), _two(dilation), ceil_mode)


def _max_pool2d_output(input: Tensor, kernel_size: BroadcastingList2[int],
                       stride: Optional[BroadcastingList2[int]] = None, padding: BroadcastingList2[int] = 0,
                       dilation: BroadcastingList2[int] = 1, ceil_mode: bool = False,
                       return_indices: bool = False) -> Tensor:
    if not torch.jit.is_scripting():
        return pf.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)
    kernel = _two(kernel_size)
    return _max_pool2d(input, kernel, _pool_stride(stride, kernel), _two(padding), _two(dilation), ceil_mode)[0]


_max_pool2d_dispatch = boolean_dispatch(
    arg_name="return_indices", arg_index=6, default=False, if_true=_max_pool2d_with_indices,
    if_false=_max_pool2d_output, module_name=__name__, func_name="max_pool2d")


def _avg_pool2d_standin(input: Tensor, kernel_size: BroadcastingList2[int],
                        stride: Optional[BroadcastingList2[int]] = None, padding: BroadcastingList2[int] = 0,
                        ceil_mode: bool = False, count_include_pad: bool = True,
                        divisor_override: Optional[int] = None) -> Tensor:
    if not torch.jit.is_scripting():
        return pf.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    kernel = _two(kernel_size)
    return _avg_pool2d(input, kernel, _pool_stride(stride, kernel), _two(padding), ceil_mode, count_include_pad,
                       divisor_override)


def _adaptive_avg_pool2d_standin(input: Tensor, output_size: BroadcastingList2[int]) -> Tensor:
    if not torch.jit.is_scripting():
        return pf.adaptive_avg_pool2d(input, output_size)
    return _adaptive_avg_pool2d(input, _two(output_size))


def _batch_norm_standin(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                        weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
                        momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    if not torch.jit.is_scripting():
        return pf.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


_FUNCTIONS = {
    "conv2d": _conv2d,
    "max_pool2d": _max_pool2d_dispatch,
    "max_pool2d_with_indices": _max_pool2d_with_indices,
    "avg_pool2d": _avg_pool2d_standin,
    "adaptive_avg_pool2d": _adaptive_avg_pool2d_standin,
    "batch_norm": _batch_norm_standin,
}
# The ATen bindings under torch.* with torch.nn.functional's signatures (torch.batch_norm's differs:
# it stays torch's; torch.avg_pool2d and torch.adaptive_avg_pool2d do not exist).
_TORCH_FUNCTIONS = {"conv2d": _conv2d, "max_pool2d": _max_pool2d_output}


def _standin(name: str, real: types.ModuleType, overrides: Dict[str, object]) -> types.ModuleType:
    """A module object: the overrides, and every other attribute from `real` (PEP 562 __getattr__)."""
    module = types.ModuleType(name, real.__doc__)
    module.__dict__.update(overrides)
    module.__dict__["__getattr__"] = lambda attr: getattr(real, attr)
    return module


_F = _standin("pycnn.convert.functional", F, _FUNCTIONS)
_NN = _standin("pycnn.convert.nn", nn, {"functional": _F})
_TORCH = _standin("pycnn.convert.torch", torch, {"nn": _NN, **_TORCH_FUNCTIONS})
# Real object -> stand-in, for the names a method's globals bind.
_REBIND = {id(F): _F, id(nn): _NN, id(torch): _TORCH}
_REBIND.update({id(getattr(F, name)): function for name, function in _FUNCTIONS.items()})
_REBIND.update({id(getattr(torch, name)): function for name, function in _TORCH_FUNCTIONS.items()})
_TARGET_NAMES = frozenset(_FUNCTIONS)


def _code_names(code: types.CodeType) -> set:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _rebound_function(fn: types.FunctionType) -> Optional[types.FunctionType]:
    """fn with its globals rebound to the stand-ins, or None if it names none of the six functions."""
    names = _code_names(fn.__code__)
    if not names & _TARGET_NAMES:
        return None
    rebound = {name for name in names if name in fn.__globals__ and id(fn.__globals__[name]) in _REBIND}
    if not rebound:
        return None
    new_globals = dict(fn.__globals__)
    for name in rebound:
        new_globals[name] = _REBIND[id(fn.__globals__[name])]
    new = types.FunctionType(fn.__code__, new_globals, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = copy.copy(fn.__kwdefaults__)
    new.__dict__.update(fn.__dict__)  # @torch.jit.unused / ignore markers and the like
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__annotations__ = dict(fn.__annotations__)
    new.__doc__ = fn.__doc__
    return new


_PATCHED: Dict[type, type] = {}


def _functional_class(cls: type) -> type:
    """cls itself, or a subclass whose methods call pycnn's kernels where cls's call torch.nn.functional's."""
    if cls in _PATCHED or cls in _PATCHED.values():
        return _PATCHED.get(cls, cls)
    methods, seen = {}, set()
    for base in cls.__mro__:
        if base is nn.Module or base is object:
            break
        if base.__module__.startswith("torch.") or base.__module__.startswith("pycnn."):
            seen.update(vars(base))
            continue  # torch.nn's own modules and pycnn.nn's twins
        for attr, value in vars(base).items():
            if attr in seen:
                continue  # overridden by a class earlier in the MRO
            seen.add(attr)
            if isinstance(value, types.FunctionType):
                new = _rebound_function(value)
                if new is not None:
                    methods[attr] = new
    if not methods:
        _PATCHED[cls] = cls
        return cls
    patched = type(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                          "__doc__": cls.__doc__, "_pycnn_converted_from": cls, **methods})
    _PATCHED[cls] = patched
    return patched


def _replace_functional(model: nn.Module) -> None:
    for module in model.modules():
        cls = type(module)
        new = _functional_class(cls)
        if new is not cls:
            module.__class__ = new


# --- the entry point ------------------------------------------------------------


def convert(module: nn.Module, *, inplace: bool = False, strict: bool = False) -> nn.Module:
    """`module` with every torch.nn Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d,
    BatchNorm1d and BatchNorm2d replaced by its pycnn.nn twin, and the
    torch.nn.functional conv/pooling/batch-norm calls of its own methods
    redirected to pycnn's kernels (see the module docstring).

    Args:
        inplace: convert `module` itself (and return it, or the twin when `module`
            is itself one of the six layers) instead of a deep copy.
        strict: raise :class:`ConversionError` naming every layer that must stay
            native, instead of warning (nothing is converted then).

    Parameters and buffers are the original tensors (inplace) or the copy's, so
    device, dtype, requires_grad and the training flag carry over.
    """
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError("pycnn.convert takes a Python nn.Module, not a ScriptModule: convert first, then script")
    if not isinstance(module, nn.Module):
        raise TypeError(f"pycnn.convert takes an nn.Module, got {type(module).__name__}")
    skipped: List[Tuple[str, str]] = []
    if strict:
        _check(module, "", skipped)
        if skipped:
            raise ConversionError(skipped)
    if not inplace:
        module = copy.deepcopy(module)
    module = _replace_layers(module, "", skipped)
    _replace_functional(module)
    if skipped:
        warnings.warn(_describe(skipped), stacklevel=2)
    return module


def _check(module: nn.Module, prefix: str, skipped: List[Tuple[str, str]]) -> None:
    for name, child in module.named_modules(prefix=prefix):
        if isinstance(child, tuple(TWINS)) and not isinstance(child, _PYCNN_CLASSES):
            reason = _why_not(child)
            if reason is not None:
                skipped.append((name, reason))


# --- torchvision's classifiers ------------------------------------------------------


def torchvision_input_hw(name: str) -> Tuple[int, int]:
    """A sensible default input size for torchvision classifier `name`: 299x299 for Inception v3 (the
    size it is laid out for; it takes 75x75 and up), 224x224 for the transformers that take no other
    (ViT, MaxViT), else 96x96 (the course's size; the CNNs take 32x32 and up, AlexNet 63x63)."""
    if name == "inception_v3":
        return (299, 299)
    if name.startswith(("vit_", "maxvit")):
        return (224, 224)
    return (96, 96)


def _first_conv(model: nn.Module) -> Tuple[nn.Module, str, nn.Conv2d]:
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                return module, child_name, child
    raise ValueError(f"{type(model).__name__} has no Conv2d to adapt to the input channels")


def adapt_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """The model's first Conv2d (in module order) taking `in_channels` channels: a new layer of the same
    class and geometry, initialised as the class initialises it, or, when the layer has weights for other
    channels that should be kept, use pycnn.finetune's loading (it sums RGB kernels over the channels)."""
    parent, name, conv = _first_conv(model)
    if conv.in_channels == in_channels:
        return model
    if conv.groups != 1:
        raise ValueError(f"the first convolution of {type(model).__name__} is grouped; cannot adapt its channels")
    new = type(conv)(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                     dilation=conv.dilation, groups=1, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                     device=conv.weight.device, dtype=conv.weight.dtype)
    new.train(conv.training)
    setattr(parent, name, new)
    return model


def torchvision_classifier(name: str, num_classes: int = 10, in_channels: int = 3, backend: str = "pycnn",
                           **options) -> nn.Module:
    """torchvision.models.get_model(name) with random weights, `num_classes` outputs and its first
    convolution taking `in_channels`, converted to pycnn's kernels (backend="pycnn") or left native.
    GoogLeNet and Inception v3 are built without their auxiliary heads (so that the model returns
    the logits in training too) unless options say otherwise. Raises ValueError for a name that is
    not one of torchvision's classification models, TypeError for an option the model lacks."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ValueError(f"unknown torchvision classification model {name!r}; the names are those of "
                         f"torchvision.models.list_models(module=torchvision.models), e.g. resnet18, "
                         f"mobilenet_v3_small, efficientnet_b0 (python -c \"import torchvision; "
                         f"print(torchvision.models.list_models(module=torchvision.models))\")")
    if backend not in ("pycnn", "native"):
        raise ValueError(f"unknown backend {backend!r}; expected 'native' or 'pycnn'")
    if name in ("googlenet", "inception_v3"):
        options = {"aux_logits": False, "init_weights": True, **options}
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    adapt_input_channels(model, in_channels)
    if backend == "pycnn":
        model = convert(model, inplace=True)
    model.default_input_size = (in_channels, *torchvision_input_hw(name))
    return model


def checked_input_size(model: nn.Module, side: Optional[int] = None, name: str = "the model") -> Tuple[int, int, int]:
    """(C, side, side), or model.default_input_size when side is None, after one eval-mode forward of a
    zero image of that size (the model's mode is restored): a ValueError naming the model and the size
    when the architecture cannot take it, as pycnn.models' ClassicCNN.checked_input_size."""
    channels, height, width = model.default_input_size
    if side is not None:
        height = width = int(side)
    first = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, height, width, dtype=first.dtype, device=first.device))
    except (RuntimeError, ValueError, IndexError) as error:
        raise ValueError(f"{name} cannot take {height}x{width} inputs: {str(error).strip().splitlines()[0]}") from None
    finally:
        model.train(was_training)
    return channels, height, width
