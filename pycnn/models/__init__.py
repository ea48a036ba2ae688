"""The classic CNNs of the course material, on pycnn's operators or natively.

    import pycnn.models
    model = pycnn.models.create("resnet18")                     # pycnn's kernels
    twin = pycnn.models.create("resnet18", backend="native")    # the same architecture on torch.nn
    twin.load_state_dict(model.state_dict())                    # same parameter names
    x = torch.randn(8, *model.default_input_size)

Models (ARCHITECTURES.md gives each layer by layer): lenet, lenet_bn (1x28x28),
alexnet, vgg11, nin (1x224x224), googlenet, resnet18, densenet (1x96x96);
and, beyond the course, resnet9 (1x28x28), the network of pycnn's fastest recipe.

Every model is a :class:`ClassicCNN`, an nn.Sequential of named stages (see
``model.stage_shapes()``), built by one builder per architecture that takes a
layer namespace: with backend="pycnn" every Conv2d, MaxPool2d, AvgPool2d,
AdaptiveAvgPool2d and BatchNorm1d/2d is pycnn.nn's (pycnn's operators forward
and backward); with backend="native" the same builder takes them from
torch.nn. Linear layers, activations, Dropout, Flatten and concatenation come
from torch in both. Every Conv2d and Linear weight is Xavier-uniform, every
bias zero; batch-norm layers start at scale 1, shift 0.

``python -m pycnn.models summary NAME`` prints each layer's output shape,
parameters and multiply-accumulates (see pycnn.models.summary).
"""
from typing import Callable, Dict, List, NamedTuple, Tuple

from pycnn.models import alexnet, densenet, googlenet, lenet, nin, resnet, resnet9, vgg
from pycnn.models._common import BACKENDS, ClassicCNN, init_weights, layer_namespace, make_model, check_positive
from pycnn.models.summary import summary


class ModelSpec(NamedTuple):
    builder: Callable  # (layer namespace, num_classes, in_channels, **options) -> [(stage name, module)]
    input_hw: Tuple[int, int]  # default input height and width


_REGISTRY: Dict[str, ModelSpec] = {
    "lenet": ModelSpec(lenet.build_lenet, lenet.DEFAULT_SIZE),
    "lenet_bn": ModelSpec(lenet.build_lenet_bn, lenet.DEFAULT_SIZE),
    "alexnet": ModelSpec(alexnet.build_alexnet, alexnet.DEFAULT_SIZE),
    "vgg11": ModelSpec(vgg.build_vgg11, vgg.DEFAULT_SIZE),
    "nin": ModelSpec(nin.build_nin, nin.DEFAULT_SIZE),
    "googlenet": ModelSpec(googlenet.build_googlenet, googlenet.DEFAULT_SIZE),
    "resnet18": ModelSpec(resnet.build_resnet18, resnet.DEFAULT_SIZE),
    "densenet": ModelSpec(densenet.build_densenet, densenet.DEFAULT_SIZE),
    # Not one of the course's models: the fast-training network of pycnn's best recipe.
    "resnet9": ModelSpec(resnet9.build_resnet9, resnet9.DEFAULT_SIZE),
}


def list_models() -> List[str]:
    """The names create() accepts, in the order of the course material."""
    return list(_REGISTRY)


def create(name: str, num_classes: int = 10, in_channels: int = 1, backend: str = "pycnn", **options) -> ClassicCNN:
    """Build the model `name` (see list_models()) with Xavier-initialised weights.

    Args:
        num_classes: outputs of the last layer (default 10, Fashion-MNIST).
        in_channels: channels of the input (default 1); default_input_size follows it.
        backend: "pycnn" (pycnn.nn layers: pycnn's operators) or "native" (torch.nn layers).
        options: architecture options, documented in each builder's docstring:
            alexnet, nin: dropout (0.5); vgg11: width_divisor (1; the reference run uses 4),
            dropout (0.5); densenet: growth_rate (32), convs_per_block ((4, 4, 4, 4)).
            resnet9: width (16). lenet, lenet_bn, googlenet, resnet18 take none.

    Raises ValueError for an unknown name or backend, TypeError for an option the
    architecture does not have.
    """
    try:
        spec = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    layers = layer_namespace(backend)
    check_positive("num_classes", num_classes)
    check_positive("in_channels", in_channels)
    try:
        stages = spec.builder(layers, num_classes, in_channels, **options)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise TypeError(f"{name}: {error}; see help(pycnn.models.create) for the options") from None
        raise
    return make_model(name, backend, (in_channels, *spec.input_hw), stages)


__all__ = ["create", "list_models", "summary", "ClassicCNN", "init_weights", "BACKENDS"]
