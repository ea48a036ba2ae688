"""Benchmarks of pycnn against PyTorch's native operators, in one process.

    python -m pycnn.bench ops [--device cpu|cuda] [--batches 1,8,64] [--tables shapes,overhead,scaling] [--quick]
    python -m pycnn.bench models [--device cpu|cuda] [--batch N] [--models a,b] [--resize N]
"""
