"""Pictures of the classic CNNs: their stages, and a trained model's first-layer features.

    from pycnn.models.draw import draw_model, draw_features
    draw_model(pycnn.models.create("resnet18"), "resnet18.png")
    draw_features(model, image, "features.png")        # image: (1, H, W) float in [0, 1]

    python -m pycnn.models draw resnet18 --out resnet18.png
    python -m pycnn.models features lenet_bn --checkpoint runs/lenet_bn/checkpoint.pt --out features.png

:func:`draw_model` draws one box per top-level stage (the stages of
``model.named_children()``, as ``model.stage_shapes()`` walks them), top to
bottom from the input, each with what it is made of, its output shape and its
parameter count (a bar, to scale with the largest stage), from one forward pass
of pycnn.models.summary.

:func:`draw_features` shows the input image and the model's prediction, the
kernels of the first convolution (its first input channel) and the maps they
produce on the image (the first convolution's output, before any activation).

Both render with matplotlib's Agg canvas on a Figure of their own (pyplot's
state and backend are left alone) and write a PNG.
"""
import os
from collections import Counter
from typing import Optional, Sequence

import torch
from torch import nn

from pycnn.models.summary import summary

_COLOURS = {  # face colours of the stage boxes, by what the stage holds
    "conv": "#cfe2f3", "pool": "#fde9c9", "fc": "#d9ead3", "norm": "#ead1dc", "other": "#eeeeee",
}


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError("drawing needs matplotlib: pip install matplotlib") from None
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _leaves(module: nn.Module):
    return [m for m in module.modules() if next(iter(m.children()), None) is None]


def _category(stage: nn.Module) -> str:
    kinds = {type(m).__name__ for m in _leaves(stage)}
    if any("Conv" in k for k in kinds):
        return "conv"
    if "Linear" in kinds:
        return "fc"
    if any("Pool" in k for k in kinds):
        return "pool"
    if any("Norm" in k for k in kinds):
        return "norm"
    return "other"


def _counted(kinds: Sequence[str]) -> str:
    """'Conv2d, ReLU, Conv2d, ReLU, MaxPool2d' -> 'Conv2d, ReLU, Conv2d, ReLU, MaxPool2d';
    runs of one kind -> 'Inception ×2'."""
    parts = []
    for kind in kinds:
        if parts and parts[-1][0] == kind:
            parts[-1][1] += 1
        else:
            parts.append([kind, 1])
    return ", ".join(kind if n == 1 else f"{kind} ×{n}" for kind, n in parts)


def describe_stage(stage: nn.Module) -> str:
    """What a stage is made of, in a few words: its children for an nn.Sequential,
    its layer kinds with counts for another composite module, '' for a single layer."""
    children = list(stage.children())
    if not children:
        return ""
    if isinstance(stage, nn.Sequential):
        text = _counted([type(c).__name__ for c in children])
    else:
        counts = Counter(type(m).__name__ for m in _leaves(stage))
        text = ", ".join(k if n == 1 else f"{k} ×{n}" for k, n in counts.items())
    return text if len(text) <= 60 else text[:57] + "..."


def _shape_text(shape) -> str:
    return "×".join(str(s) for s in shape) if shape else "-"


def draw_model(model: nn.Module, path: str, input_size: Optional[Sequence[int]] = None,
               title: Optional[str] = None) -> str:
    """Draw `model`'s stages with their output shapes and parameter counts into the PNG `path`.

    input_size: (C, H, W) of the input (default: model.default_input_size).
    Returns path. Raises ValueError for a model without named stages."""
    stages = list(model.named_children())
    if not stages:
        raise ValueError("draw_model: the model has no stages (named children) to draw")
    table = summary(model, input_size)
    rows = {}
    for row in table.rows:  # the first row of each top-level stage (a stage or a leaf at depth 0)
        if row.depth == 0:
            rows.setdefault(row.name, row)
    params = [sum(p.numel() for p in stage.parameters()) for _, stage in stages]
    largest = max(max(params), 1)

    count = len(stages) + 1  # the input, then each stage
    figure = _figure(11.0, 0.62 * count + 1.2)
    axes = figure.add_axes([0.01, 0.01, 0.98, 1 - 0.6 / (0.62 * count + 1.2)])
    axes.set_xlim(0, 11)
    axes.set_ylim(count - 0.5, -0.6)
    axes.axis("off")
    axes.text(0.1, -0.45, "stage", fontsize=9, color="#555555")
    axes.text(5.25, -0.45, "output shape", fontsize=9, color="#555555")
    axes.text(7.1, -0.45, "parameters", fontsize=9, color="#555555")

    def box(y, name, detail, colour):
        from matplotlib.patches import FancyBboxPatch
        axes.add_patch(FancyBboxPatch((0.1, y - 0.32), 4.9, 0.64, boxstyle="round,pad=0.02,rounding_size=0.08",
                                      facecolor=colour, edgecolor="#444444", linewidth=0.8))
        axes.text(0.22, y - (0.08 if detail else 0), name, fontsize=10, fontweight="bold", va="center")
        if detail:
            axes.text(0.22, y + 0.16, detail, fontsize=7.5, va="center", color="#333333")

    box(0, "input", "", "#ffffff")
    axes.text(5.25, 0, _shape_text(table.input_size), fontsize=10, va="center", family="monospace")
    for y, ((name, stage), n) in enumerate(zip(stages, params), start=1):
        axes.annotate("", xy=(0.6, y - 0.33), xytext=(0.6, y - 0.67),
                      arrowprops=dict(arrowstyle="->", color="#444444", linewidth=0.8))
        row = rows.get(name)
        box(y, f"{name}  ·  {type(stage).__name__}", describe_stage(stage), _COLOURS[_category(stage)])
        axes.text(5.25, y, _shape_text(row.output_shape if row else None), fontsize=10, va="center",
                  family="monospace")
        if n:
            axes.barh(y, 2.6 * n / largest, left=7.1, height=0.42, color="#6d9eeb")
        axes.text(7.1 + 2.6 * n / largest + 0.08, y, f"{n:,}", fontsize=9, va="center")

    if title is None:
        title = getattr(model, "arch", type(model).__name__)
        if hasattr(model, "backend"):
            title += f" (backend {model.backend})"
    figure.suptitle(f"{title}: input {_shape_text(table.input_size)}, {table.total_params:,} parameters, "
                    f"{table.total_macs / 1e6:,.1f} M multiply-accumulates per sample", fontsize=11)
    return _save(figure, path)


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first nn.Conv2d (pycnn.nn.Conv2d included) in `model`'s module order."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError("the model has no Conv2d layer")


def _grid(count: int):
    """(rows, columns) of a grid of `count` small pictures: two rows from 4, at most 8 columns."""
    columns = count if count < 4 else min(8, (count + 1) // 2)
    return (count + columns - 1) // columns, columns


def draw_features(model: nn.Module, image: torch.Tensor, path: str, label: Optional[int] = None,
                  classes: Optional[Sequence[str]] = None, title: Optional[str] = None,
                  max_channels: int = 32) -> str:
    """Draw the first convolution's kernels and their activation maps on `image` into the PNG `path`.

    image: (C, H, W) float, the model's input size. label: the true class, if known;
    classes: class names for the prediction and label. Shows at most max_channels
    output channels (and only the kernels' first input channel). Returns path."""
    conv = first_conv(model)
    captured = {}
    handle = conv.register_forward_hook(lambda module, args, output: captured.setdefault("maps", output))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            parameter = next(model.parameters())
            logits = model(image.unsqueeze(0).to(parameter.device, parameter.dtype))
    finally:
        handle.remove()
        model.train(was_training)
    maps = captured["maps"][0].float().cpu()
    kernels = conv.weight.detach().float().cpu()[:, 0]
    shown = min(maps.shape[0], max_channels)
    probabilities = torch.softmax(logits[0].float(), 0)
    predicted = int(probabilities.argmax())

    def name(index):
        return classes[index] if classes is not None and 0 <= index < len(classes) else str(index)

    rows, columns = _grid(shown)
    height = max(3.6, 0.95 * rows + 1.7)
    figure = _figure(max(9.0, 3.0 + 2 * 0.9 * columns), height)
    grid = figure.add_gridspec(rows, 1 + 2 * columns + 1, width_ratios=[3.0] + [0.9] * columns + [0.25]
                               + [0.9] * columns, left=0.02, right=0.98, top=1 - 1.0 / height, bottom=0.04,
                               wspace=0.08, hspace=0.15)
    ax = figure.add_subplot(grid[:, 0])
    ax.imshow(image[0].float().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    caption = f"predicted: {name(predicted)} ({float(probabilities[predicted]):.0%})"
    if label is not None:
        caption = f"label: {name(int(label))}\n" + caption
    ax.set_title(caption, fontsize=9)
    ax.axis("off")
    bound = float(kernels[:shown].abs().max()) or 1.0
    for i in range(shown):
        r, c = divmod(i, columns)
        k = figure.add_subplot(grid[r, 1 + c])
        k.imshow(kernels[i].numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound)
        k.set_xticks([]), k.set_yticks([])
        a = figure.add_subplot(grid[r, 2 + columns + c])
        a.imshow(maps[i].numpy(), cmap="viridis")
        a.set_xticks([]), a.set_yticks([])
        if r == 0 and c == 0:
            k.set_title("kernels", fontsize=8, loc="left")
            a.set_title("activations", fontsize=8, loc="left")
        k.set_xlabel(str(i), fontsize=6, labelpad=1)
        a.set_xlabel(str(i), fontsize=6, labelpad=1)
    kh, kw = conv.kernel_size
    total = maps.shape[0]
    more = f", the first {shown} shown" if shown < total else ""
    figure.suptitle(
        (title or getattr(model, "arch", type(model).__name__))
        + f": first convolution, {total} kernels of {kh}×{kw}{more} (input channel 0; red > 0 > blue),\n"
        f"and their {maps.shape[1]}×{maps.shape[2]} activation maps on the image (each on its own colour scale)",
        fontsize=10)
    return _save(figure, path)
