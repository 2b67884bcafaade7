"""Which kernels each layer's generated module contains, and from which derivation each one comes.

Nothing here is specific to one layer: the kernels of ``bnsym/_generated/<layer>.py`` come from the layer's
:class:`~bnsym.symbolic.layers.Derivation`. The one rule about parameters lives here too: when a parameter is
shared by several groups (:attr:`~bnsym.symbolic.layers.LayerDeclaration.shared_parameters`), its gradient is the
derived per-group adjoint wrapped in :class:`~bnsym.symbolic.reduction.ParameterSum`, which the kernel evaluates as
a sum over the groups that share it.
"""

from __future__ import annotations

from bnsym.codegen.kernel import Kernel
from bnsym.symbolic import running_stats
from bnsym.symbolic.layers import Derivation, derivation
from bnsym.symbolic.reduction import ParameterSum

__all__ = ["kernels"]

_LAYOUT = ("Fields (x, dy, ...) have the layer's full shape; channel scalars (gamma, mean, invstd, ...) have the "
           "broadcast shape, 1 on every reduced axis; `reducer` (bnsym.runtime.reduce.Reducer) takes the "
           "per-channel sums and knows M, the number of values per channel.")

_GROUPED_LAYOUT = ("x, dy and the other fields have the layer's full (grouped) shape; per-group statistics (mean, "
                   "invstd, invrms) have length 1 on every reduced axis; gamma and beta are shaped for "
                   "broadcasting against x. `reducer` (bnsym.runtime.reduce.Reducer) takes the per-group sums, "
                   "knows M, the number of values per group, and sums a parameter's gradient over the groups that "
                   "share the parameter, so dgamma and dbeta come out in the parameters' broadcast shape.")


def _layout(layer: Derivation) -> str:
    return _GROUPED_LAYOUT if layer.declaration.shared_parameters else _LAYOUT


def _per_parameter(layer: Derivation, gradients):
    """Each (name, expression) with the expression summed over the groups that share the parameter, if any."""
    if not layer.declaration.shared_parameters:
        return tuple(gradients)
    return tuple((name, ParameterSum(expr)) for name, expr in gradients)


def _in_prose(layer: Derivation) -> str:
    """The layer's title inside a sentence: "layer normalisation", "RMS normalisation", "Gemma RMS normalisation"
    (capitalised there when the specification's name for it in a sentence, ``short``, is)."""
    spec = layer.declaration.spec
    return spec.title if spec.short[:1].isupper() else spec.title[0].lower() + spec.title[1:]


def _source(layer: Derivation, what: str) -> str:
    return f"bnsym.symbolic.layers.derivation({layer.declaration.name!r}).{what}"


def _x_hat_step(layer: Derivation):
    s = layer.symbols
    return ((s.x_hat, layer.training_forward[s.x_hat]),)


def _forward(layer: Derivation) -> Kernel:
    s = layer.symbols
    program = layer.training_forward
    fields = layer.field_outputs[1:]
    return Kernel(
        name=f"{layer.declaration.name}_forward",
        inputs=tuple(program.inputs),
        steps=tuple((d.name, d.expr) for d in program.definitions if d.name != s.y),
        outputs=((s.y, program[s.y]),) + tuple((name, name) for name in (*fields, *layer.saved)),
        summary=f"Training-mode {_in_prose(layer)}: y, {''.join(f.name + ', ' for f in fields)}and the statistics "
                f"({', '.join(n.name for n in layer.saved)}) that the backward pass reuses.",
        derived_from=f"Written once in {layer.declaration.forward_source}; this is its definition.",
        notes=(_layout(layer),),
    )


def _backward(layer: Derivation) -> Kernel:
    s = layer.symbols
    program, closed = layer.backward
    fields = len(layer.field_inputs)
    upstream = layer.upstream
    return Kernel(
        name=f"{layer.declaration.name}_backward",
        inputs=(*upstream, layer.normalised, s.gamma, *layer.saved, *layer.constants),
        steps=_x_hat_step(layer),
        outputs=tuple((d, closed[d]) for d in program.outputs[:fields])
        + _per_parameter(layer, ((p, closed[p]) for p in program.outputs[fields:])),
        summary=f"Training-mode backward: {', '.join(n.name for n in program.outputs)} for the upstream "
                f"gradient{'s' * (len(upstream) > 1)} {', '.join(u.name for u in upstream)}.",
        derived_from=f"Derived by reverse mode from the training forward pass ({_source(layer, 'backward')}), closed "
                     f"form in x_hat and {' and '.join(n.name for n in layer.saved)}.",
        notes=(_layout(layer),),
    )


def _double_backward(layer: Derivation, training: bool) -> Kernel:
    s = layer.symbols
    program, closed = layer.double_backward if training else layer.inference_double_backward
    fields = len(layer.field_inputs)
    ginputs, (ggamma,), gupstream = (program.outputs[:fields], program.outputs[fields:fields + 1],
                                     program.outputs[fields + 1:])
    constants = layer.constants if training else ()
    mode, source = ("Training", "double_backward") if training else ("Eval-mode", "inference_double_backward")
    wrt = (*layer.field_inputs, s.gamma, s.beta)[:fields + len(layer.parameters)]
    cotangents = tuple(layer.cotangent(u) for u in wrt)
    notes = (_layout(layer),) if training else (
        f"mean and invstd are the running mean and {_inference_invstd(layer)}, constants in eval mode.",
        _layout(layer))
    terms = " + ".join(f"<{c.name}, d{u.name}>" for c, u in zip(cotangents, wrt))
    *first, last = (u.name for u in (*layer.field_inputs, s.gamma, *layer.upstream))
    against = f"{', '.join(first)} and {last}"
    name = layer.declaration.name
    return Kernel(
        name=f"{name}_{'' if training else 'inference_'}double_backward",
        inputs=(*cotangents, *layer.upstream, layer.normalised, s.gamma, *layer.saved, *constants),
        steps=_x_hat_step(layer),
        outputs=tuple((g, closed[g]) for g in ginputs) + _per_parameter(layer, ((ggamma, closed[ggamma]),))
        + tuple((g, closed[g]) for g in gupstream),
        summary=f"{mode} double backward: gradients of {terms} with respect to {against}.",
        derived_from=f"Derived by reverse mode through the derived backward ({_source(layer, source)}).",
        notes=notes,
    )


def _jvp(layer: Derivation) -> Kernel:
    s = layer.symbols
    program, closed = layer.jvp
    forward = layer.training_forward
    outputs = layer.field_outputs
    primals = (*layer.field_inputs, *layer.parameters)
    tangents = tuple(layer.tangent_of(u) for u in primals)
    return Kernel(
        name=f"{layer.declaration.name}_jvp",
        inputs=(*primals, *tangents, s.eps, *layer.constants),
        steps=tuple((d.name, d.expr) for d in forward.definitions if d.name != s.y),
        outputs=((s.y, forward[s.y]),) + tuple((o, o) for o in outputs[1:])
        + tuple((t, closed[t]) for t in program.outputs[len(outputs):]),
        summary=f"Training forward mode: {', '.join(o.name for o in outputs)} and "
                f"{'its tangent ty' if len(outputs) == 1 else 'their tangents'} along "
                f"({', '.join(t.name for t in tangents)}).",
        derived_from=f"Derived by forward mode from the training forward pass ({_source(layer, 'jvp')}).",
        notes=(_layout(layer),),
    )


# ----- eval mode and running statistics (layers that keep running statistics) -----

def _inference_invstd(layer: Derivation) -> str:
    """invstd in eval mode, in words: ``1/sqrt(running_var + eps)`` (batch renormalisation: ``1/running_std``)."""
    if layer.declaration.inference is None:
        return "1/sqrt(running_var + eps)"
    return str(layer.inference_forward[layer.symbols.invstd])


def _inference_inputs(layer: Derivation, *first):
    """``(*first, *running statistics, eps)``: what every eval-mode kernel takes after its fields."""
    return (*first, *layer.running, layer.symbols.eps)


def _inference_forward(layer: Derivation) -> Kernel:
    s = layer.symbols
    program = layer.inference_forward
    return Kernel(
        name=f"{layer.declaration.name}_inference",
        inputs=_inference_inputs(layer, s.x, s.gamma, s.beta),
        steps=tuple((d.name, d.expr) for d in program.definitions if d.name != s.y),
        outputs=((s.y, program[s.y]),),
        summary=f"Eval-mode {_in_prose(layer)}: normalise with the given running statistics.",
        derived_from=f"{_source(layer, 'inference_forward')}: the training forward pass with "
                     f"{_frozen(layer)}.",
        notes=(_layout(layer),),
    )


def _inference_backward(layer: Derivation) -> Kernel:
    s = layer.symbols
    program, closed = layer.inference_backward
    forward = layer.inference_forward
    return Kernel(
        name=f"{layer.declaration.name}_inference_backward",
        inputs=_inference_inputs(layer, s.dy, s.x, s.gamma),
        steps=((s.invstd, forward[s.invstd]), (s.x_hat, forward[s.x_hat])),
        outputs=tuple((name, closed[name]) for name in program.outputs),
        summary="Eval-mode backward: dx, dgamma, dbeta with the running statistics held constant.",
        derived_from=f"Derived by reverse mode from the eval forward pass ({_source(layer, 'inference_backward')}).",
        notes=(_layout(layer),),
    )


def _frozen(layer: Derivation) -> str:
    """What eval mode replaces, in words: ``mean and var frozen to running_mean and running_var``."""
    if layer.declaration.inference is None:
        steps, running = zip(*((step, name) for name, step in layer.declaration.spec.running))
        return f"{' and '.join(steps)} frozen to {' and '.join(running)}"
    replaced = layer.declaration.inference(layer.symbols)
    return "its eval mode declared as " + ", ".join(f"{name} = {value}" for name, value in replaced.items())


def _running_stats(layer: Derivation, convention) -> Kernel:
    s, r = layer.symbols, running_stats.RUNNING
    updates = running_stats.update(layer, convention)
    weights = ((() if convention.cumulative else (r.momentum,))
               + ((r.num_batches_tracked,) if convention.uses_batch_count else ()))
    # eps only when a running statistic averages a step that uses it (batch renormalisation's sigma), last.
    uses_eps = (s.eps,) if any(u.has(s.eps) for u in updates) else ()
    return Kernel(
        name=f"running_stats_{convention.name}",
        inputs=(*layer.running, s.mean, s.var, *weights, *uses_eps),
        steps=(),
        outputs=tuple((running_stats.new_name(running), u) for running, u in zip(layer.running, updates)),
        summary=f"Running statistics after one batch, {convention.name} convention.",
        derived_from=convention.source + ". var is the biased batch variance; the unbiased one is M var / (M - 1) "
                     "(bnsym.symbolic.running_stats.bessel_corrected_variance)." * convention.unbiased,
    )


def kernels(name: str) -> list[Kernel]:
    """Every kernel of ``bnsym/_generated/<name>.py``, in the order they appear there."""
    layer = derivation(name)
    if not layer.declaration.running_statistics:
        return [_forward(layer), _backward(layer), _double_backward(layer, True), _jvp(layer)]
    return ([_forward(layer), _backward(layer), _inference_forward(layer), _inference_backward(layer),
             _double_backward(layer, True), _double_backward(layer, False), _jvp(layer)]
            + [_running_stats(layer, c) for c in running_stats.CONVENTIONS.values()])
