"""Export a pycnn model as a torch.export ExportedProgram (.pt2), pycnn's operators intact.

    python -m export.program --model resnet18 [--checkpoint PATH] [--out exports/resnet18.pt2]
                             [--batch-size N]

torch.export traces the eval-mode model with a dynamic batch dimension
(torch.export.Dim) unless --batch-size fixes it; the graph keeps
torch.ops.pycnn.* calls (their fake kernels in pycnn/_ops.py let it trace), so
loading it needs `import pycnn`. The file is saved with torch.export.save,
reloaded with torch.export.load, run on real Fashion-MNIST test images and
random input, and compared with the PyTorch model; it is only put in place when
everything passes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from export import _common
from export._common import ExportError

# ATen operators whose work pycnn's operators do; none may appear in the graph.
NATIVE_OPERATORS = ("aten.conv", "aten._convolution", "aten.convolution", "aten.max_pool", "aten.avg_pool",
                    "aten.adaptive_avg_pool", "aten._adaptive_avg_pool", "aten.batch_norm",
                    "aten.native_batch_norm", "aten._native_batch_norm", "aten.cudnn_", "aten.mkldnn_")


def export_program(model: torch.nn.Module, path: str, *, batch_size: Optional[int] = None,
                   input_size: Optional[Sequence[int]] = None):
    """torch.export the eval-mode model and save the ExportedProgram to `path`; return it.

    batch_size None: a dynamic batch dimension; otherwise that fixed batch.
    input_size: (C, H, W), default model.default_input_size."""
    model = model.eval()
    try:
        program = torch.export.export(model, (_common.example_input(input_size or model.default_input_size, batch_size),),
                                      dynamic_shapes=_common.dynamic_shapes(batch_size))
    except Exception as error:
        raise _common.export_failed(f"torch.export of {getattr(model, 'arch', 'the model')}", error) from None
    native = native_operators(program_operators(program))
    if native:
        raise ExportError(f"the exported program calls native operators: {', '.join(sorted(native))}")
    torch.export.save(program, path)
    return program


def program_operators(program) -> set:
    """The names ("pycnn.corr2d.default", "aten.relu.default", ...) of every operator the graph calls."""
    return {str(node.target) for node in program.graph.nodes if node.op == "call_function"}


def native_operators(names) -> set:
    return {n for n in names if n.startswith(NATIVE_OPERATORS)}


def pycnn_operators(names) -> set:
    return {n for n in names if n.startswith("pycnn.")}


def run_program(path: str, inputs: Sequence[torch.Tensor]) -> tuple:
    """torch.export.load the file and run it on each input; (outputs, operator names)."""
    import pycnn  # noqa: F401  (the program calls torch.ops.pycnn)

    try:
        program = torch.export.load(path)
    except Exception as error:
        raise ExportError(f"torch.export.load({path}) failed: {_common._one_line(error)}") from None
    module = program.module()
    with torch.no_grad():
        outputs = [module(x) for x in inputs]
    return outputs, program_operators(program)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _common.parse_args("program", "pt2", argv, _common.add_batch_size_argument, description=__doc__.splitlines()[0])
    _common.quiet_exporter_logs()
    model, source, input_size = _common.load_model(args.model, args.checkpoint)
    batches = _common.check_batches(input_size, args.check_images, 3, args.batch_size)
    references = _common.reference_outputs(model, batches)
    with _common.atomic_output(args.out) as tmp:
        export_program(model, tmp, batch_size=args.batch_size, input_size=input_size)
        outputs, names = run_program(tmp, [x for _, x in batches])
        _common.check_and_summarise(
            args, model, source, tmp, batches, references, outputs,
            format_text="torch.export ExportedProgram, "
                        + (f"batch {args.batch_size}" if args.batch_size else "dynamic batch")
                        + f"; operators: {', '.join(sorted(pycnn_operators(names)))}",
            runtime="torch.export.load")


if __name__ == "__main__":
    _common.run_cli(main)
