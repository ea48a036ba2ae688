"""Export a pycnn model to ONNX with standard operators only.

    python -m export.onnx --model resnet18 [--checkpoint PATH] [--out exports/resnet18.onnx]
                          [--opset 18] [--batch-size N] [--triton-repo DIR] [--fp16]

PyTorch's torch.export-based exporter (torch.onnx.export(..., dynamo=True))
traces the eval-mode model; pycnn's translation table (pycnn.onnx) turns each
torch.ops.pycnn operator into standard ONNX operators (Conv, MaxPool,
AveragePool, GlobalAveragePool, BatchNormalization), so the file runs on stock
onnxruntime without a custom-operator library. The file is then checked
(onnx.checker, default-domain nodes only) and run in onnxruntime on real
Fashion-MNIST test images and random input against the PyTorch model; it is only
put in place when everything passes. --triton-repo also writes a Triton/KServe
model repository (DIR/NAME/1/model.onnx, DIR/NAME/config.pbtxt and
DIR/NAME/labels.txt). --fp16 exports float16 weights and compute with float32
inputs and outputs (half the file, and a GPU's half-precision units); its
check allows float16's rounding (--tolerance 0.03 unless given) and adds the
accuracy on the whole Fashion-MNIST test set against the float32 PyTorch
model's, which must not drop by more than --fp16-max-drop. The file carries the class labels of a Fashion-MNIST
model as its "labels" metadata (a JSON list), which export.serve's classify
endpoint reports.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from typing import List, Optional, Sequence

import onnx
import torch

from export import _common
from export._common import ExportError
from pycnn.data import CLASSES
from pycnn.onnx import translation_table

DEFAULT_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TRITON_MAX_BATCH = 256
LABELS_KEY = "labels"  # the metadata entry export.serve reads
TRITON_LABELS_FILE = "labels.txt"
FP16_TOLERANCE = 0.03  # float16 keeps 11 significant bits: logits agree to about 1e-3..1e-2 of their scale
FP16_MAX_DROP = 0.005  # the test accuracy an --fp16 export may lose, as a fraction (0.5 percentage points)


class Float16Model(torch.nn.Module):
    """`model` in float16 (weights and compute) behind float32 input and output:
    what --fp16 exports, so that clients and the server keep sending FP32."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).half()
        self.default_input_size = getattr(model, "default_input_size", None)
        self.arch = getattr(model, "arch", "the model")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()
_DEFAULT_DOMAINS = ("", "ai.onnx")


def export_onnx(model: torch.nn.Module, path: str, *, opset: int = DEFAULT_OPSET, batch_size: Optional[int] = None,
                input_size: Optional[Sequence[int]] = None, labels: Optional[Sequence[str]] = None,
                fp16: bool = False) -> onnx.ModelProto:
    """Write `model` (eval mode) to `path` as ONNX; return the model proto.

    batch_size None: a dynamic batch dimension ("batch"); otherwise that fixed batch.
    input_size: (C, H, W), default model.default_input_size.
    labels: the class names of the output, stored as the "labels" metadata.
    fp16: float16 weights and compute, float32 input and output (Float16Model).
    The graph is flat (functions inlined) and holds default-domain operators only;
    onnx.checker has passed on it. Raises ExportError if any of that fails.
    """
    if opset < DEFAULT_OPSET:
        raise ExportError(f"--opset {opset}: the translations use ONNX opset {DEFAULT_OPSET}; use {DEFAULT_OPSET} or later")
    model = model.eval()
    exported = Float16Model(model).eval() if fp16 else model
    try:
        program = torch.onnx.export(
            exported,
            (_common.example_input(input_size or model.default_input_size, batch_size),),
            dynamo=True,
            custom_translation_table=translation_table(),
            dynamic_shapes=_common.dynamic_shapes(batch_size),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            verbose=False,
            report=False,
        )
        proto = program.model_proto
    except Exception as error:
        raise _common.export_failed(f"ONNX export of {getattr(model, 'arch', 'the model')}", error) from None
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    foreign = non_standard_nodes(proto)
    if foreign:
        raise ExportError(f"the ONNX graph has operators outside the default domain: {', '.join(sorted(foreign))}")
    if labels is not None:
        onnx.helper.set_model_props(proto, {LABELS_KEY: json.dumps(list(labels))})
    onnx.save(proto, path)
    try:
        onnx.checker.check_model(path, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"onnx.checker rejects the exported model: {_common._one_line(error)}") from None
    return proto


def _graph_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graph_nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from _graph_nodes(sub)


def non_standard_nodes(proto: onnx.ModelProto) -> set:
    """{"domain::op_type"} of every node (in the graph, its subgraphs and its
    functions) or imported opset outside the default ONNX domain."""
    nodes = list(_graph_nodes(proto.graph))
    for function in proto.functions:
        nodes.append(onnx.NodeProto(op_type=function.name, domain=function.domain))
        nodes.extend(function.node)
    found = {f"{n.domain}::{n.op_type}" for n in nodes if n.domain not in _DEFAULT_DOMAINS}
    found |= {f"{o.domain}::(opset import)" for o in proto.opset_import if o.domain not in _DEFAULT_DOMAINS}
    return found


def providers() -> List[str]:
    """onnxruntime execution providers: CUDA first when a GPU is usable, then CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    chosen = []
    if torch.cuda.is_available() and "CUDAExecutionProvider" in available:
        chosen.append("CUDAExecutionProvider")
    return chosen + ["CPUExecutionProvider"]


def run_onnx(path: str, inputs: Sequence[torch.Tensor]) -> List:
    """Run the ONNX file in onnxruntime on each input; numpy outputs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(path, options, providers=providers())
    return [session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0] for x in inputs]


def triton_config(name: str, input_size: Sequence[int], num_classes: int, batch_size: Optional[int],
                  labels: bool = False) -> str:
    """config.pbtxt of a Triton model served by the onnxruntime backend
    (labels: the output names its label file, for Triton's classification).

    Dynamic batch: max_batch_size TRITON_MAX_BATCH, dims without the batch and
    dynamic batching on; fixed batch: max_batch_size 0 and dims with it."""
    if batch_size is None:
        max_batch, input_dims, output_dims = TRITON_MAX_BATCH, list(input_size), [num_classes]
    else:
        max_batch, input_dims, output_dims = 0, [batch_size, *input_size], [batch_size, num_classes]

    def tensor(tensor_name, dims, label_file=None):
        label = f'    label_filename: "{label_file}"\n' if label_file else ""
        return (f'  {{\n    name: "{tensor_name}"\n    data_type: TYPE_FP32\n'
                f'    dims: [ {", ".join(str(d) for d in dims)} ]\n{label}  }}')

    # Dynamic batch: Triton gathers concurrent requests as export.serve does
    # (default max_queue_delay 0: what is waiting, no more).
    batching = "dynamic_batching { }\n" if batch_size is None else ""
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch}\n'
            f'input [\n{tensor(INPUT_NAME, input_dims)}\n]\n'
            f'output [\n{tensor(OUTPUT_NAME, output_dims, TRITON_LABELS_FILE if labels else None)}\n]\n{batching}')


def write_triton_repo(repo: str, name: str, onnx_path: str, input_size: Sequence[int], num_classes: int,
                      batch_size: Optional[int], labels: Optional[Sequence[str]] = None) -> str:
    """Write repo/name/1/model.onnx (a copy of onnx_path), repo/name/config.pbtxt and,
    with labels, repo/name/labels.txt (one label per line, Triton's label file); return repo/name."""
    model_dir = os.path.join(repo, name)
    with _common.atomic_output(os.path.join(model_dir, "1", "model.onnx")) as tmp:
        shutil.copyfile(onnx_path, tmp)
    if labels is not None:
        with _common.atomic_output(os.path.join(model_dir, TRITON_LABELS_FILE)) as tmp:
            with open(tmp, "w") as f:
                f.write("".join(f"{label}\n" for label in labels))
    with _common.atomic_output(os.path.join(model_dir, "config.pbtxt")) as tmp:
        with open(tmp, "w") as f:
            f.write(triton_config(name, input_size, num_classes, batch_size, labels=labels is not None))
    return model_dir


def test_set_accuracy(model: torch.nn.Module, onnx_path: str, input_size: Sequence[int],
                      batch_size: Optional[int], chunk: int = 500) -> Optional[dict]:
    """Accuracy of the PyTorch model and of the ONNX file on the whole
    Fashion-MNIST test set, and how often their top-1 agree; None without the data."""
    from pycnn import data

    if not _common.fashion_mnist_available():
        return None
    import onnxruntime

    images, labels = data.load_split("test")
    session = onnxruntime.InferenceSession(onnx_path, providers=providers())
    step = batch_size or chunk
    channels, height, width = input_size
    correct_torch = correct_onnx = agree = 0
    for start in range(0, len(images), step):
        pixels = torch.from_numpy(images[start:start + step]).unsqueeze(1)
        x = data.prepare_images(pixels, (height, width)).expand(-1, channels, -1, -1).contiguous()
        count = len(x)
        if batch_size and count < batch_size:  # a fixed batch: pad the last one with blanks
            x = torch.cat([x, x.new_zeros(batch_size - count, *x.shape[1:])])
        with torch.no_grad():
            reference = model(x)[:count].argmax(1)
        candidate = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0][:count]).argmax(1)
        truth = torch.from_numpy(labels[start:start + step].astype("int64"))
        correct_torch += int((reference == truth).sum())
        correct_onnx += int((candidate == truth).sum())
        agree += int((reference == candidate).sum())
    n = len(images)
    return {"images": n, "float32": correct_torch / n, "onnx": correct_onnx / n, "agreement": agree / n}


def _add_arguments(parser) -> None:
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    _common.add_batch_size_argument(parser)
    parser.add_argument("--triton-repo", default=None, metavar="DIR",
                        help="also write a Triton model repository: DIR/MODEL/1/model.onnx, DIR/MODEL/config.pbtxt")
    parser.add_argument("--fp16", action="store_true",
                        help="float16 weights and compute, float32 input and output; checked on the whole test set")
    parser.add_argument("--fp16-max-drop", type=float, default=FP16_MAX_DROP,
                        help=f"--fp16: largest test-accuracy loss allowed against float32, as a fraction "
                             f"(default {FP16_MAX_DROP:g})")


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _common.parse_args("onnx", "onnx", argv, _add_arguments, description=__doc__.splitlines()[0])
    if args.fp16 and args.tolerance == _common.DEFAULT_TOLERANCE:
        args.tolerance = FP16_TOLERANCE
    _common.quiet_exporter_logs()
    model, source, input_size = _common.load_model(args.model, args.checkpoint)
    batches = _common.check_batches(input_size, args.check_images, 3, args.batch_size)
    references = _common.reference_outputs(model, batches)
    labels = CLASSES if references[0].shape[1] == len(CLASSES) else None
    with _common.atomic_output(args.out) as tmp:
        export_onnx(model, tmp, opset=args.opset, batch_size=args.batch_size, input_size=input_size, labels=labels,
                    fp16=args.fp16)
        outputs = run_onnx(tmp, [x for _, x in batches])
        _common.check_and_summarise(
            args, model, source, tmp, batches, references, outputs,
            format_text=f"ONNX, opset {args.opset}, standard operators only, "
                        + ("float16 weights and compute (float32 input and output), " if args.fp16 else "")
                        + (f"batch {args.batch_size}" if args.batch_size else "dynamic batch"),
            runtime=f"onnxruntime {__import__('onnxruntime').__version__} ({', '.join(providers())})")
        if args.fp16:
            _check_fp16_accuracy(args, model, tmp, input_size)
    if args.triton_repo:
        model_dir = write_triton_repo(args.triton_repo, args.model, args.out, input_size,
                                      references[0].shape[1], args.batch_size, labels)
        files = "1/model.onnx, config.pbtxt" + (f", {TRITON_LABELS_FILE}" if labels else "")
        print(f"triton repository: {model_dir} ({files})")


def _check_fp16_accuracy(args, model: torch.nn.Module, path: str, input_size: Sequence[int]) -> None:
    accuracy = test_set_accuracy(model, path, input_size, args.batch_size)
    if accuracy is None:
        print(f"note: {_common.FASHION_MNIST_DIR} is not installed; the float16 test-set accuracy is unchecked",
              file=sys.stderr)
        return
    drop = accuracy["float32"] - accuracy["onnx"]
    print(f"test accuracy ({accuracy['images']:,} images): float32 PyTorch {accuracy['float32']:.4f}, "
          f"float16 ONNX {accuracy['onnx']:.4f} (drop {drop:+.4f}); top-1 agreement {accuracy['agreement']:.2%}")
    if drop > args.fp16_max_drop:
        print(f"error: the float16 export loses {drop:.4f} of test accuracy, more than --fp16-max-drop "
              f"{args.fp16_max_drop:g}; {args.out} was not written", file=sys.stderr)
        raise _common.ChecksFailed()


if __name__ == "__main__":
    _common.run_cli(main)
