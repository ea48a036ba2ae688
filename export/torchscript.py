"""Export a pycnn model to TorchScript, pycnn's operators intact.

    python -m export.torchscript --model resnet18 [--checkpoint PATH] [--out exports/resnet18.pt]

The eval-mode model is scripted (torch.jit.script) and saved; its graph calls
pycnn::corr2d, pycnn::max_pool2d, ... (not ATen's convolution, pooling or
batch-norm), so a program that loads it needs pycnn's operators registered:
`import pycnn` in Python, or libpycnn_ops.so linked into a LibTorch program.
The file is reloaded with torch.jit.load in a fresh Python process (which
imports pycnn only to register the operators), run on real Fashion-MNIST test
images and random input, and compared with the PyTorch model; it is only put in
place when everything passes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

import torch

from export import _common
from export._common import ExportError

# ATen operators whose work pycnn's operators do; none may appear in the graph.
NATIVE_KINDS = ("aten::conv", "aten::_convolution", "aten::convolution", "aten::max_pool", "aten::avg_pool",
                "aten::adaptive_avg_pool", "aten::adaptive_max_pool", "aten::batch_norm", "aten::native_batch_norm",
                "aten::_native_batch_norm", "aten::cudnn_", "aten::mkldnn_")


def export_torchscript(model: torch.nn.Module, path: str) -> torch.jit.ScriptModule:
    """Script `model` in eval mode and save it to `path`; return the scripted module.

    Raises ExportError if scripting fails or the graph calls a native
    convolution, pooling or batch-norm operator."""
    model = model.eval()
    try:
        scripted = torch.jit.script(model)
    except Exception as error:
        raise _common.export_failed(f"torch.jit.script of {getattr(model, 'arch', 'the model')}", error) from None
    native = native_operators(graph_operators(scripted))
    if native:
        raise ExportError(f"the TorchScript graph calls native operators: {', '.join(sorted(native))}")
    scripted.save(path)
    return scripted


def graph_operators(module: torch.jit.ScriptModule) -> set:
    """The kinds of every node of the module's forward, submodules inlined,
    inside every block (prim::If / prim::Loop bodies) too."""
    kinds = set()

    def walk(block):
        for node in block.nodes():
            kinds.add(node.kind())
            for sub in node.blocks():
                walk(sub)

    walk(module.inlined_graph)
    return kinds


def native_operators(kinds) -> set:
    return {k for k in kinds if k.startswith(NATIVE_KINDS)}


def pycnn_operators(kinds) -> set:
    return {k for k in kinds if k.startswith("pycnn::")}


def _python_path() -> str:
    """PYTHONPATH for the fresh process: the checkout this process imported
    pycnn and export from, ahead of any installed copy."""
    import pycnn

    roots = [os.path.dirname(os.path.dirname(os.path.abspath(pycnn.__file__))),
             os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    existing = os.environ.get("PYTHONPATH")
    return os.pathsep.join(dict.fromkeys(roots + ([existing] if existing else [])))


def run_torchscript_fresh(path: str, inputs: Sequence[torch.Tensor], timeout: float = 600) -> tuple:
    """Load the TorchScript file with torch.jit.load in a new Python process
    (which imports pycnn to register its operators), run it on each input.

    Returns (outputs, the graph's operator kinds)."""
    with tempfile.TemporaryDirectory(prefix="pycnn-torchscript-check-") as work:
        inputs_file = os.path.join(work, "inputs.pt")
        outputs_file = os.path.join(work, "outputs.pt")
        torch.save(list(inputs), inputs_file)
        command = [sys.executable, "-c", "import sys; from export.torchscript import _reload_and_run; "
                   "_reload_and_run(*sys.argv[1:])", os.path.abspath(path), inputs_file, outputs_file]
        env = dict(os.environ, PYTHONPATH=_python_path())
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines() or ["(no output)"]
            raise ExportError(f"reloading {path} in a fresh process failed: {lines[-1]}")
        saved = torch.load(outputs_file)
    return saved["outputs"], set(json.loads(saved["kinds"]))


def _reload_and_run(path: str, inputs_file: str, outputs_file: str) -> None:
    """The fresh process: register pycnn's operators, load, run, save outputs."""
    import pycnn  # noqa: F401  (registers torch.ops.pycnn for the loaded graph)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    module = torch.jit.load(path, map_location="cpu")
    with torch.no_grad():
        outputs = [module(x) for x in torch.load(inputs_file)]
    torch.save({"outputs": outputs, "kinds": json.dumps(sorted(graph_operators(module)))}, outputs_file)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _common.parse_args("torchscript", "pt", argv, description=__doc__.splitlines()[0])
    model, source, input_size = _common.load_model(args.model, args.checkpoint)
    batches = _common.check_batches(input_size, args.check_images, 3)
    references = _common.reference_outputs(model, batches)
    with _common.atomic_output(args.out) as tmp:
        export_torchscript(model, tmp)
        outputs, kinds = run_torchscript_fresh(tmp, [x for _, x in batches])
        if native_operators(kinds) or not pycnn_operators(kinds):
            raise ExportError(f"the reloaded graph calls {', '.join(sorted(native_operators(kinds))) or 'no pycnn operator'}")
        _common.check_and_summarise(
            args, model, source, tmp, batches, references, outputs,
            format_text=f"TorchScript (torch.jit.script), dynamic batch; operators: "
                        f"{', '.join(sorted(pycnn_operators(kinds)))}",
            runtime="torch.jit.load in a fresh process")


if __name__ == "__main__":
    _common.run_cli(main)
