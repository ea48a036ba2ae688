"""A layer-by-layer table of a model: output shape, parameters and
multiply-accumulates (MACs) of every layer, with totals.

    print(pycnn.models.summary(pycnn.models.create("lenet")))
    python -m pycnn.models summary lenet

One forward pass of a single sample (batch 1, eval mode, no gradients; the
model's mode is restored) with forward hooks on every leaf module and on the
model's top-level stages. Rows come in execution order: a stage row (not
indented) gives the stage's output shape and the totals of its layers; the
layers under it follow, indented, with their dotted module names (so the
parallel paths of an Inception block show as b3.0.p1.0, b3.0.p2.0, ...).

MACs are per sample and counted for Conv2d (output elements × in_channels/groups
× kh × kw) and Linear (in_features × out_features) only — the multiply-adds of
the matrix products that dominate the compute. Bias additions, batch-norm,
pooling, activations, residual additions and concatenations count 0.
Parameters are each layer's own weights and biases (batch-norm running
statistics are buffers, not parameters); a layer called more than once counts
its parameters at its first call.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import nn


@dataclass
class Row:
    name: str  # dotted module name
    kind: str  # class name
    depth: int  # 0: a top-level stage, 1: a layer inside one
    output_shape: Optional[Tuple[int, ...]] = None  # without the batch
    params: int = 0
    macs: int = 0
    is_stage: bool = False  # a top-level stage with layers under it (its figures are their totals)


@dataclass
class Summary:
    title: str
    input_size: Tuple[int, ...]
    rows: List[Row] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_macs: int = 0

    @property
    def layer_rows(self) -> List[Row]:
        """The rows of leaf layers (stage rows excluded): their params and MACs add up to the totals."""
        return [r for r in self.rows if not r.is_stage]

    def __str__(self) -> str:
        return format_summary(self)


def _shape(output) -> Optional[Tuple[int, ...]]:
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if isinstance(output, torch.Tensor):
        return tuple(output.shape[1:])
    return None


def layer_macs(module: nn.Module, output) -> int:
    """Multiply-accumulates per sample of one call of `module` that produced `output`."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.dim() == 0:
        return 0
    per_sample = output.numel() // max(1, output.shape[0])
    if isinstance(module, nn.Conv2d):  # pycnn.nn.Conv2d included
        kh, kw = module.kernel_size
        return per_sample * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features  # = in_features × out_features per output row
    return 0


def summary(model: nn.Module, input_size=None, device=None, dtype=None) -> Summary:
    """Run one sample of size `input_size` (C, H, W; default model.default_input_size)
    through `model` and tabulate every layer. See the module docstring for what is counted."""
    if input_size is None:
        input_size = getattr(model, "default_input_size", None)
        if input_size is None:
            raise ValueError("input_size is required for a model without default_input_size")
    input_size = tuple(int(s) for s in input_size)
    first = next(iter(model.parameters()), None)
    device = device or (first.device if first is not None else "cpu")
    dtype = dtype or (first.dtype if first is not None else torch.float32)

    rows: List[Row] = []
    stage_rows = {}
    counted = set()
    handles = []

    def leaf_hook(name, depth):
        def hook(module, args, output):
            params = 0
            if id(module) not in counted:
                counted.add(id(module))
                params = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append(Row(name, type(module).__name__, depth, _shape(output), params, layer_macs(module, output)))
        return hook

    def stage_pre_hook(name):
        def hook(module, args):
            row = Row(name, type(module).__name__, 0, is_stage=True)
            stage_rows.setdefault(name, []).append(row)
            rows.append(row)
        return hook

    def stage_hook(name):
        def hook(module, args, output):
            stage_rows[name][-1].output_shape = _shape(output)
        return hook

    top_level = dict(model.named_children())
    for name, module in model.named_modules():
        if not name:
            continue
        if next(iter(module.children()), None) is None:  # a leaf
            depth = 0 if name in top_level else 1
            handles.append(module.register_forward_hook(leaf_hook(name, depth)))
        elif name in top_level:
            handles.append(module.register_forward_pre_hook(stage_pre_hook(name)))
            handles.append(module.register_forward_hook(stage_hook(name)))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    # A stage's figures: the totals of the layer rows between it and the next stage row.
    current = None
    for row in rows:
        if row.is_stage:
            current = row
        elif current is not None and row.depth == 1:
            current.params += row.params
            current.macs += row.macs
        else:
            current = None

    title = f"{getattr(model, 'arch', type(model).__name__)}"
    if hasattr(model, "backend"):
        title += f" (backend {model.backend})"
    result = Summary(title, input_size, rows)
    result.total_params = sum(p.numel() for p in model.parameters())
    result.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result.total_macs = sum(r.macs for r in result.layer_rows)
    return result


def _format_shape(shape) -> str:
    return "x".join(str(s) for s in shape) if shape is not None else "-"


def format_summary(s: Summary) -> str:
    header = ("Layer", "Type", "Output shape", "Params", "MACs")
    table = [header]
    for r in s.rows:
        indent = "  " * r.depth
        table.append((indent + r.name, r.kind, _format_shape(r.output_shape), f"{r.params:,}", f"{r.macs:,}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    right = (False, False, True, True, True)

    def line(cells):
        return "  ".join(c.rjust(w) if rj else c.ljust(w) for c, w, rj in zip(cells, widths, right)).rstrip()

    rule = "-" * len(line(header))
    lines = [f"{s.title}: input {_format_shape(s.input_size)}, one sample", rule, line(header), rule]
    lines += [line(row) for row in table[1:]]
    lines += [
        rule,
        f"Total parameters:      {s.total_params:,}"
        + (f" ({s.trainable_params:,} trainable)" if s.trainable_params != s.total_params else ""),
        f"Total MACs per sample: {s.total_macs:,} ({s.total_macs / 1e6:,.2f} M)",
        "Stage rows (not indented) total the layers under them. MACs: Conv2d and Linear only;",
        "bias, batch-norm, pooling, activations, additions and concatenations count 0.",
    ]
    return "\n".join(lines)
