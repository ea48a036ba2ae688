"""Benchmarks of pycnn's operators against PyTorch's native ones.

    python -m pycnn.bench ops [--device cpu|cuda] [--batch N] [--repeats R]
"""
