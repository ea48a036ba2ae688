"""Export pycnn's classic models for serving, each format checked against PyTorch,
and serve them.

    python -m export.onnx --model NAME          # ONNX, standard operators only (stock onnxruntime, Triton)
    python -m export.torchscript --model NAME   # TorchScript, pycnn:: operators intact (LibTorch + libpycnn_ops)
    python -m export.program --model NAME       # torch.export ExportedProgram (.pt2), pycnn operators intact
    python -m export.serve exports/NAME.onnx    # the KServe v2 / Triton server (export/serve/, no torch needed)

_common.py holds what the three export CLIs share (arguments, checkpoint
loading, the check batch, comparison, summary, atomic writes). The ONNX
translations of pycnn's operators live beside the operators, in pycnn.onnx.
"""
