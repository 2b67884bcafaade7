"""Which kernels the batch-norm module contains, and from which derivation each one comes."""

from __future__ import annotations

from bnsym.codegen.kernel import Kernel
from bnsym.conventions import CONVENTIONS
from bnsym.symbolic import batch_norm as bn
from bnsym.symbolic import running_stats

__all__ = ["kernels"]

_LAYOUT = ("Fields (x, dy, ...) have the layer's full shape; channel scalars (gamma, mean, invstd, ...) have the "
           "broadcast shape, 1 on every reduced axis; `axes` are the reduced axes and `count` is M, the number of "
           "values per channel.")


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


def _inference_forward() -> Kernel:
    s = bn.SYMBOLS
    program = bn.inference_forward()
    return Kernel(
        name="batch_norm_inference",
        inputs=(s.x, s.gamma, s.beta, s.running_mean, s.running_var, s.eps),
        steps=tuple((d.name, d.expr) for d in program.definitions if d.name != s.y),
        outputs=((s.y, program[s.y]),),
        summary="Eval-mode batch norm: normalise with the given running statistics.",
        derived_from="bnsym.symbolic.batch_norm.inference_forward: the training forward pass with mean and var "
                     "frozen to running_mean and running_var.",
        notes=(_LAYOUT,),
    )


def _inference_steps():
    s = bn.SYMBOLS
    program = bn.inference_forward()
    return ((s.invstd, program[s.invstd]), (s.x_hat, program[s.x_hat]))


def _inference_backward() -> Kernel:
    s = bn.SYMBOLS
    program, closed = bn.inference_backward()
    return Kernel(
        name="batch_norm_inference_backward",
        inputs=(s.dy, s.x, s.gamma, s.running_mean, s.running_var, s.eps),
        steps=_inference_steps(),
        outputs=tuple((name, closed[name]) for name in program.outputs),
        summary="Eval-mode backward: dx, dgamma, dbeta with the running statistics held constant.",
        derived_from="Derived by reverse mode from inference_forward (bnsym.symbolic.batch_norm.inference_backward).",
        notes=(_LAYOUT,),
    )


def _double_backward(training: bool) -> Kernel:
    s = bn.SYMBOLS
    program, closed = bn.double_backward() if training else bn.inference_double_backward()
    mode, source = ("Training", "double_backward") if training else ("Eval-mode", "inference_double_backward")
    notes = (_LAYOUT,) if training else (
        "mean and invstd are the running mean and 1/sqrt(running_var + eps), constants in eval mode.", _LAYOUT)
    return Kernel(
        name=f"batch_norm_{'' if training else 'inference_'}double_backward",
        inputs=(s.ggx, s.gggamma, s.ggbeta, s.dy, s.x, s.gamma, s.mean, s.invstd),
        steps=((s.x_hat, bn.training_forward()[s.x_hat]),),
        outputs=tuple((name, closed[name]) for name in program.outputs),
        summary=f"{mode} double backward: gradients of <ggx, dx> + <gggamma, dgamma> + <ggbeta, dbeta> with "
                "respect to x, gamma and dy.",
        derived_from=f"Derived by reverse mode through the derived backward (bnsym.symbolic.batch_norm.{source}).",
        notes=notes,
    )


def _jvp() -> Kernel:
    s = bn.SYMBOLS
    program, closed = bn.jvp()
    forward = bn.training_forward()
    y, ty = program.outputs
    steps = tuple((d.name, d.expr) for d in forward.definitions if d.name != s.y)
    return Kernel(
        name="batch_norm_jvp",
        inputs=(s.x, s.gamma, s.beta, s.tx, s.tgamma, s.tbeta, s.eps),
        steps=steps,
        outputs=((y, forward[s.y]), (ty, closed[ty])),
        summary="Training forward mode: y and its tangent ty along (tx, tgamma, tbeta).",
        derived_from="Derived by forward mode from training_forward (bnsym.symbolic.batch_norm.jvp).",
        notes=(_LAYOUT,),
    )


def _running_stats(convention) -> Kernel:
    s, r = bn.SYMBOLS, running_stats.RUNNING
    new_mean, new_var = running_stats.update(convention)
    weights = ((() if convention.cumulative else (r.momentum,))
               + ((r.num_batches_tracked,) if convention.uses_batch_count else ()))
    return Kernel(
        name=f"running_stats_{convention.name}",
        inputs=(s.running_mean, s.running_var, s.mean, s.var, *weights),
        steps=(),
        outputs=((r.new_mean, new_mean), (r.new_var, new_var)),
        summary=f"Running statistics after one batch, {convention.name} convention.",
        derived_from=convention.source + ". var is the biased batch variance; the unbiased one is M var / (M - 1) "
                     "(bnsym.symbolic.running_stats.bessel_corrected_variance)." * convention.unbiased,
    )


def kernels() -> list[Kernel]:
    """Every kernel of ``bnsym/_generated/batch_norm.py``, in the order they appear there."""
    return [_forward(), _backward(), _inference_forward(), _inference_backward(), _double_backward(True),
            _double_backward(False), _jvp()] + [_running_stats(c) for c in CONVENTIONS.values()]
