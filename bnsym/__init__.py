"""bnsym: batch normalisation derived symbolically, generated as NumPy code, and verified by properties.

The public functions are documented in :mod:`bnsym.functional`; the derivation in ``derivations/batch_norm.md``.
"""

from bnsym.functional import batch_norm_backward, batch_norm_forward

__all__ = ["batch_norm_backward", "batch_norm_forward"]
__version__ = "0.1.0"
