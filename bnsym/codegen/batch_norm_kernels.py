"""Which kernels the batch-norm module contains, and from which derivation each one comes."""

from __future__ import annotations

from bnsym.codegen.kernel import Kernel
from bnsym.symbolic import batch_norm as bn

__all__ = ["kernels"]

_LAYOUT = ("Fields (x, dy, ...) have the layer's full shape; channel scalars (gamma, mean, invstd, ...) have the "
           "broadcast shape, 1 on every axis in `axes`; `count` is M, the number of values per channel.")


def _forward() -> Kernel:
    s = bn.SYMBOLS
    program = bn.training_forward()
    steps = tuple((d.name, d.expr) for d in program.definitions if d.name != s.y)
    return Kernel(
        name="batch_norm_forward",
        inputs=(s.x, s.gamma, s.beta, s.eps),
        steps=steps,
        outputs=((s.y, program[s.y]), (s.mean, s.mean), (s.invstd, s.invstd)),
        summary="Training-mode batch norm: y, and the batch mean and invstd that the backward pass reuses.",
        derived_from="Written once in bnsym.symbolic.batch_norm.training_forward; this is its definition.",
        notes=(_LAYOUT,),
    )


def _backward() -> Kernel:
    s = bn.SYMBOLS
    program, closed = bn.backward()
    dx, dgamma, dbeta = program.outputs
    return Kernel(
        name="batch_norm_backward",
        inputs=(s.dy, s.x, s.gamma, s.mean, s.invstd),
        steps=((s.x_hat, bn.training_forward()[s.x_hat]),),
        outputs=((dx, closed[dx]), (dgamma, closed[dgamma]), (dbeta, closed[dbeta])),
        summary="Training-mode backward: dx, dgamma, dbeta for the upstream gradient dy.",
        derived_from=("Derived by reverse mode from training_forward (bnsym.symbolic.batch_norm.backward), "
                      "closed form in x_hat, mean and invstd."),
        notes=(_LAYOUT,),
    )


def kernels() -> list[Kernel]:
    """Every kernel of ``bnsym/_generated/batch_norm.py``, in the order they appear there."""
    return [_forward(), _backward()]
