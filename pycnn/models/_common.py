"""What every model shares: the layer namespaces of the two backends, the
model class (an nn.Sequential of named stages) and the initialisation."""
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
from torch import nn

import pycnn.nn

# The layers a builder takes from its namespace; everything else (Linear,
# activations, Dropout, Flatten, concatenation) always comes from torch.
NAMESPACE_LAYERS = ("Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d", "BatchNorm2d")

BACKENDS = {"pycnn": pycnn.nn, "native": torch.nn}


def layer_namespace(backend: str):
    """pycnn.nn for backend="pycnn", torch.nn for backend="native"."""
    try:
        return BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; expected one of {sorted(BACKENDS)}") from None


def check_positive(name: str, value, *, kind=int) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {value!r}")


def check_probability(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


class ClassicCNN(nn.Sequential):
    """One of the classic CNNs: an nn.Sequential of named stages.

    The stages are the steps ARCHITECTURES.md lists a shape for (``b1``..``b5``,
    ``conv1``/``pool1``, ``flatten``, ...), so ``model.named_children()`` walks
    the model stage by stage and :meth:`stage_shapes` gives the shape after each.
    The forward is nn.Sequential's, which TorchScript and torch.export handle.

    Attributes:
        arch: the registry name ("lenet", "resnet18", ...).
        backend: "pycnn" or "native" (which layer namespace built it).
        default_input_size: (C, H, W) of the input the architecture is laid out for.
    """

    def __init__(self, arch: str, backend: str, default_input_size: Tuple[int, int, int],
                 stages: "OrderedDict[str, nn.Module]"):
        super().__init__(stages)
        self.arch = arch
        self.backend = backend
        self.default_input_size = tuple(int(s) for s in default_input_size)

    def stage_shapes(self, input_size=None, batch: int = 1) -> Dict[str, Tuple[int, ...]]:
        """The output shape (without the batch) after each stage, for an input of
        `input_size` (C, H, W; default: default_input_size), in eval mode and
        without gradients. The model's mode is restored afterwards."""
        size = tuple(input_size or self.default_input_size)
        first = next(self.parameters())
        x = torch.zeros(batch, *size, dtype=first.dtype, device=first.device)
        shapes: Dict[str, Tuple[int, ...]] = OrderedDict()
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for name, stage in self.named_children():
                    x = stage(x)
                    shapes[name] = tuple(x.shape[1:])
        finally:
            self.train(was_training)
        return shapes

    def checked_input_size(self, side: Optional[int] = None) -> Tuple[int, int, int]:
        """(C, side, side), or default_input_size when `side` is None, after
        checking that the architecture takes it: a ValueError naming the model,
        the size and the first layer that cannot otherwise (too small a map for
        a window, a Linear layer laid out for another size)."""
        channels, height, width = self.default_input_size
        if side is not None:
            height = width = int(side)
        try:
            self.stage_shapes((channels, height, width))
        except RuntimeError as error:
            raise ValueError(f"{self.arch} cannot take {height}x{width} inputs: "
                             f"{str(error).splitlines()[0]}") from None
        return channels, height, width

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, backend={self.backend!r}, default_input_size={self.default_input_size}"


def init_weights(model: nn.Module) -> nn.Module:
    """Xavier-uniform weights and zero biases for every Conv2d and Linear layer,
    as the reference training runs initialise them. Batch-norm layers keep
    torch's initialisation (scale 1, shift 0)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):  # pycnn.nn.Conv2d subclasses nn.Conv2d
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def make_model(arch: str, backend: str, default_input_size, stages) -> ClassicCNN:
    """The ClassicCNN of these stages, initialised."""
    return init_weights(ClassicCNN(arch, backend, default_input_size, OrderedDict(stages)))
