"""bnsym: normalisation layers derived symbolically, generated as NumPy code, and verified by properties.

Each layer is a module: :mod:`bnsym.batch_norm`, :mod:`bnsym.layer_norm`, :mod:`bnsym.rms_norm`,
:mod:`bnsym.group_norm` and :mod:`bnsym.instance_norm`, each with ``forward``, ``backward``, ``double_backward`` and
``jvp``; batch norm, which keeps running statistics, also has ``inference``, ``inference_backward`` and
``update_running_stats``. Batch norm's functions are also here under their historical names
(``bnsym.batch_norm_forward`` is ``bnsym.batch_norm.forward``, ...). The derivations are
``derivations/<layer>.md``.
"""

from bnsym import batch_norm, group_norm, instance_norm, layer_norm, rms_norm

batch_norm_forward = batch_norm.forward
batch_norm_backward = batch_norm.backward
batch_norm_inference = batch_norm.inference
batch_norm_inference_backward = batch_norm.inference_backward
batch_norm_double_backward = batch_norm.double_backward
batch_norm_jvp = batch_norm.jvp
update_running_stats = batch_norm.update_running_stats

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
