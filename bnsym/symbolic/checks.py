"""The checks a layer's declared forward pass must pass before anything is derived from it.

Notation (:mod:`bnsym.symbolic.layers`). A layer's training forward pass is a
:class:`~bnsym.symbolic.program.Program` over one group of M values, written with the layer's symbols ``s``
(:class:`~bnsym.symbolic.layers.LayerSymbols`): ``x`` (a field), the parameters ``gamma`` (and ``beta``), ``eps``,
and named steps. Everything else (the backward, the double backward, the JVP, the kernels, the runtime's arguments)
is derived from it together with the layer's specification (:class:`bnsym.spec.LayerSpec`), so the two must agree.
:func:`check_forward` checks, in this order, and raises :class:`DeclarationError` (a ValueError) naming the layer and
saying what is wrong:

1. the forward function returns a Program;
2. its inputs are x, the specification's field inputs (``spec.field_inputs``: fused add + RMS norm's residual),
   the specification's parameters (``spec.parameters``), each placed as the grouping places it
   (``s.gamma`` is a field when the parameters vary within a group, one value per group otherwise), eps, and the
   inputs that are never differentiated: the running statistics when the specification says the training forward
   reads them (``spec.reads_running``) and the scalar options (``spec.scalars``); nothing else (a parameter whose
   placement the specification does not declare is refused);
3. its outputs are ``(y, *spec.field_outputs, *spec.saved)``: y, then the field outputs (each defined by a step),
   then the statistics the backward reuses, in that order;
4. every output depends on x and on every field input (an output that does not depend on the inputs is refused),
   and y on every parameter;
5. every step is used by an output (a statistic that is never used is refused);
6. the engine's vocabulary: closed forms are written in ``x_hat`` (the normalised input) and the saved statistics,
   so the forward defines x_hat and the steps of its kind of statistic, and these identities hold (proved):
   ``x = mean + x_hat / invstd`` and ``var = invstd**-2 - eps`` (centred), ``x = x_hat / invrms`` and
   ``ms = invrms**-2 - eps`` (rms), with the normalised field (``spec.normalises``: h for fused add + RMS norm)
   in place of x;
7. with every parameter at its neutral value (``spec.neutral_values``, what None stands for), y = x_hat (proved):
   a layer that scales by ``1 + gamma`` must say that gamma = 0 means no scale. A layer whose training forward
   reads its running statistics (batch renormalisation: y = gamma (r x_hat + d) + beta) is held to this in eval
   mode, where the correction is gone.
"""

from __future__ import annotations

import sympy

from bnsym.spec.layer_spec import LayerSpec
from bnsym.symbolic.program import Program
from bnsym.symbolic.reduction import Field
from bnsym.symbolic.rewrite import prove_fact

__all__ = ["DeclarationError", "check_forward", "statistic_steps", "vocabulary_identities"]


class DeclarationError(ValueError):
    """A layer's declaration that the engine cannot derive from (module docstring)."""


def statistic_steps(s, centred: bool) -> tuple[sympy.Symbol, ...]:
    """The steps a forward pass of a centred or an RMS layer defines besides y: its statistics and x_hat."""
    return (s.mean, s.var, s.invstd, s.x_hat) if centred else (s.ms, s.invrms, s.x_hat)


def vocabulary_identities(s, centred: bool, normalised=None) -> tuple[tuple[sympy.Symbol, sympy.Expr], ...]:
    """The substitutions that write a closed form in x_hat and the saved statistics (each an identity of the
    forward pass): the normalised field (x unless ``normalised`` says otherwise: fused add + RMS norm's h) and the
    second moment in terms of them."""
    n = s.x if normalised is None else normalised
    if centred:
        return (n, s.mean + s.x_hat / s.invstd), (s.var, s.invstd**-2 - s.eps)
    return (n, s.x_hat / s.invrms), (s.ms, s.invrms**-2 - s.eps)


def _placement(symbol: sympy.Symbol) -> str:
    return "a field (one value per element of a group)" if isinstance(symbol, Field) else "one value per group"


def _check_inputs(spec: LayerSpec, s, program: Program, where: str) -> None:
    expected = (*(getattr(s, f) for f in spec.inputs), *(getattr(s, p) for p in spec.parameters), s.eps,
                *s.constants(spec))
    by_name = {str(e): e for e in expected}
    names = [str(i) for i in program.inputs]
    for symbol in program.inputs:
        name = str(symbol)
        if name in spec.parameters and symbol != by_name[name]:
            raise DeclarationError(
                f"{where} takes {name} as {_placement(symbol)}, but the grouping places it as "
                f"{_placement(by_name[name])} ({spec.parameters_are}): use the layer's own symbol s.{name}")
        if name in by_name and symbol != by_name[name]:
            raise DeclarationError(f"{where} takes a symbol {name} of its own: use the layer's own symbol s.{name}")
        if name not in by_name:
            raise DeclarationError(
                f"{where} takes {name}, a parameter whose placement the specification does not declare (or a "
                f"field input not in LayerSpec.field_inputs): the layer takes ({', '.join(by_name)})")
    missing = [name for name in by_name if name not in names]
    if missing or len(names) != len(set(names)):
        raise DeclarationError(f"{where} takes ({', '.join(names)}); a layer of statistic {spec.statistic!r} "
                               f"takes ({', '.join(by_name)}), each once")


def _check_outputs(spec: LayerSpec, s, program: Program, where: str) -> None:
    expected = (*(getattr(s, name) for name in spec.outputs), *(getattr(s, name) for name in spec.saved))
    if program.outputs != expected:
        raise DeclarationError(
            f"{where} returns ({', '.join(map(str, program.outputs))}), but the specification says its forward "
            f"returns ({', '.join(map(str, expected))}): y, then the field outputs (LayerSpec.field_outputs), then "
            f"the statistics the backward reuses (LayerSpec.saved of a layer of statistic {spec.statistic!r})")
    inputs = [getattr(s, name) for name in spec.inputs]
    for output in program.outputs:
        for field in inputs:
            if not program.inline(output).has(field):
                raise DeclarationError(f"{where}: the output {output} does not depend on the input {field}")
    for name in spec.field_outputs:
        if not isinstance(getattr(s, name), Field) or getattr(s, name) not in {d.name for d in program.definitions}:
            raise DeclarationError(f"{where}: the field output {name} must be defined by a step of the forward pass")
    y = program.inline(s.y)
    for parameter in (getattr(s, p) for p in spec.parameters):
        if not y.has(parameter):
            raise DeclarationError(f"{where}: y does not depend on the parameter {parameter}, which the layer takes")


def _check_every_step_used(program: Program, where: str) -> None:
    needed, unused = set(program.outputs), []
    for definition in reversed(program.definitions):
        if definition.name in needed:
            needed |= definition.expr.free_symbols
        else:
            unused.append(str(definition.name))
    if unused:
        raise DeclarationError(f"{where} defines {', '.join(reversed(unused))}, which no output uses (a statistic "
                               "that is never used): drop it, or use it")


def _check_vocabulary(spec: LayerSpec, s, program: Program, where: str) -> None:
    defined = {d.name for d in program.definitions}
    steps = statistic_steps(s, spec.centred)
    missing = [str(step) for step in steps if step not in defined]
    if missing:
        raise DeclarationError(
            f"{where} does not define {', '.join(missing)}: the engine writes the derivatives of a layer of "
            f"statistic {spec.statistic!r} in x_hat (the normalised input) and its statistics, so its forward "
            f"defines {', '.join(map(str, steps))} with the layer's symbols")
    for name, replacement in vocabulary_identities(s, spec.centred, getattr(s, spec.normalises)):
        if not prove_fact(program, name, replacement):
            raise DeclarationError(f"{where}: {name} = {replacement} does not follow from its definitions, so "
                                   f"x_hat and {', '.join(spec.saved)} are not those of a layer of statistic "
                                   f"{spec.statistic!r}")


def _check_neutral(spec: LayerSpec, s, program: Program, where: str) -> None:
    neutral = spec.neutral_values
    values = {getattr(s, name): sympy.nsimplify(value) for name, value in neutral.items()}
    if not prove_fact(program, program.inline(s.y).xreplace(values), s.x_hat):
        chosen = ", ".join(f"{name} = {value}" for name, value in neutral.items())
        raise DeclarationError(
            f"{where}: with {chosen} (what None stands for) y is not x_hat, the normalised input; a layer whose "
            "parameters mean 'no parameter' at other values says so in LayerSpec.neutral (a scale by 1 + gamma: "
            "neutral={'gamma': 0})")


def check_forward(spec: LayerSpec, s, program, source: str, inference=None) -> Program:
    """``program`` (what the layer's forward function ``source`` returned for the symbols ``s``) when it passes
    every check of the module docstring; DeclarationError otherwise. ``inference`` (a callable returning the eval
    forward pass) is where the neutral values are checked for a layer whose training forward reads its running
    statistics."""
    where = f"{spec.name}: the forward pass {source}"
    if not isinstance(program, Program):
        raise DeclarationError(f"{where} must return a bnsym.symbolic.program.Program, got "
                               f"{type(program).__name__}")
    _check_inputs(spec, s, program, where)
    _check_outputs(spec, s, program, where)
    _check_every_step_used(program, where)
    _check_vocabulary(spec, s, program, where)
    if spec.reads_running and inference is not None:
        _check_neutral(spec, s, inference(), f"{where} (in eval mode)")
    else:
        _check_neutral(spec, s, program, where)
    return program
