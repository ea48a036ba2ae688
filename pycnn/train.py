"""Train a classic CNN on Fashion-MNIST with pycnn's kernels.

    python -m pycnn.train --model lenet                      # the reference recipe, 10 epochs
    python -m pycnn.train --model lenet_bn --recipe best     # the improved recipe (RECIPES below)
    python -m pycnn.train --model lenet --out runs/x --resume
    torchrun --nproc_per_node 2 -m pycnn.train --model lenet --device cpu   # DistributedDataParallel
    python -m pycnn.train --model tv:resnet18 --resize 32    # any torchvision classifier, on pycnn's kernels

--model tv:NAME builds torchvision's classifier NAME (torchvision.models.list_models()
names them) with random weights and --num-classes outputs, its first convolution
taking Fashion-MNIST's one channel, converted to pycnn's kernels by pycnn.convert
(--backend native leaves it on torch.nn); GoogLeNet and Inception v3 without their
auxiliary heads. Its default input size is 96x96 (Inception v3 299x299; ViT and
MaxViT 224x224), and --resize is checked against the architecture as for pycnn's
own models. --model-option KEY=VALUE goes to torchvision's constructor
(e.g. dropout=0.3, width_mult=0.5). The recipe: --recipe reference (SGD lr 0.05,
batch 128, 10 epochs, constant); there is no best recipe for tv: models.

Writes into --out (default runs/NAME), rank 0 only, after every epoch:
  metrics.json    a list of one record per epoch: epoch, train_loss, train_acc, test_acc,
                  examples_per_sec (training examples per second, all ranks), elapsed_sec, lr
  checkpoint.pt   {"model", "optimizer", "scheduler", "scaler", "epoch", "config", "metrics",
                   "rng", "elapsed_sec", "format"} -- written to a temporary file, then renamed
  curves.png      training loss, training and test accuracy per epoch

--resume continues from the last completed epoch; the run then ends exactly as
an uninterrupted one would (data order and augmentation depend only on
(seed, epoch); the torch/numpy/python RNG states are saved). Options not given
on the command line are taken from the checkpoint; given ones must match it,
except --epochs (which may extend a constant-schedule run) and the runtime
options (--device, --workers, --quiet, --data-dir, --download, --out).

Recipes (--recipe; every option can still be overridden). reference: the
course's runs (ARCHITECTURES.md): SGD, no momentum or weight decay, constant
lr, 10 epochs, batch/lr per model (vgg11 with width_divisor=4), input resized
(bilinear) to the model's input size. best: measured where a 2-core CPU could
run it (final-epoch test accuracy of 10-epoch runs, --workers 0; the LeNets
with --threads 1). ResNet-18 trains at Fashion-MNIST's own 28x28, DenseNet
(which needs at least 29x29: at 28x28 its last transition would pool a 1x1 map)
and GoogLeNet at 32x32, instead of 96x96: 9 to 12 times less arithmetic, which
made them trainable on that CPU.
AlexNet, VGG-11 and NiN (224x224) have no measured improved recipe.

  model      recipe     options                                        seeds: test acc
  lenet      reference  sgd lr 0.9 batch 256 constant                  0: 0.808  1: 0.813   (course: 0.779)
  lenet      best       adam lr 0.02 batch 64 onecycle                 0: 0.901  1: 0.900
  lenet_bn   reference  sgd lr 1.0 batch 256 constant                  0: 0.885  1: 0.816  2: 0.625 (course: 0.853 / 0.863)
  lenet_bn   best       sgd momentum 0.9 lr 0.2 batch 64 onecycle      0: 0.907  1: 0.907
  resnet18   best       sgd momentum 0.9 lr 0.1 wd 5e-4 batch 128      0: 0.918   (course, 96x96: 0.915)
                        onecycle augment resize 28
  densenet   best       the same, resize 32                            0: 0.917   (course, 96x96: 0.885)
  googlenet  best       the same with lr 0.02, resize 32               0: 0.879   (course, 96x96: 0.869)
  resnet9    best       14 epochs, sgd momentum 0.9 lr 0.4 wd 5e-4     0: 0.944  1: 0.942  (17-18.5 CPU minutes;
                        batch 256 onecycle, label smoothing 0.1,                    not a course model)
                        augment flip-crop, tta

(LeNet-BN's reference recipe is erratic at test time -- lr 1.0 moves the
weights faster than the running statistics follow -- and the native backend
gives the same numbers to 1e-3 on the same seeds.)

Exit status: 0 when the run completes; 2 for a user error (missing data, bad
option, corrupt or mismatched checkpoint), 3 when the loss becomes NaN or
infinite; each with a one-line message on stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import pycnn.models
from pycnn import data as pdata
from pycnn import finetune
from pycnn.augment import DEFAULT_PRESET, PRESET_HELP, presets_help

PROG = "pycnn.train"
TORCHVISION_PREFIX = "tv:"
# The reference recipe of any torchvision classifier (no course run to follow).
TORCHVISION_REFERENCE = dict(batch_size=128, lr=0.05)
CHECKPOINT_FORMAT = 1
CACHE_DATA_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                              "pycnn", "fashion-mnist")

# The reference recipes of the course material (ARCHITECTURES.md): SGD without
# momentum or weight decay, constant learning rate, 10 epochs, cross-entropy;
# resize = the model's default input size.
REFERENCE = {
    "lenet": dict(batch_size=256, lr=0.9),
    "lenet_bn": dict(batch_size=256, lr=1.0),
    "alexnet": dict(batch_size=128, lr=0.01),
    "vgg11": dict(batch_size=128, lr=0.05, model_options={"width_divisor": 4}),
    "nin": dict(batch_size=128, lr=0.1),
    "googlenet": dict(batch_size=128, lr=0.1),
    "resnet18": dict(batch_size=256, lr=0.05),
    "densenet": dict(batch_size=256, lr=0.1),
    # Not a course model: its reference is ResNet-18's, for a like-for-like baseline.
    "resnet9": dict(batch_size=256, lr=0.05),
}
COMMON_DEFAULTS = dict(epochs=10, optimizer="sgd", momentum=0.0, weight_decay=0.0, schedule="constant",
                       augment="none", label_smoothing=0.0, seed=0, backend="pycnn", model_options={},
                       limit_train=None, limit_test=None, amp=False, resize=None, num_classes=None,
                       init=None, weights=None, freeze=[], head_lr_mult=1.0, classes=None, new_head=False,
                       tta=False)
# What a checkpoint written before an option existed means by its absence.
LATER_OPTION_DEFAULTS = dict(num_classes=10, init=None, weights=None, freeze=[], head_lr_mult=1.0, classes=None,
                             new_head=False, tta=False)
# The improved recipes (--recipe best), measured on the LeNets with 10 epochs on
# the CPU: one-cycle learning rate (30% warm-up, cosine annealing), batch 64;
# Adam for the sigmoid LeNet, SGD with momentum for LeNet-BN. No weight decay,
# label smoothing or augmentation: in 10 epochs these small models underfit
# (tried on LeNet-BN: wd 5e-4 + label smoothing 0.1 at batch 128 gave 0.894).
# ResNet-18, DenseNet, GoogLeNet: one-cycle SGD with momentum, weight decay and
# augmentation (these models overfit without them), at 28x28 / 32x32 so that a
# CPU trains them in 30-40 minutes; GoogLeNet, which has no batch-norm, at a
# fifth of the learning rate. One seed each, no search: a GPU may find better.
BEST = {
    "lenet": dict(batch_size=64, optimizer="adam", lr=0.02, schedule="onecycle"),
    "lenet_bn": dict(batch_size=64, optimizer="sgd", lr=0.2, momentum=0.9, schedule="onecycle"),
    "resnet18": dict(batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                     schedule="onecycle", augment=True, resize=28),
    "densenet": dict(batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                     schedule="onecycle", augment=True, resize=32),
    "googlenet": dict(batch_size=128, optimizer="sgd", lr=0.02, momentum=0.9, weight_decay=5e-4,
                      schedule="onecycle", augment=True, resize=32),
    # The fast route past 0.94: ResNet-9 at 28x28 with the fast CIFAR-10 recipes'
    # ingredients -- a high one-cycle rate, label smoothing, flip-and-translate,
    # mirror-image test-time augmentation -- in 14 epochs (under 20 CPU minutes).
    "resnet9": dict(epochs=14, batch_size=256, optimizer="sgd", lr=0.4, momentum=0.9, weight_decay=5e-4,
                    schedule="onecycle", augment="flip-crop", label_smoothing=0.1, tta=True),
}
RECIPES = {"reference": REFERENCE, "best": BEST}

# Options that define the training recipe (compared on --resume) and those that
# only say how to run it.
RECIPE_KEYS = ("epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule", "augment",
               "label_smoothing", "seed", "backend", "resize", "model_options", "limit_train", "limit_test",
               "amp", "num_classes", "init", "weights", "freeze", "head_lr_mult", "classes", "new_head", "tta")
ARCHITECTURE_KEYS = ("model", "model_options", "num_classes", "classes")
SCHEDULES = ("constant", "cosine", "onecycle")
OPTIMIZERS = ("sgd", "adam", "adamw")


class UserError(Exception):
    """A problem the user can fix (exit status 2, one line, no traceback)."""


class Diverged(Exception):
    """The loss became NaN or infinite (exit status 3)."""


# ----------------------------------------------------------------------------- options

def _model_option(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for convert in (int, float):
        try:
            return key, convert(value)
        except ValueError:
            pass
    return key, value


def _classes(text: str) -> List[int]:
    """--classes: labels and ranges, "0-4" or "5,7,9" or "0-2,8"."""
    labels = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            labels.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of labels and ranges such as 0-4 or 5,7,9") from None
    try:
        return list(pdata.check_classes(labels))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None


def _model_name(text: str) -> str:
    """One of pycnn.models' names, or tv:NAME for a torchvision classifier."""
    if text.startswith(TORCHVISION_PREFIX):
        import torchvision

        name = text[len(TORCHVISION_PREFIX):]
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise argparse.ArgumentTypeError(
                f"unknown torchvision classification model {name!r}: the names after tv: are those of "
                f"torchvision.models.list_models(module=torchvision.models) (python -c \"import torchvision; "
                f"print(torchvision.models.list_models(module=torchvision.models))\"), e.g. tv:resnet18")
        return text
    if text not in pycnn.models.list_models():
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(pycnn.models.list_models())}, "
            f"or tv:NAME for a torchvision classifier)")
    return text


def is_torchvision(model: str) -> bool:
    return model.startswith(TORCHVISION_PREFIX)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Train a classic CNN on Fashion-MNIST with pycnn's kernels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Options left out take the recipe's value (--recipe; the reference recipe of "
               "ARCHITECTURES.md by default), or the checkpoint's with --resume.")
    p.add_argument("--model", required=True, type=_model_name, metavar="MODEL",
                   help=f"{', '.join(pycnn.models.list_models())}, or tv:NAME (a torchvision classifier)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="default hyper-parameters: the course's reference run, or the improved one (LeNets)")
    g = p.add_argument_group("recipe (default: from --recipe)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="per process under torchrun")
    g.add_argument("--lr", type=float, help="learning rate (the peak for --schedule onecycle)")
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=SCHEDULES,
                   help="learning rate per step: constant, cosine decay to 0, or one-cycle (warm up 30%%, anneal)")
    g.add_argument("--augment", nargs="?", const=DEFAULT_PRESET, choices=list(PRESET_HELP), metavar="PRESET",
                   help="augmentation of the training images; alone: flip-crop. Presets: "
                        + presets_help())
    g.add_argument("--no-augment", dest="augment", action="store_const", const="none", help="no augmentation")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--backend", choices=sorted(pycnn.models.BACKENDS),
                   help="pycnn: pycnn's kernels; native: the same model from torch.nn")
    g.add_argument("--resize", type=int, help="input height = width (default: the model's input size)")
    g.add_argument("--model-option", type=_model_option, action="append", metavar="KEY=VALUE",
                   help="architecture option for pycnn.models.create (e.g. dropout=0.3)")
    g.add_argument("--num-classes", type=int,
                   help="outputs of the last layer (default: the number of classes, 10 or those of --classes)")
    g.add_argument("--classes", type=_classes, metavar="LABELS",
                   help="train and test on these Fashion-MNIST labels only, e.g. 0-4 or 5,7,9, relabelled 0, 1, ... "
                        "in order (with --limit-train: the first N images of these classes)")
    g.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation: the test accuracy from the sum of the logits of each test image "
                        "and its horizontal mirror")
    f = p.add_argument_group("fine-tuning (pycnn.finetune)")
    f.add_argument("--init", metavar="PATH",
                   help="start from these weights: a pycnn checkpoint, a state_dict or a torchvision weights file "
                        "(tensors that do not fit are re-initialised and reported)")
    f.add_argument("--weights", metavar="NAME",
                   help="start from torchvision's named weights, e.g. ResNet18_Weights.IMAGENET1K_V1 (tv: models; "
                        "downloaded into torch's hub cache, or copied there by hand when offline)")
    f.add_argument("--freeze", type=lambda text: [p.strip() for p in text.split(",") if p.strip()],
                   metavar="PREFIX[,PREFIX...]", help="parameters under these modules do not train (e.g. conv1,layer1)")
    f.add_argument("--new-head", action="store_true", default=None,
                   help="re-initialise the output layer of --init/--weights even where its shape fits "
                        "(the same number of other classes)")
    f.add_argument("--head-lr-mult", type=float,
                   help="learning rate of the output layer as a multiple of the body's (the course's recipe: 10)")
    g.add_argument("--limit-train", type=int, help="use only the first N training examples")
    g.add_argument("--limit-test", type=int, help="evaluate on the first N test examples only")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="automatic mixed precision (float16 autocast, CUDA only)")
    r = p.add_argument_group("running")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--out", help="output directory (default runs/MODEL)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    r.add_argument("--quiet", action="store_true", help="no progress bar or banner (epoch lines only)")
    r.add_argument("--data-dir", help=f"directory of the IDX files (default {pdata.DEFAULT_DATA_DIR}, "
                                      f"else {CACHE_DATA_DIR})")
    r.add_argument("--download", action="store_true", help="fetch the official files if they are missing")
    r.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    r.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice); 1 is "
                                               "fastest on a small, busy machine")
    return p


def resolve_config(args: argparse.Namespace, checkpoint_config: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Every option of the run: explicit values over the checkpoint's (--resume) over the recipe's."""
    given = {k: getattr(args, k) for k in RECIPE_KEYS if k != "model_options" and getattr(args, k) is not None}
    if args.model_option is not None:
        given["model_options"] = dict(args.model_option)
    if checkpoint_config is not None:
        if checkpoint_config.get("model") != args.model:
            raise UserError(f"the checkpoint is for model {checkpoint_config.get('model')!r}, not {args.model!r}: "
                            f"use another --out or leave out --resume")
        if args.recipe is not None and args.recipe != checkpoint_config.get("recipe"):
            raise UserError(f"the checkpoint was trained with --recipe {checkpoint_config.get('recipe')}, "
                            f"not {args.recipe}")
        config = dict(checkpoint_config)
        for key, value in LATER_OPTION_DEFAULTS.items():
            config.setdefault(key, value)
        config["augment"] = augment_preset(config.get("augment"))
        for key, value in given.items():
            old = config.get(key)
            if key == "epochs" or value == old:
                continue
            what = "changes the architecture" if key in ARCHITECTURE_KEYS else "differs from the checkpoint's"
            raise UserError(f"--{key.replace('_', '-')} {value} {what} ({old}); resume with the same options "
                            f"or use another --out")
        if "epochs" in given:
            if given["epochs"] != config["epochs"] and config["schedule"] != "constant":
                raise UserError(f"--epochs {given['epochs']} differs from the checkpoint's ({config['epochs']}) "
                                f"and the {config['schedule']} schedule depends on it")
            config["epochs"] = given["epochs"]
    else:
        recipe = args.recipe or "reference"
        table = RECIPES[recipe]
        if is_torchvision(args.model) and recipe == "reference":
            config = dict(COMMON_DEFAULTS, **TORCHVISION_REFERENCE)
        elif args.model not in table:
            raise UserError(f"no {recipe} recipe for {args.model} (only for {', '.join(table)}); "
                            f"use --recipe reference and override its options")
        else:
            config = dict(COMMON_DEFAULTS, **REFERENCE[args.model])
            config.update(table[args.model])
        config.update(model=args.model, recipe=recipe)
        config.update(given)
    config["model_options"] = dict(config.get("model_options") or {})
    config["augment"] = augment_preset(config.get("augment"))
    config["freeze"] = list(config.get("freeze") or [])
    if config["init"] and config["weights"]:
        raise UserError("give --init or --weights, not both")
    if config["weights"] and not is_torchvision(config["model"]):
        raise UserError(f"--weights names torchvision weights; {config['model']} is one of pycnn's models "
                        f"(use --init PATH, or --model tv:NAME)")
    if not config["head_lr_mult"] > 0:
        raise UserError(f"--head-lr-mult must be positive, got {config['head_lr_mult']}")
    for key in ("epochs", "batch_size"):
        if config[key] <= 0:
            raise UserError(f"--{key.replace('_', '-')} must be positive, got {config[key]}")
    labels = len(config["classes"]) if config["classes"] else 10
    if config["num_classes"] is None:
        config["num_classes"] = labels
    if config["num_classes"] < labels:
        raise UserError(f"--num-classes must be at least {labels} (the labels of "
                        f"{'--classes' if config['classes'] else 'Fashion-MNIST'}), got {config['num_classes']}")
    if config["new_head"] and not (config["init"] or config["weights"]):
        raise UserError("--new-head re-initialises the output layer of --init or --weights; give one of them")
    for key in ("limit_train", "limit_test", "resize"):
        if config.get(key) is not None and config[key] <= 0:
            raise UserError(f"--{key.replace('_', '-')} must be positive, got {config[key]}")
    if not config["lr"] > 0:
        raise UserError(f"--lr must be positive, got {config['lr']}")
    if not 0.0 <= config["label_smoothing"] < 1.0:
        raise UserError(f"--label-smoothing must be in [0, 1), got {config['label_smoothing']}")
    if config["momentum"] < 0 or config["weight_decay"] < 0:
        raise UserError("--momentum and --weight-decay must not be negative")
    if args.workers < 0:
        raise UserError(f"--workers must not be negative, got {args.workers}")
    if args.threads is not None and args.threads <= 0:
        raise UserError(f"--threads must be positive, got {args.threads}")
    config.update(threads=args.threads, device=args.device, workers=args.workers, quiet=args.quiet, data_dir=args.data_dir,
                  download=args.download, out=args.out)
    return config


# ----------------------------------------------------------------------------- environment

class Dist:
    """Process-group facts from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.main = self.rank == 0

    def all_sum(self, values: Sequence[float]) -> List[float]:
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return self.all_sum([1.0 if flag else 0.0])[0] > 0 if self.enabled else flag

    def barrier(self):
        if self.enabled:
            dist.barrier()


def choose_device(name: str, ctx: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: CUDA is not available on this machine")
        if not pycnn.cuda_kernels_built():
            raise UserError("--device cuda: pycnn was built without its CUDA kernels; rebuild it with nvcc available")
        torch.cuda.set_device(ctx.local_rank if ctx.enabled else torch.cuda.current_device())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_data_dir(config: Dict[str, Any], ctx: Dist) -> str:
    data_dir = config["data_dir"]
    if data_dir is None:
        data_dir = pdata.DEFAULT_DATA_DIR if os.path.isdir(pdata.DEFAULT_DATA_DIR) else CACHE_DATA_DIR
    if config["download"]:
        if ctx.main:
            try:
                pdata.load_split("train", data_dir), pdata.load_split("test", data_dir)
            except (pdata.DataNotFoundError, ValueError):
                log(f"downloading Fashion-MNIST from {pdata.DOWNLOAD_URL} into {data_dir}", config)
                try:
                    pdata.download(data_dir, force=True)
                except OSError as error:
                    raise UserError(f"download into {data_dir} failed: {error}") from None
        ctx.barrier()
    return data_dir


def log(message: str, config: Dict[str, Any], always: bool = False) -> None:
    if always or not config.get("quiet"):
        print(message, flush=True)


# ----------------------------------------------------------------------------- pieces

class CosineLambda:
    """lr factor: cosine decay from 1 to 0 over total steps (picklable for the scheduler's state)."""

    def __init__(self, total: int):
        self.total = max(1, total)

    def __call__(self, step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total) / self.total))


def constant_factor(step: int) -> float:
    return 1.0


def augment_preset(value) -> str:
    """The augmentation preset of a config value: checkpoints and recipes from
    before the presets say True (the flip and crop) or False."""
    if value is True:
        return DEFAULT_PRESET
    if value in (False, None):
        return "none"
    return value


def prepare_fine_tuning(model: nn.Module, config: Dict[str, Any], fresh: bool) -> List[dict]:
    """--init / --weights (a fresh run only: a resumed one has its own weights),
    --freeze, and the optimizer's parameter groups (--head-lr-mult)."""
    if fresh and (config["init"] or config["weights"]):
        try:
            if config["init"]:
                report = finetune.load_init(model, config["init"], new_head=config["new_head"])
            else:
                report = finetune.load_torchvision_weights(model, config["weights"], new_head=config["new_head"])
        except (OSError, ValueError) as error:
            raise UserError(str(error)) from None
        source = config["init"] or config["weights"]
        for line in report.lines():
            log(f"{PROG}: init from {source}: {line}", config)
    try:
        frozen = finetune.freeze(model, config["freeze"])
        groups = finetune.parameter_groups(model, config["lr"], config["head_lr_mult"])
    except ValueError as error:
        raise UserError(str(error)) from None
    if frozen:
        log(f"{PROG}: frozen: {len(frozen)} parameter tensors under {', '.join(config['freeze'])}", config)
    return groups


def make_optimizer(params, config):
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"],
                               weight_decay=config["weight_decay"])
    cls = torch.optim.Adam if config["optimizer"] == "adam" else torch.optim.AdamW
    return cls(params, lr=config["lr"], weight_decay=config["weight_decay"])


def make_scheduler(optimizer, config, steps_per_epoch: int):
    total = config["epochs"] * steps_per_epoch
    if config["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total, pct_start=0.3,
            cycle_momentum=config["optimizer"] == "sgd" and config["momentum"] > 0,
            base_momentum=min(0.85, config["momentum"]), max_momentum=config["momentum"] or 0.95)
    factor = CosineLambda(total) if config["schedule"] == "cosine" else constant_factor
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_write(path: str, write) -> None:
    """Write via write(file object) into a temporary file beside `path`, then rename it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise UserError(f"--resume: no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip, pickle, EOF errors: all mean "not a checkpoint we can read"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"checkpoint {path} is corrupt or not a pycnn.train checkpoint ({first[:200]})") from None
    required = ("model", "optimizer", "scheduler", "epoch", "config", "metrics", "rng")
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in required):
        missing = [k for k in required if not isinstance(checkpoint, dict) or k not in checkpoint]
        raise UserError(f"checkpoint {path} is not a pycnn.train checkpoint (missing {', '.join(missing)})")
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {path} has format {checkpoint.get('format')}, expected {CHECKPOINT_FORMAT}")
    return checkpoint


def plot_curves(path: str, metrics: List[Dict[str, Any]], title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"{PROG}: note: matplotlib is not installed; {path} not written", file=sys.stderr)
        return
    epochs = [m["epoch"] for m in metrics]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [m["train_loss"] for m in metrics], "o-", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_acc.plot(epochs, [m["train_acc"] for m in metrics], "o-", label="train accuracy")
    ax_acc.plot(epochs, [m["test_acc"] for m in metrics], "s-", label="test accuracy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------- training

def create_model(config: Dict[str, Any]):
    """The model of the run and its input (H, W), checked against the architecture: pycnn.models'
    classic CNNs, or a torchvision classifier (tv:NAME) converted to pycnn's kernels."""
    name = config["model"]
    try:
        if is_torchvision(name):
            import warnings

            from pycnn.convert import checked_input_size, torchvision_classifier
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = torchvision_classifier(name[len(TORCHVISION_PREFIX):], config["num_classes"], 1,
                                               config["backend"], **config["model_options"])
            for warning in caught:
                if issubclass(warning.category, UserWarning) and "pycnn.convert" in str(warning.message):
                    log(f"{PROG}: note: {warning.message}", config)
            size = checked_input_size(model, config["resize"], name)[1:]
        else:
            model = pycnn.models.create(name, num_classes=config["num_classes"], backend=config["backend"],
                                        **config["model_options"])
            size = model.checked_input_size(config["resize"])[1:]
    except TypeError as error:
        raise UserError(f"{name}: {error}") from None
    except ValueError as error:
        raise UserError(str(error)) from None
    return model, size


def evaluate(model: nn.Module, loader, device, size, resize_on_device: bool, ctx: Dist, amp: bool,
             tta: bool = False) -> float:
    """Test accuracy; with tta, of the summed logits of each image and its mirror image."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if resize_on_device:
                images = pdata.prepare_images(images, size)
            with autocast(device, amp):
                outputs = model(images)
                if tta:
                    outputs = outputs + model(images.flip(-1))
            correct += int((outputs.argmax(1) == labels).sum())
            total += len(labels)
    correct, total = ctx.all_sum([correct, total])
    return correct / max(total, 1)


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.float16) if enabled else nullcontext()


def train(config: Dict[str, Any], ctx: Dist, checkpoint: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    device = choose_device(config["device"], ctx)
    ctx.device = device if device.type == "cuda" else torch.device("cpu")
    if config["amp"] and device.type != "cuda":
        raise UserError("--amp needs CUDA (pycnn's float16 kernels are CUDA-only); use --device cuda or --no-amp")
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    out = config["out"]
    seed = config["seed"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    model, size = create_model(config)
    model.to(device)
    # Before DistributedDataParallel wraps the model: it takes the parameters that train as they are then.
    parameter_groups = prepare_fine_tuning(model, config, fresh=checkpoint is None)
    if ctx.enabled and ctx.rank > 0:
        torch.manual_seed(seed + 1_000_003 * ctx.rank)  # other dropout masks on other ranks

    data_dir = resolve_data_dir(config, ctx)
    resize_on_device = device.type == "cuda"
    try:
        train_set = pdata.FashionMNIST("train", data_dir, limit=config["limit_train"],
                                       size=None if resize_on_device else size, augment=config["augment"],
                                       classes=config["classes"])
        test_set = pdata.FashionMNIST("test", data_dir, limit=config["limit_test"],
                                      size=None if resize_on_device else size, classes=config["classes"])
    except (pdata.DataNotFoundError, ValueError) as error:
        raise UserError(str(error)) from None
    pin = device.type == "cuda"
    train_loader = pdata.make_loader(train_set, config["batch_size"], True, seed, config["workers"], pin,
                                     ctx.world, ctx.rank)
    test_loader = pdata.make_loader(test_set, max(config["batch_size"], 256), False, seed, config["workers"], pin,
                                    ctx.world, ctx.rank)

    net = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(parameter_groups, config)
    scheduler = make_scheduler(optimizer, config, len(train_loader))
    scaler = torch.amp.GradScaler("cuda", enabled=config["amp"])
    criterion = nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])

    metrics: List[Dict[str, Any]] = []
    start_epoch = 0
    elapsed_before = 0.0
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            if checkpoint.get("scaler"):
                scaler.load_state_dict(checkpoint["scaler"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise UserError(f"the checkpoint does not fit this model/optimizer: {str(error).splitlines()[0]}") from None
        start_epoch = int(checkpoint["epoch"])
        metrics = list(checkpoint["metrics"])
        elapsed_before = float(checkpoint.get("elapsed_sec", 0.0))
        states = checkpoint["rng"]
        if len(states) == ctx.world:
            set_rng_state(states[ctx.rank])
        else:
            set_rng_state(states[0])
            log(f"note: the checkpoint was written by {len(states)} processes, this run has {ctx.world}: "
                f"the result will differ from an uninterrupted run", config)
        if start_epoch >= config["epochs"]:
            log(f"the checkpoint has already completed {start_epoch} of {config['epochs']} epochs", config)
            return metrics

    if ctx.main:
        os.makedirs(out, exist_ok=True)
        options = " ".join(f"{k}={config[k]}" for k in RECIPE_KEYS if config.get(k) not in (None, {}, [], False, "none"))
        log(f"{PROG}: {config['model']} ({sum(p.numel() for p in model.parameters()):,} parameters, "
            f"{size[0]}x{size[1]} input) on {device}"
            f"{f' x {ctx.world} processes' if ctx.enabled else ''}; {len(train_set):,} training and "
            f"{len(test_set):,} test images from {data_dir}; recipe {config['recipe']}: {options}", config)
        if start_epoch:
            log(f"resuming after epoch {start_epoch} from {os.path.join(out, 'checkpoint.pt')}", config)

    show_bar = ctx.main and not config["quiet"] and sys.stdout.isatty()
    run_start = time.perf_counter()
    for epoch in range(start_epoch, config["epochs"]):
        net.train()
        train_loader.batch_sampler.set_epoch(epoch)
        loss_sum = correct = seen = 0.0
        epoch_start = time.perf_counter()
        bar = progress(train_loader, len(train_loader), f"epoch {epoch + 1}/{config['epochs']}", show_bar)
        for step, (images, labels) in enumerate(bar):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if resize_on_device:
                images = pdata.prepare_images(images, size)
            with autocast(device, config["amp"]):
                outputs = net(images)
                loss = criterion(outputs, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            value = loss.item()
            if ctx.any(not math.isfinite(value)):
                raise Diverged(f"the training loss became {value if not math.isfinite(value) else 'NaN on another rank'} "
                               f"at epoch {epoch + 1}, step {step + 1} (lr {scheduler.get_last_lr()[0]:.3g}): "
                               f"the run diverged; lower --lr. The last good checkpoint (if any) is kept")
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            n = len(labels)
            loss_sum += value * n
            correct += float((outputs.argmax(1) == labels).sum())
            seen += n
            if show_bar and step % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_time = time.perf_counter() - epoch_start
        loss_sum, correct, seen, train_time = ctx.all_sum([loss_sum, correct, seen, train_time])
        train_time /= ctx.world
        test_acc = evaluate(model, test_loader, device, size, resize_on_device, ctx, config["amp"], config["tta"])
        elapsed = elapsed_before + time.perf_counter() - run_start
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                  "test_acc": test_acc, "examples_per_sec": seen / train_time, "elapsed_sec": elapsed,
                  "lr": scheduler.get_last_lr()[0]}
        metrics.append(record)
        states = [rng_state()]
        if ctx.enabled:
            states = [None] * ctx.world
            dist.all_gather_object(states, rng_state())
        if ctx.main:
            log(f"epoch {epoch + 1:>3}/{config['epochs']}  train loss {record['train_loss']:.4f}  "
                f"train acc {record['train_acc']:.4f}  test acc {test_acc:.4f}  "
                f"{record['examples_per_sec']:,.0f} examples/s  elapsed {elapsed:.1f}s", config, always=True)
            save_config = {k: v for k, v in config.items()}
            checkpoint_out = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                              "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                              "scaler": scaler.state_dict() if config["amp"] else None, "epoch": epoch + 1,
                              "config": save_config, "metrics": metrics, "rng": states, "elapsed_sec": elapsed}
            atomic_write(os.path.join(out, "checkpoint.pt"), lambda f: torch.save(checkpoint_out, f))
            atomic_write(os.path.join(out, "metrics.json"),
                         lambda f: f.write((json.dumps(metrics, indent=1) + "\n").encode()))
            plot_curves(os.path.join(out, "curves.png"), metrics,
                        f"{config['model']} on Fashion-MNIST ({config['recipe']} recipe, {config['backend']})")
        ctx.barrier()
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = Dist()
    initialised_here = False
    try:
        if ctx.enabled and not dist.is_initialized():
            backend = "nccl" if args.device != "cpu" and torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
            initialised_here = True
        out = args.out or os.path.join("runs", args.model.replace(":", "-"))
        checkpoint = load_checkpoint(os.path.join(out, "checkpoint.pt")) if args.resume else None
        args.out = out
        config = resolve_config(args, checkpoint["config"] if checkpoint else None)
        train(config, ctx, checkpoint)
        return 0
    except UserError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr, flush=True)
        return 2
    except Diverged as error:
        print(f"{PROG}: error: {error}", file=sys.stderr, flush=True)
        return 3
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; --resume continues from the last completed epoch", file=sys.stderr)
        return 130
    finally:
        if initialised_here and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
