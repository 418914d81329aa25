"""Compiler passes from the IR to PyTorch: concrete networks, the supernet, extraction."""
