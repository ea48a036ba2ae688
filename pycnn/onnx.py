"""pycnn's forward operators as standard ONNX, for exporting your own models.

A model built from :mod:`pycnn.nn` layers (or :mod:`pycnn.functional` calls)
exports to a standard ONNX file, with no custom domain and no operator library
to load, by passing this module's translation table to PyTorch's
torch.export-based exporter::

    import torch, pycnn.nn, pycnn.onnx

    model = torch.nn.Sequential(pycnn.nn.Conv2d(1, 8, 3, padding=1), pycnn.nn.BatchNorm2d(8),
                                torch.nn.ReLU(), pycnn.nn.MaxPool2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 14 * 14, 10)).eval()
    torch.onnx.export(model, (torch.rand(1, 1, 28, 28),), "model.onnx", dynamo=True,
                      custom_translation_table=pycnn.onnx.translation_table())

Each function below translates one ``torch.ops.pycnn.*`` forward operator. Its
parameters are named and ordered exactly as the operator's schema in
csrc/pycnn.cpp; tensor parameters are annotated with ONNX tensor types,
attributes with Python types. The functions are plain Python ("trace-only",
onnxscript): the exporter calls them with the graph's values and records the
ONNX nodes they emit, so the graph stays flat (no ONNX functions, only the
default ONNX domain) and runs on stock onnxruntime, TensorRT or Triton.

Exported models are in eval mode, so only the inference forms are translated:
batch_norm with its running statistics (BatchNormalization in inference mode);
max_pool2d's indices are produced (numbered as PyTorch numbers them) but are
dead in an eval model and removed by the exporter's optimiser. A call that
standard ONNX cannot express exactly raises :class:`UnsupportedExport`, naming
the argument and what would export instead.
"""
from typing import Optional, Sequence

from onnxscript import FLOAT
from onnxscript import opset18 as op

import torch


class UnsupportedExport(ValueError):
    """An operator call with arguments that standard ONNX cannot express."""


def _pads(padding: Sequence[int]) -> list:
    # PyTorch pads both sides of each spatial dim by padding[i]; ONNX lists
    # [top, left, bottom, right] (begin of every axis, then end of every axis).
    return [padding[0], padding[1], padding[0], padding[1]]


def corr2d(
    input: FLOAT,
    weight: FLOAT,
    bias: Optional[FLOAT],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> FLOAT:
    """corr2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding,
    int[2] dilation, int groups) -> Tensor"""
    # kernel_shape is left out: ONNX takes it from the weight.
    attributes = dict(group=groups, strides=list(stride), pads=_pads(padding), dilations=list(dilation))
    if bias is None:
        return op.Conv(input, weight, **attributes)
    return op.Conv(input, weight, bias, **attributes)


def max_pool2d(
    input: FLOAT,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    ceil_mode: bool,
) -> tuple:
    """max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding,
    int[2] dilation, bool ceil_mode) -> (Tensor output, Tensor indices)"""
    # ONNX's ceil_mode drops a last window that would start in the right
    # padding, as PyTorch does (onnxruntime >= 1.16 follows the spec here).
    output, flat_indices = op.MaxPool(
        input,
        kernel_shape=list(kernel_size),
        strides=list(stride),
        pads=_pads(padding),
        dilations=list(dilation),
        ceil_mode=int(ceil_mode),
        storage_order=0,
    )
    # ONNX numbers the argmax over the whole tensor ((n*C + c)*H*W + h*W + w);
    # PyTorch within each plane (h*W + w). Unused (and removed) in eval models.
    shape = op.Shape(input)
    plane = op.ReduceProd(op.Slice(shape, op.Constant(value_ints=[2]), op.Constant(value_ints=[4])), keepdims=1)
    indices = op.Mod(flat_indices, plane)
    return output, indices


def avg_pool2d(
    input: FLOAT,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: Optional[int],
) -> FLOAT:
    """avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding,
    bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor"""
    if divisor_override is not None:
        if ceil_mode:
            raise UnsupportedExport(
                "pycnn.avg_pool2d: divisor_override together with ceil_mode=True has no exact "
                "standard-ONNX form (AveragePool has no divisor attribute); use ceil_mode=False"
            )
        # Without ceil_mode every window lies inside the padded input, so an
        # average over the full window (padding counted) times its area is the
        # window's sum; dividing by divisor_override is then PyTorch's result.
        window = kernel_size[0] * kernel_size[1]
        mean = op.AveragePool(
            input,
            kernel_shape=list(kernel_size),
            strides=list(stride),
            pads=_pads(padding),
            ceil_mode=0,
            count_include_pad=1,
        )
        return op.Mul(mean, op.CastLike(op.Constant(value_float=window / divisor_override), input))
    return op.AveragePool(
        input,
        kernel_shape=list(kernel_size),
        strides=list(stride),
        pads=_pads(padding),
        ceil_mode=int(ceil_mode),
        count_include_pad=int(count_include_pad),
    )


def adaptive_avg_pool2d(input: FLOAT, output_size: Sequence[int]) -> FLOAT:
    """adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor"""
    if list(output_size) == [1, 1]:
        return op.GlobalAveragePool(input)
    shape = input.shape
    dims = None if shape is None or len(shape) != 4 else shape[2:]
    if dims is None or not all(isinstance(d, int) for d in dims):
        raise UnsupportedExport(
            f"pycnn.adaptive_avg_pool2d: output size {tuple(output_size)} needs a static input "
            "height and width to export to ONNX"
        )
    height, width = dims
    out_h, out_w = output_size
    if height % out_h or width % out_w:
        raise UnsupportedExport(
            f"pycnn.adaptive_avg_pool2d: input {height}x{width} is not divisible by the output size "
            f"{out_h}x{out_w}; only such sizes (or 1x1) map to ONNX AveragePool/GlobalAveragePool"
        )
    kernel = [height // out_h, width // out_w]
    return op.AveragePool(input, kernel_shape=kernel, strides=kernel, pads=[0, 0, 0, 0])


def batch_norm(
    input: FLOAT,
    weight: Optional[FLOAT],
    bias: Optional[FLOAT],
    running_mean: Optional[FLOAT],
    running_var: Optional[FLOAT],
    training: bool,
    momentum: float,
    eps: float,
) -> tuple:
    """batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean,
    Tensor? running_var, bool training, float momentum, float eps)
    -> (output, save_mean, save_invstd, new_running_mean, new_running_var)"""
    if training or running_mean is None or running_var is None:
        raise UnsupportedExport(
            "pycnn.batch_norm: only inference (training=False with running statistics) exports to "
            "ONNX; call model.eval() before exporting"
        )
    ones_like_stats = op.Expand(op.CastLike(op.Constant(value_float=1.0), running_var), op.Shape(running_var))
    if weight is None:
        weight = ones_like_stats
    if bias is None:
        bias = op.Sub(ones_like_stats, ones_like_stats)
    output = op.BatchNormalization(input, weight, bias, running_mean, running_var, epsilon=eps)
    # The statistics outputs are dead in an eval graph (the optimiser removes
    # them); they hold what the kernel returns in eval mode.
    save_invstd = op.Reciprocal(op.Sqrt(op.Add(running_var, op.CastLike(op.Constant(value_float=eps), running_var))))
    return output, op.Identity(running_mean), save_invstd, op.Identity(running_mean), op.Identity(running_var)


def translation_table() -> dict:
    """{torch.ops.pycnn.<op>.default: translation} for every forward operator:
    the ``custom_translation_table`` of ``torch.onnx.export(..., dynamo=True)``."""
    ops = torch.ops.pycnn
    return {
        ops.corr2d.default: corr2d,
        ops.max_pool2d.default: max_pool2d,
        ops.avg_pool2d.default: avg_pool2d,
        ops.adaptive_avg_pool2d.default: adaptive_avg_pool2d,
        ops.batch_norm.default: batch_norm,
    }


__all__ = ["UnsupportedExport", "translation_table", "corr2d", "max_pool2d", "avg_pool2d",
           "adaptive_avg_pool2d", "batch_norm"]
