"""What the three export CLIs share: arguments, checkpoint loading, the check
batch, the comparison with the PyTorch model, the summary and atomic writes.

Each CLI (export.onnx, export.torchscript, export.program) is

    args = parse_args(FORMAT, EXTENSION, argv)    # --model, --checkpoint, --out, ...
    model, source, input_size = load_model(args.model, args.checkpoint)
    batches = check_batches(input_size, ...)      # real Fashion-MNIST images, random input
    with atomic_output(args.out) as tmp:          # put in place only if all of it passes
        <export to tmp>; <reload tmp and run it on the batches>
        check_and_summarise(args, model, source, tmp, batches, references, outputs,
                            format_text=..., runtime=...)   # raises ChecksFailed

and every error a user can cause (unknown model, a checkpoint of another
architecture, a missing checkpoint, an unwritable output) is an ExportError:
one line on stderr, exit status 2, no traceback, no file left behind. A file
that fails its check is not kept either (exit status 1).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import tempfile
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from pycnn.data import DEFAULT_DATA_DIR as FASHION_MNIST_DIR

# Largest |exported - PyTorch| allowed, relative to the output's scale
# (max(1, max |PyTorch output|)), and the top-1 agreement required on real images.
DEFAULT_TOLERANCE = 1e-3


class ExportError(Exception):
    """An error the user can fix; the CLIs print it as one line and exit 2."""


class ChecksFailed(Exception):
    """The exported file does not match the PyTorch model (the summary says how);
    the file is not put in place and the CLI exits 1."""


# --- arguments ----------------------------------------------------------------


def parse_args(format_name: str, extension: str, argv: Optional[Sequence[str]] = None,
               add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
               description: str = "") -> argparse.Namespace:
    """The arguments every export CLI takes, plus the format's own (add_arguments)."""
    parser = argparse.ArgumentParser(prog=f"python -m export.{format_name}", description=description)
    parser.add_argument("--model", required=True, help="model name (see pycnn.models.list_models())")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint written by pycnn.train (or a plain state_dict file); default: "
                             "runs/MODEL/checkpoint.pt when it exists, otherwise untrained weights")
    parser.add_argument("--out", default=None, help=f"output file (default: exports/MODEL.{extension})")
    parser.add_argument("--check-images", type=int, default=8,
                        help="Fashion-MNIST test images in the check batch (default 8)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest difference allowed, relative to the output's scale (default {DEFAULT_TOLERANCE:g})")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = os.path.join("exports", f"{args.model}.{extension}")
    if args.check_images < 1:
        parser.error("--check-images must be positive")
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        raise ExportError(f"--batch-size must be positive, got {args.batch_size}")
    return args


def add_batch_size_argument(parser: argparse.ArgumentParser) -> None:
    """--batch-size, for the formats whose batch dimension can be fixed (checked by parse_args)."""
    parser.add_argument("--batch-size", type=int, default=None,
                        help="export a fixed batch size (default: a dynamic batch dimension)")


# --- model and checkpoint -----------------------------------------------------


def default_checkpoint(name: str) -> str:
    return os.path.join("runs", name, "checkpoint.pt")


class LoadedModel(NamedTuple):
    model: torch.nn.Module  # pycnn backend, eval mode
    source: str  # where the weights came from
    input_size: Tuple[int, int, int]  # (C, H, W) the model was trained on (the export's input)


def _checkpoint_parts(checkpoint, path: str, name: str) -> tuple:
    """(state_dict, config or {}) of a pycnn.train checkpoint or a plain state_dict."""
    if isinstance(checkpoint, dict) and "model" in checkpoint and isinstance(checkpoint["model"], dict):
        config = checkpoint.get("config")
        config = config if isinstance(config, dict) else {}
        trained = config.get("model")
        if trained is not None and trained != name:
            raise ExportError(f"checkpoint {path} is of model {trained!r}, not {name!r}")
        return checkpoint["model"], config
    if isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint, {}
    raise ExportError(f"{path} is neither a pycnn.train checkpoint (a dict with 'model' and 'config') "
                      "nor a state_dict")


def load_model(name: str, checkpoint: Optional[str] = None, *, warn: bool = True, **options) -> LoadedModel:
    """The pycnn model `name` in eval mode, with the checkpoint's weights.

    checkpoint None: runs/NAME/checkpoint.pt when it exists, otherwise the
    untrained (Xavier-initialised, seed 0) weights, with a warning on stderr.
    A pycnn.train checkpoint's config gives the architecture options
    (model_options, e.g. vgg11's width_divisor) and the input size (resize);
    `options` are used without a checkpoint config.
    """
    import pycnn.models

    if name not in pycnn.models.list_models():
        raise ExportError(f"unknown model {name!r}; known models: {', '.join(pycnn.models.list_models())}")
    if checkpoint is None and os.path.isfile(default_checkpoint(name)):
        checkpoint = default_checkpoint(name)
    state, config = None, {}
    if checkpoint is None:
        if warn:
            print(f"WARNING: no checkpoint given and {default_checkpoint(name)} does not exist: "
                  f"exporting {name} with UNTRAINED weights", file=sys.stderr)
        source = "untrained (no checkpoint)"
    else:
        if not os.path.isfile(checkpoint):
            raise ExportError(f"checkpoint {checkpoint} does not exist")
        try:
            loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as error:  # zip, pickle, EOF errors: not a checkpoint we can read
            raise ExportError(f"cannot read checkpoint {checkpoint}: {_one_line(error)}") from None
        state, config = _checkpoint_parts(loaded, checkpoint, name)
        source = checkpoint
    options = dict(config.get("model_options") or options)
    torch.manual_seed(0)  # untrained weights are the same from run to run
    try:
        model = pycnn.models.create(name, **options)
    except (TypeError, ValueError) as error:
        raise ExportError(f"cannot build {name} with options {options}: {_one_line(error)}") from None
    if state is not None:
        _check_state_dict(model, state, checkpoint, name)
        model.load_state_dict(state)
    channels, height, width = model.default_input_size
    if config.get("resize"):
        height = width = int(config["resize"])
    return LoadedModel(model.eval(), source, (channels, height, width))


def _check_state_dict(model, state: dict, path: str, name: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ExportError(f"checkpoint {path} does not fit model {name}: keys {', '.join(detail)}")
    for key, value in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(value.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ExportError(f"checkpoint {path} does not fit model {name}: {key} has shape {shape}, "
                              f"the model expects {tuple(value.shape)}")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the check batch ----------------------------------------------------------


def fashion_mnist_available(data_dir: str = FASHION_MNIST_DIR) -> bool:
    from pycnn import data

    try:
        data.find_file(data_dir, data.FILES["test"][0])
    except FileNotFoundError:
        return False
    return True


def real_batch(input_size: Sequence[int], count: int, data_dir: str = FASHION_MNIST_DIR) -> Optional[torch.Tensor]:
    """The first `count` Fashion-MNIST test images as the model sees them in
    training (pycnn.data.prepare_images: scaled to [0, 1], resized bilinearly
    with align_corners=False to input_size (C, H, W)), repeated over C channels.
    None when the data set is not installed."""
    from pycnn import data

    if not fashion_mnist_available(data_dir):
        return None
    try:
        images = data.read_idx(data.find_file(data_dir, data.FILES["test"][0]))[:count]
    except ValueError as error:
        raise ExportError(f"cannot read the Fashion-MNIST test images: {_one_line(error)}") from None
    channels, height, width = input_size
    x = data.prepare_images(torch.from_numpy(images).unsqueeze(1), (height, width))
    return x.expand(-1, channels, -1, -1).contiguous()


def random_batch(input_size: Sequence[int], count: int, seed: int = 1) -> torch.Tensor:
    """Uniform [0, 1) input, reproducible."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, *input_size, generator=generator)


def check_batches(input_size: Sequence[int], real_count: int, random_count: int,
                  fixed_batch: Optional[int] = None) -> List[tuple]:
    """[(label, input)]: real Fashion-MNIST images (when installed) and random input.

    With a fixed batch size both batches have that size; otherwise they differ
    (real_count and random_count), which exercises the dynamic batch dimension.
    """
    if fixed_batch is not None:
        real_count = random_count = fixed_batch
    batches = []
    real = real_batch(input_size, real_count)
    if real is None:
        print(f"note: {FASHION_MNIST_DIR} is not installed; checking on random input only", file=sys.stderr)
    else:
        batches.append(("fashion-mnist", real))
    batches.append(("random", random_batch(input_size, random_count)))
    return batches


# --- comparison ---------------------------------------------------------------


@dataclasses.dataclass
class Comparison:
    label: str  # "fashion-mnist" or "random"
    batch: int
    max_abs_diff: float
    scale: float  # max(1, max |reference|)
    agree: int  # samples whose top-1 class is the same
    close_calls: int  # disagreements where the reference's two best logits are within tolerance
    real: bool  # real images: top-1 must agree

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / self.scale

    @property
    def agreement(self) -> float:
        return self.agree / self.batch if self.batch else 1.0

    def ok(self, tolerance: float) -> bool:
        if not math.isfinite(self.max_abs_diff) or self.relative_diff > tolerance:
            return False
        # Real images must all get the same class; a sample whose two best
        # logits are closer than the tolerance may legitimately flip.
        return not self.real or self.agree + self.close_calls == self.batch

    def describe(self) -> str:
        text = (f"{self.label} batch {self.batch}: max |diff| {self.max_abs_diff:.3g} "
                f"({self.relative_diff:.3g} of output scale {self.scale:.3g}), top-1 agreement "
                f"{100 * self.agreement:.1f}% ({self.agree}/{self.batch})")
        if self.close_calls:
            text += f", {self.close_calls} near-tie(s)"
        return text


def compare(label: str, reference: torch.Tensor, candidate, tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    """Compare an exported model's output (tensor or array) with PyTorch's."""
    reference = reference.detach().to(torch.float64)
    candidate = torch.as_tensor(np.asarray(candidate) if not isinstance(candidate, torch.Tensor) else candidate)
    candidate = candidate.detach().to(torch.float64)
    if candidate.shape != reference.shape:
        raise ExportError(f"{label}: exported output has shape {tuple(candidate.shape)}, "
                          f"PyTorch's {tuple(reference.shape)}")
    scale = max(1.0, float(reference.abs().max())) if reference.numel() else 1.0
    diff = float((candidate - reference).abs().max()) if reference.numel() else 0.0
    ref_top = reference.argmax(dim=1)
    cand_top = candidate.argmax(dim=1)
    same = ref_top == cand_top
    # margin of the reference between its choice and the candidate's choice
    margin = reference.gather(1, ref_top[:, None]) - reference.gather(1, cand_top[:, None])
    close = (~same) & (margin[:, 0] <= tolerance * scale)
    return Comparison(label, reference.shape[0], diff, scale, int(same.sum()), int(close.sum()),
                      real=label != "random")


def reference_outputs(model: torch.nn.Module, batches: List[tuple]) -> List[torch.Tensor]:
    with torch.no_grad():
        return [model(x) for _, x in batches]


# --- files --------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path`; on success it replaces `path`
    (os.replace), on failure it is removed, so no partial file is left."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
    except OSError as error:
        raise ExportError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def file_size(path: str) -> str:
    size = os.path.getsize(path)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --- summary and the CLI frame ------------------------------------------------


def summarise(fields: List[tuple], comparisons: List[Comparison], tolerance: float, out: str) -> None:
    """Print the export's summary; raise ChecksFailed unless every check passed
    (inside atomic_output, so that a file that fails its check is not kept)."""
    width = max(len(k) for k, _ in fields + [("output", "")])
    for key, value in fields:
        print(f"{key:<{width}}  {value}")
    passed = True
    for comparison in comparisons:
        ok = comparison.ok(tolerance)
        passed &= ok
        print(f"{'check':<{width}}  {comparison.describe()}  [{'ok' if ok else 'FAILED'}]")
    print(f"{'output':<{width}}  {out if passed else '(not written)'}", flush=True)
    if not passed:
        print(f"error: the export of {out} FAILED its check: a difference above {tolerance:g} of the "
              "output scale, or another top-1 class on a real image; nothing written", file=sys.stderr)
        raise ChecksFailed(out)


def check_and_summarise(args: argparse.Namespace, model: torch.nn.Module, source: str, tmp: str,
                        batches: List[tuple], references: List[torch.Tensor], outputs: Sequence, *,
                        format_text: str, runtime: str) -> None:
    """Compare each exported output with PyTorch's and print the summary every
    CLI prints (model, weights, parameters, format, runtime, file size, checks);
    ChecksFailed unless every check passed."""
    comparisons = [compare(label, reference, output, args.tolerance)
                   for (label, _), reference, output in zip(batches, references, outputs)]
    summarise([
        ("model", args.model),
        ("weights", source),
        ("parameters", f"{count_parameters(model):,}"),
        ("format", format_text),
        ("runtime", runtime),
        ("file size", file_size(tmp)),
    ], comparisons, args.tolerance, args.out)


def run_cli(main: Callable[[], object]) -> None:
    """Run a CLI's main: exit 0 when it passed, 1 when a check failed
    (ChecksFailed), 2 with one line on stderr for an ExportError."""
    try:
        main()
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except ChecksFailed:
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)


def quiet_exporter_logs() -> None:
    """Keep torch.onnx / torch.export chatter (e.g. 'torchvision is not installed') off the CLI output."""
    import logging
    import warnings

    for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "torch.fx.experimental.symbolic_shapes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


# --- tracing ------------------------------------------------------------------

def example_input(input_size: Sequence[int], fixed_batch: Optional[int] = None) -> torch.Tensor:
    """The input torch.export traces with: the fixed batch, or 2 samples for a
    dynamic batch (torch.export specialises sizes 0 and 1)."""
    return random_batch(input_size, fixed_batch or 2, seed=0)


def dynamic_shapes(fixed_batch: Optional[int] = None):
    """torch.export's dynamic_shapes for forward(input): a dynamic batch dimension
    (any size from 1 up) unless the batch is fixed."""
    if fixed_batch is not None:
        return None
    return ({0: torch.export.Dim("batch", min=1)},)


def export_failed(what: str, error: BaseException) -> ExportError:
    """An ExportError for an exporter's exception: the innermost message that
    says what could not be exported (e.g. an UnsupportedExport from a
    translation), on one line."""
    seen, chain = set(), []
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    from pycnn.onnx import UnsupportedExport

    for candidate in chain:
        if isinstance(candidate, UnsupportedExport):
            return ExportError(f"{what} failed: {_one_line(candidate)}")
    return ExportError(f"{what} failed: {type(chain[0]).__name__}: {_one_line(chain[0])}")
