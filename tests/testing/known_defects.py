"""Defects of the reference frameworks that the checker finds, stated once so that tests expect exactly them.

PyTorch 2.13.0's CPU float16 kernels of batch norm and instance norm (forward) and of layer norm and group norm
(backward) return NaN on a constant group when eps is below float16's smallest subnormal (eps = 1e-12, BERT's): they
round eps to float16, where it is 0, and divide 0 by 0. The exact results are finite and representable in float16
(the examples keep them so), so this is a failure, not a false alarm; every other float16 input passes.
"""

import numpy as np

from bnsym.testing import Report

#: The layers whose torch float16 CPU kernels fail on eps below float16's range (rms_norm's does not).
TORCH_FLOAT16_ROUNDS_EPS = ("batch_norm", "layer_norm", "group_norm", "instance_norm")
FLOAT16_SMALLEST = float(np.finfo(np.float16).smallest_subnormal)


def assert_only_torch_float16_eps_failures(report: Report, layer: str) -> None:
    """Every failure of a torch float16 run is PyTorch's eps rounding: its minimal counterexample has an eps float16
    rounds to 0 and a group whose values float16 holds as one (the constant regime, or a spread float16 cannot
    hold)."""
    assert layer in TORCH_FLOAT16_ROUNDS_EPS, f"torch float16 {layer} failed, and it is not a known defect:\n{report}"
    for result in report.results:
        if result.status != "failed":
            continue
        example = result.counterexample.example if result.counterexample else None
        assert example is not None and example.eps < FLOAT16_SMALLEST / 2 * 1.0001, \
            f"torch float16 {layer}: {result.name} failed at eps = {getattr(example, 'eps', None)}, which float16 " \
            f"holds: not the known eps rounding\n{report}"

