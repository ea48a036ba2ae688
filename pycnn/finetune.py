"""Fine-tuning: start from trained weights, re-initialise what does not fit,
freeze the bottom, and train the new output layer faster than the body (the
course's recipe: a pretrained network, a new output layer at ten times the
body's learning rate, optionally frozen bottom layers).

    report = load_init(model, "runs/resnet18/checkpoint.pt")   # or a state_dict, or torchvision's file
    report = load_torchvision_weights(model, "ResNet18_Weights.IMAGENET1K_V1")
    frozen = freeze(model, ["conv1", "layer1"])               # parameter-name prefixes
    groups = parameter_groups(model, lr=0.01, head_lr_mult=10) # for any torch.optim optimizer

``python -m pycnn.train`` exposes them as --init PATH, --weights NAME,
--freeze PREFIX[,PREFIX...] and --head-lr-mult X.

Loading is by parameter name. A tensor whose shape differs from the model's --
the output layer of a model trained for other classes -- keeps the model's
fresh initialisation and is reported, except a first convolution whose only
difference is its input channels (RGB weights for grey images): its kernels
are summed over the input channels, so that a grey image x gives what the RGB
image (x, x, x) gave. Names the file has and the model lacks, and the reverse,
are reported too; none of it is silent.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence

import torch


@dataclasses.dataclass
class InitReport:
    """What load_init did with each tensor of the file."""

    loaded: List[str] = dataclasses.field(default_factory=list)
    adapted: List[str] = dataclasses.field(default_factory=list)  # input channels summed
    reinitialised: List[str] = dataclasses.field(default_factory=list)  # shape mismatch: the model's own init kept
    missing: List[str] = dataclasses.field(default_factory=list)  # in the model, not in the file
    unexpected: List[str] = dataclasses.field(default_factory=list)  # in the file, not in the model

    def lines(self) -> List[str]:
        def names(items):
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        out = [f"loaded {len(self.loaded)} tensors"]
        if self.adapted:
            out.append(f"adapted to the input channels (RGB kernels summed): {names(self.adapted)}")
        if self.reinitialised:
            out.append(f"re-initialised (shape differs from the file's): {names(self.reinitialised)}")
        if self.missing:
            out.append(f"not in the file (kept as initialised): {names(self.missing)}")
        if self.unexpected:
            out.append(f"in the file but not in the model (ignored): {names(self.unexpected)}")
        return out


def _state_dict_of(obj, path: str) -> Dict[str, torch.Tensor]:
    """A pycnn checkpoint ({"model": state_dict, ...}), a plain state_dict, or torchvision's weights file."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a pycnn checkpoint, a state_dict or a torchvision weights file")
    # Weights saved from a DistributedDataParallel or torch.compile wrapper.
    for prefix in ("module.", "_orig_mod."):
        if obj and all(key.startswith(prefix) for key in obj):
            obj = {key[len(prefix):]: value for key, value in obj.items()}
    return obj


def load_state(model: torch.nn.Module, state: Dict[str, torch.Tensor], new_head: bool = False) -> InitReport:
    """Copy `state` into `model` by name, as the module docstring says; the report.

    new_head: keep the output layer's fresh initialisation even where its shape
    fits (a model trained on other classes of the same count: Fashion-MNIST's
    classes 0-4, fine-tuned on 5-9); reported as re-initialised."""
    report = InitReport()
    own = model.state_dict()
    head = head_prefix(model) if new_head else None
    if new_head and head is None:
        raise ValueError("--new-head: the model has no output layer (no Linear or Conv2d) to re-initialise")
    for name, value in state.items():
        if name not in own:
            report.unexpected.append(name)
            continue
        target = own[name]
        if head is not None and name.startswith(head + "."):
            report.reinitialised.append(name)
            continue
        if target.shape == value.shape:
            report.loaded.append(name)
        elif (target.dim() == 4 and value.dim() == 4 and target.shape[0] == value.shape[0]
              and target.shape[2:] == value.shape[2:] and target.shape[1] == 1):
            value = value.sum(dim=1, keepdim=True)  # grey = (x, x, x): the RGB kernels add up
            report.adapted.append(name)
        else:
            report.reinitialised.append(name)
            continue
        with torch.no_grad():
            target.copy_(value.to(dtype=target.dtype, device=target.device))
    report.missing = [name for name in own if name not in state]
    return report


def load_init(model: torch.nn.Module, path: str, new_head: bool = False) -> InitReport:
    """Initialise `model` from the weights file `path` (see load_state)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--init {path}: no such file")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return load_state(model, _state_dict_of(obj, path), new_head=new_head)


def load_torchvision_weights(model: torch.nn.Module, name: str, new_head: bool = False) -> InitReport:
    """Initialise `model` from torchvision's named weights (e.g.
    "ResNet18_Weights.IMAGENET1K_V1"), downloaded into torch's hub cache when
    online; offline, a FileNotFoundError that names the file to fetch and where
    to put it."""
    import torchvision

    try:
        weights = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"--weights {name}: not a torchvision weights name "
                         "(for example ResNet18_Weights.IMAGENET1K_V1; torchvision.models.list_models() "
                         "and get_model_weights(NAME) list them)") from None
    filename = os.path.basename(weights.url)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(folder, filename)
    if not os.path.isfile(cached):
        try:
            torch.hub.load_state_dict_from_url(weights.url, model_dir=folder, progress=False, check_hash=True)
        except OSError as error:  # URLError is an OSError: offline
            raise FileNotFoundError(
                f"--weights {name}: {filename} is not in {folder} and cannot be downloaded here ({error}); "
                f"fetch {weights.url} on a machine that is online and copy it to {cached}") from None
    state = _state_dict_of(torch.load(cached, map_location="cpu", weights_only=True), cached)
    return load_state(model, state, new_head=new_head)


def freeze(model: torch.nn.Module, prefixes: Sequence[str]) -> List[str]:
    """Stop training every parameter whose name starts with one of `prefixes`
    (a module's name: "conv1", "layer1", "features.0"); the frozen names.
    A prefix that names nothing is an error listing the model's top-level names."""
    names = [name for name, _ in model.named_parameters()]
    frozen = []
    for prefix in prefixes:
        prefix = prefix.strip().rstrip(".")
        matched = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not matched:
            top = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"--freeze {prefix!r}: no parameter of the model is under it; its top-level "
                             f"modules: {', '.join(top)}")
        frozen.extend(matched)
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return frozen


def head_prefix(model: torch.nn.Module) -> Optional[str]:
    """The output layer's name: the last Linear module (a 1x1 Conv2d for models
    that end in one, as SqueezeNet does), or None for a model without either."""
    last_linear = last_conv = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            last_linear = name
        elif isinstance(module, torch.nn.Conv2d):
            last_conv = name
    return last_linear if last_linear is not None else last_conv


def parameter_groups(model: torch.nn.Module, lr: float, head_lr_mult: float = 1.0,
                     head: Optional[str] = None) -> List[dict]:
    """Optimizer parameter groups: the body at `lr`, the output layer (`head`,
    default head_prefix(model)) at lr * head_lr_mult (one group when that is
    1); frozen parameters left out."""
    if head_lr_mult == 1.0:  # one group, as an optimizer of model.parameters() has
        trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
        if not trainable:
            raise ValueError("every parameter is frozen: nothing would train (check --freeze)")
        return [{"params": trainable, "lr": lr}]
    head = head if head is not None else head_prefix(model)
    body, top = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        in_head = head is not None and (name == head or name.startswith(head + "."))
        (top if in_head else body).append(parameter)
    groups = [{"params": body, "lr": lr, "name": "body"}] if body else []
    if top:
        groups.append({"params": top, "lr": lr * head_lr_mult, "name": f"head ({head})"})
    if not groups:
        raise ValueError("every parameter is frozen: nothing would train (check --freeze)")
    return groups


__all__ = ["InitReport", "load_state", "load_init", "load_torchvision_weights", "freeze", "head_prefix",
           "parameter_groups"]
