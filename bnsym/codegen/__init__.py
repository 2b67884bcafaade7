"""Code generation: from derived SymPy expressions to readable NumPy modules under ``bnsym/_generated/``."""
