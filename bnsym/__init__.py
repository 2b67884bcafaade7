"""bnsym: batch normalisation derived symbolically, generated as NumPy code, and verified by properties.

The public functions live in :mod:`bnsym.functional` (training), :mod:`bnsym.inference`, :mod:`bnsym.higher_order`
and :mod:`bnsym.running_stats`; the derivation is ``derivations/batch_norm.md``.
"""

from bnsym.functional import batch_norm_backward, batch_norm_forward
from bnsym.higher_order import batch_norm_double_backward, batch_norm_jvp
from bnsym.inference import batch_norm_inference, batch_norm_inference_backward
from bnsym.running_stats import update_running_stats

__all__ = [
    "batch_norm_backward",
    "batch_norm_double_backward",
    "batch_norm_forward",
    "batch_norm_inference",
    "batch_norm_inference_backward",
    "batch_norm_jvp",
    "update_running_stats",
]
__version__ = "0.1.0"
