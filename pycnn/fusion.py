"""Fused inference: fold each batch-norm that directly follows a convolution
into the convolution's weight and bias.

    import pycnn
    model = pycnn.models.create("resnet18").eval()      # trained, in eval mode
    fused = pycnn.fuse(model)                            # a copy; model is untouched
    fused, report = pycnn.fuse(model, report=True)       # ... and what was folded, what was not and why
    print(report)

In eval mode, BatchNorm2d(conv(x)) is, per output channel c,
``(conv(x)[c] - mean[c]) * gamma[c] / sqrt(var[c] + eps) + beta[c]``: an affine map
of the convolution's output, so it folds into the convolution (as onnxruntime
and torch.fx's fuser do):

    scale = gamma / sqrt(running_var + eps)
    W'[c] = W[c] * scale[c]
    b'[c] = (b[c] - running_mean[c]) * scale[c] + beta[c]          (b = 0 without a bias)

computed in float64 and cast back to the parameters' dtype. The batch-norm
module is replaced by an ``nn.Identity`` at its place in the module tree, so the
model keeps its class, its structure, its other state_dict keys and its
TorchScript, torch.export and ONNX paths; the folded batch-norm's keys leave the
state_dict. A fused model is for inference: training it trains the folded
weights, not a batch-norm.

**Only where it is exact.** A pair is folded when the batch-norm's only input is
the convolution's output and nothing else reads that output. That is read off
the data flow: the model is traced with torch.fx (convolutions and batch-norms
kept as leaves), and a convolution's call must have exactly one user, a call of
a batch-norm with that as its only argument, each module called once. That
covers the pairs inside nn.Sequential stages (LeNet-BN, DenseNet's stem) and
inside custom blocks (ResNet's residual blocks, torchvision's BasicBlock and
Bottleneck). A model that does not trace (data-dependent Python control flow)
falls back to structure: consecutive children of a plain nn.Sequential (one
whose forward is nn.Sequential's), the convolution first. Either way a pair is
left alone, and reported, when:

* the batch-norm keeps no running statistics (``track_running_stats=False``:
  it normalises with the batch's statistics in eval too, which no fixed weight
  reproduces);
* either module is shared (registered under two names, or called twice) or has
  hooks (they would see other tensors after folding);
* the channel counts disagree.

``affine=False`` batch-norms fold (scale 1, shift 0). Batch-norms after anything
else -- a Linear, a concatenation, DenseNet's pre-activation BN-ReLU-Conv --
stay, and the report lists them.

Refused with ValueError: a model in training mode, or a batch-norm in training
mode (batch statistics; nothing to fold). TypeError: a scripted model (fuse
before torch.jit.script).
"""
import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["fuse", "FuseReport"]


@dataclass
class FuseReport:
    """What :func:`fuse` did.

    Attributes:
        folded: (convolution, batch-norm) qualified names of each folded pair.
        skipped: (batch-norm, reason) for each batch-norm left in the model.
        method: "fx" (the data flow of a torch.fx trace) or "sequential" (the
            fallback for a model that does not trace: consecutive children of
            nn.Sequential containers).
        trace_error: why the torch.fx trace failed, when method is "sequential".
    """

    folded: List[Tuple[str, str]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    method: str = "fx"
    trace_error: Optional[str] = None

    def __str__(self) -> str:
        lines = [f"pycnn.fuse ({self.method}): {len(self.folded)} batch-norm(s) folded, "
                 f"{len(self.skipped)} left"]
        if self.trace_error:
            lines.append(f"  (torch.fx could not trace the model: {self.trace_error})")
        lines += [f"  folded  {bn} into {conv}" for conv, bn in self.folded]
        lines += [f"  left    {bn}: {reason}" for bn, reason in self.skipped]
        return "\n".join(lines)


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d)  # pycnn.nn.Conv2d subclasses it


def _is_bn(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm)


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer with every convolution and batch-norm, and every pycnn.nn
    layer (they live outside torch.nn, which fx keeps as leaves by default), kept
    as a leaf call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (_is_conv(m) or _is_bn(m) or type(m).__module__ == "pycnn.nn"
                or super().is_leaf_module(m, qualname))


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _describe(model: nn.Module, source) -> str:
    if not isinstance(source, torch.fx.Node):
        return "not a single tensor argument"
    if source.op == "placeholder":
        return "the model's input"
    if source.op == "call_module":
        return f"the output of {source.target} ({type(model.get_submodule(source.target)).__name__})"
    target = source.target
    return f"the result of {getattr(target, '__name__', target)}"


def _pairs_by_fx(model: nn.Module) -> Tuple[Dict[str, str], Dict[str, str]]:
    """{bn name: conv name} of the pairs whose data flow allows folding, and
    {bn name: reason} for batch-norms whose input is a convolution that cannot be."""
    graph = _Tracer().trace(model)
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs, reasons = {}, {}
    for node in graph.nodes:
        if node.op != "call_module" or not _is_bn(model.get_submodule(node.target)):
            continue
        source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and _is_conv(model.get_submodule(source.target))):
            reasons[node.target] = f"its input is {_describe(model, source)}, not a convolution's output"
            continue
        if len(source.users) != 1:
            others = ", ".join(sorted(str(u) for u in source.users if u is not node))
            reasons[node.target] = f"the output of {source.target} is also used elsewhere ({others})"
        elif calls[node.target] != 1 or calls[source.target] != 1:
            reasons[node.target] = f"{source.target} or {node.target} is called more than once"
        else:
            pairs[node.target] = source.target
    return pairs, reasons


def _pairs_by_sequential(model: nn.Module) -> Dict[str, str]:
    """{bn name: conv name} of consecutive (conv, batch-norm) children of plain nn.Sequentials."""
    pairs = {}
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
            continue
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if _is_conv(conv) and _is_bn(bn):
                dot = f"{prefix}." if prefix else ""
                pairs[dot + bn_name] = dot + conv_name
    return pairs


def _why_not(conv: nn.Module, bn: _BatchNorm) -> Optional[str]:
    if bn.running_mean is None or bn.running_var is None:
        return ("track_running_stats=False: it normalises with the batch's statistics in eval too, "
                "which no fixed weight reproduces")
    if bn.num_features != conv.out_channels:
        return f"{bn.num_features} features after a convolution of {conv.out_channels} channels"
    if _has_hooks(conv) or _has_hooks(bn):
        return "a hook is registered on the convolution or the batch-norm"
    return None


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: _BatchNorm) -> None:
    """conv's weight and bias absorb bn's eval-mode affine map (in float64)."""
    weight = conv.weight
    dtype = weight.dtype
    var = bn.running_var.to(torch.float64)
    mean = bn.running_mean.to(torch.float64)
    gamma = bn.weight.to(torch.float64) if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.to(torch.float64) if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.to(torch.float64) if conv.bias is not None else torch.zeros_like(mean)
    new_weight = weight.to(torch.float64) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    new_bias = (bias - mean) * scale + beta
    weight.copy_(new_weight.to(dtype))
    if conv.bias is not None:
        conv.bias.copy_(new_bias.to(conv.bias.dtype))
    else:
        conv.bias = nn.Parameter(new_bias.to(dtype), requires_grad=weight.requires_grad)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fuse(model: nn.Module, *, inplace: bool = False, report: bool = False
         ) -> Union[nn.Module, Tuple[nn.Module, FuseReport]]:
    """Fold every batch-norm that directly follows a convolution into it (see the module docstring).

    Args:
        model: an nn.Module in eval mode (pycnn.nn layers, a pycnn.models model, a
            pycnn.convert-ed model; torch.nn's Conv2d and BatchNorm2d fold the same way).
        inplace: fold into `model` itself instead of a deep copy.
        report: also return a :class:`FuseReport` of what was folded and what was left, and why.

    Returns the fused model (a copy unless inplace), or (model, report) when report=True.
    Raises ValueError for a model or batch-norm in training mode, TypeError for a scripted model.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("pycnn.fuse: a scripted model cannot be fused; fuse first, then torch.jit.script")
    if not isinstance(model, nn.Module):
        raise TypeError(f"pycnn.fuse: expected an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("pycnn.fuse: the model is in training mode (batch-norm uses batch statistics); "
                         "call model.eval() first")
    training = [name for name, m in model.named_modules() if _is_bn(m) and m.training]
    if training:
        raise ValueError(f"pycnn.fuse: batch-norm {', '.join(training)} in training mode "
                         "(batch statistics, nothing to fold); call model.eval() first")
    if not inplace:
        model = copy.deepcopy(model)

    result = FuseReport()
    try:
        pairs, reasons = _pairs_by_fx(model)
    except Exception as error:  # noqa: BLE001  (any trace failure: use the structural fallback)
        result.method = "sequential"
        result.trace_error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        pairs, reasons = _pairs_by_sequential(model), {}

    names: Dict[int, List[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    for name, module in model.named_modules():
        if not _is_bn(module):
            continue
        conv_name = pairs.get(name)
        if conv_name is None:
            result.skipped.append((name, reasons.get(name, "its input is not (only) a convolution's output")))
            continue
        conv = model.get_submodule(conv_name)
        why = _why_not(conv, module)
        if why is None and (len(names[id(conv)]) > 1 or len(names[id(module)]) > 1):
            why = "the convolution or the batch-norm is shared (registered under more than one name)"
        if why is not None:
            result.skipped.append((name, why))
            continue
        _fold(conv, module)
        _set_submodule(model, name, nn.Identity())
        result.folded.append((conv_name, name))
    return (model, result) if report else model
