"""Export pycnn's classic models for serving, each format checked against PyTorch.

    python -m export.onnx --model NAME          # ONNX, standard operators only (stock onnxruntime, Triton)
    python -m export.torchscript --model NAME   # TorchScript, pycnn:: operators intact (LibTorch + libpycnn_ops)
    python -m export.program --model NAME       # torch.export ExportedProgram (.pt2), pycnn operators intact

_common.py holds what the three CLIs share (arguments, checkpoint loading, the
check batch, comparison, summary, atomic writes); _onnx_ops.py the ONNX
translations of pycnn's operators.
"""
