"""Batch norm with the verbs of the other layers (``bnsym.batch_norm.forward``, ...).

The same functions as bnsym's top-level ``batch_norm_*`` names, which stay: statistics per channel over every
other axis, the channel axis ``axis`` (1 for NCHW, -1 for NHWC), and the training, eval, double-backward and
forward-mode passes. Notation and contracts are in :mod:`bnsym.functional`, :mod:`bnsym.inference` and
:mod:`bnsym.higher_order`.
"""

from __future__ import annotations

from bnsym.functional import batch_norm_backward as backward
from bnsym.functional import batch_norm_forward as forward
from bnsym.higher_order import batch_norm_double_backward as double_backward
from bnsym.higher_order import batch_norm_jvp as jvp
from bnsym.inference import batch_norm_inference as inference
from bnsym.inference import batch_norm_inference_backward as inference_backward

__all__ = ["backward", "double_backward", "forward", "inference", "inference_backward", "jvp"]
