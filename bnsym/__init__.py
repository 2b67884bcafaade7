"""bnsym: normalisation layers derived symbolically, generated as NumPy code, and verified by properties.

Batch norm's public functions live in :mod:`bnsym.functional` (training), :mod:`bnsym.inference`,
:mod:`bnsym.higher_order` and :mod:`bnsym.running_stats`, and as the verbs of :mod:`bnsym.batch_norm`; the other
layers of the family are the modules :mod:`bnsym.layer_norm`, :mod:`bnsym.rms_norm`, :mod:`bnsym.group_norm` and
:mod:`bnsym.instance_norm`, each with ``forward``, ``backward``, ``double_backward`` and ``jvp``. The derivations
are ``derivations/<layer>.md``.
"""

from bnsym import batch_norm, group_norm, instance_norm, layer_norm, rms_norm
from bnsym.functional import batch_norm_backward, batch_norm_forward
from bnsym.higher_order import batch_norm_double_backward, batch_norm_jvp
from bnsym.inference import batch_norm_inference, batch_norm_inference_backward
from bnsym.running_stats import update_running_stats

__all__ = [
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_double_backward",
    "batch_norm_forward",
    "batch_norm_inference",
    "batch_norm_inference_backward",
    "batch_norm_jvp",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "update_running_stats",
]
__version__ = "0.1.0"
