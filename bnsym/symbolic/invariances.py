"""Which invariances a layer has, proved from its declaration: never a list kept per layer.

Notation (as in :mod:`bnsym.symbolic.reduction`). A layer's training forward pass is a
:class:`~bnsym.symbolic.program.Program` over one *group* of M values: ``x`` (a field), the parameters ``gamma``
(and ``beta``), each a group scalar or a field, and ``eps > 0``; its first output is ``y``. ``S(e)`` is the sum of
e over the group. ``dx`` is the adjoint of x for an upstream gradient ``dy`` (any field): dx_j = sum_i dy_i
dy_i/dx_j. ``c`` is any real constant and ``a`` any positive one. The claims, each for every M and every value of
the symbols:

==================== ==============================================================================================
name                 claim
==================== ==============================================================================================
shift                y(x + c) = y(x): adding a constant to every value of a group leaves y unchanged.
scale                y(a x; a^2 eps) = y(x; eps): scaling a group by a > 0 leaves y unchanged once eps scales by
                     a^2 (eps is added to a second moment). With eps fixed, y(a x; eps) = y(x; eps / a^2): scale
                     invariance holds exactly at eps = 0, and up to a change of eps otherwise.
dx_sums_to_zero      S(dx) = 0 for every dy: the gradient never moves a group's mean (it follows from shift
                     invariance: the Jacobian annihilates the constant vector).
dx_orthogonal_to_x   S(x dx) = -2 eps S(dy dy/deps) for every dy: the derivative of the scale claim at a = 1 (Euler's
                     identity). So S(x dx) = 0 exactly at eps = 0, and is O(eps) otherwise; for a centred layer
                     (with dx_sums_to_zero) S(x_hat dx) = invstd S(x dx), for RMS norm S(x_hat dx) = invrms S(x dx).
identity_recovery    with gamma = sqrt(var + eps) and beta = mean, the mean and biased variance of the group's own
                     values, y = x; and the parameters can take those values in every group at once, which needs
                     a parameter value per group (the grouping shares none between groups: batch norm). A layer
                     without beta cannot recover x.
jacobian_symmetric   dy_i/dx_j = dy_j/dx_i within a group, with the parameters placed as the layer declares them:
                     it holds when gamma is one value per group (batch and instance norm), fails when gamma varies
                     within a group (layer, group, RMS norm: the Jacobian is diag(gamma) times a symmetric matrix).
                     ``jacobian_symmetric(d, constant_parameters=True)`` asks the same with gamma constant over the
                     group, which holds for the whole family.
==================== ==============================================================================================

``bnsym derive`` records more claims with these in each layer's generated package (:func:`recorded`,
:data:`RECORDED`), for the checker's properties that rest on them: :data:`CONSTANT_PARAMETERS` (the Jacobian's
symmetry with gamma constant over a group), :data:`UNDONE` (:func:`normalisation_undone`: y = x when the scale of
x_hat is 1/s and beta the mean, identity recovery for groups that all hold the same values), and, for a layer that
keeps running statistics, :data:`EVAL_IS_TRAINING` (:func:`eval_is_training_at_batch_statistics`: eval mode on the
batch's own statistics is the training forward).

How a claim is decided (:func:`verdict`). The claim is a list of differences that must vanish:

1. *symbolic proof*, for symbolic M: every name is inlined from the program's definitions, the derivatives come from
   the program's own reverse mode (:meth:`Program.vjp`), every reduction is brought to a normal form (its argument
   expanded, so that it is a sum over monomials of fields, each an independent unknown), and the difference is
   shown to be identically zero by :func:`vanishes`. Treating the power sums as independent unknowns is sound (an
   identity in independent unknowns holds for any values they take) and, for symbolic M, loses nothing.
2. *brute force*, at M = 2, 3, 4 (:data:`SIZES`): the forward pass written out with M scalar symbols per field
   (:func:`bnsym.symbolic.brute_force.instantiate`), derivatives by plain ``sympy.diff`` of the explicit
   expressions (the full Jacobian, no reduction calculus), the difference shown zero by :func:`vanishes`; or
   refuted by evaluating it, at 50 digits, at a point with rational coordinates and finding it clearly nonzero.

A claim is *proved* when step 1 succeeds, and then step 2 must confirm it at every size (else AssertionError: the
engine contradicts itself). A claim that is not proved must be refuted at some size, so that False always means a
counterexample was found; a claim neither proved nor refuted raises :class:`UndecidedError` instead of being
silently reported absent.

Expanding a reduction's argument (S((x - mean)^2) into S(x^2) - ...) is exact algebra here; the kernels never do it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import sympy

from bnsym.symbolic.brute_force import Elements, instantiate
from bnsym.symbolic.layers import Derivation, as_derivation
from bnsym.symbolic.reduction import BatchSum, Field, M, StopGradient
from bnsym.symbolic.rewrite import prove_fact

__all__ = ["CONSTANT_PARAMETERS", "DIFFERENTIABLE", "EVAL_IS_TRAINING", "INVARIANCES", "RECORDED", "SIZES",
           "STANDARDISED", "UNDONE", "UndecidedError", "Verdict", "differentiable",
           "eval_is_training_at_batch_statistics", "standardised",
           "dx_orthogonal_to_x", "dx_sums_to_zero", "fingerprint", "identity_recovery", "invariances",
           "jacobian_symmetric", "normalisation_undone", "recorded", "scale_invariant", "shift_invariant",
           "vanishes", "verdict"]

#: The group sizes at which every symbolic proof is cross-checked by brute force.
SIZES = (2, 3, 4)

_DIGITS = 50  # working precision of a refutation
_NONZERO = sympy.Float("1e-30")  # a difference above this at 50 digits is a counterexample, not rounding


class UndecidedError(ValueError):
    """A claim that could be neither proved for symbolic M nor refuted at a small M."""


# ----- deciding whether an expression is identically zero -----

def _normal_sums(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` with every reduction's argument expanded (innermost first), so that ``BatchSum`` distributes it into
    sums over monomials of fields; the arguments of other functions (a user's tanh) are expanded too, so that
    equal arguments are written alike."""
    return _normalised(expr, {})


def _normalised(expr: sympy.Basic, seen: dict) -> sympy.Basic:
    # ``seen``: the result for each subexpression done already. A derivative's expression repeats its subexpressions
    # many times, and a node whose arguments come back unchanged is kept as it is rather than rebuilt: rebuilding
    # runs its constructor's simplifications again (Min and Max compare every pair of their arguments).
    if expr in seen:
        return seen[expr]
    if isinstance(expr, BatchSum):
        result = BatchSum(sympy.expand(_normalised(expr.args[0], seen)))
    elif not expr.args:
        result = expr
    else:
        arguments = [_normalised(arg, seen) for arg in expr.args]
        if isinstance(expr, sympy.Function):
            arguments = [sympy.expand(arg) for arg in arguments]
        result = expr if all(a is b for a, b in zip(arguments, expr.args)) else expr.func(*arguments)
    seen[expr] = result
    return result


def _is_half_power(node: sympy.Basic) -> bool:
    return isinstance(node, sympy.Pow) and node.exp.is_Rational and node.exp.q == 2


@cache
def _factored(radicand: sympy.Expr) -> sympy.Expr:
    # The same radicands (a group's var + eps, written out at M = 2, 3, 4) come back in every claim of a layer, and
    # factoring one written out at M = 4 is the costliest step of a proof.
    return sympy.factor(radicand)


def vanishes(expr: sympy.Expr) -> bool:
    """True when ``expr`` is proved identically zero; False means *not proved* (never "nonzero").

    The expressions are rational in the unknowns and in square roots of rational functions of them (1/sqrt(var +
    eps)). Reductions and stop-gradient values become independent real unknowns; each radicand is factored, which
    takes its square factors (a^2 when x is scaled by a) out of the root and writes equal radicands alike; each root
    sqrt(R) becomes an unknown r with r^2 = R. The numerator of the difference, a polynomial in the roots, is
    reduced with r^2 -> R and must then expand to zero: every step is an identity, so zero is a proof.
    """
    expr = _normal_sums(sympy.sympify(expr))
    # A value held constant by the derivatives (StopGradient: clipped, so not rational in the unknowns) is an
    # unknown of its own, one per argument: sound, as an identity in independent unknowns holds for any values.
    constants = sorted(expr.atoms(StopGradient), key=sympy.default_sort_key)
    expr = expr.xreplace({c: sympy.Dummy(f"K{i}", real=True) for i, c in enumerate(constants)})
    sums = sorted(expr.atoms(BatchSum), key=sympy.default_sort_key)
    expr = expr.xreplace({total: sympy.Dummy(f"S{i}", real=True) for i, total in enumerate(sums)})
    expr = expr.replace(_is_half_power, lambda p: sympy.Pow(_factored(p.base), p.exp))
    radicals = sorted({p.base for p in expr.atoms(sympy.Pow) if _is_half_power(p)}, key=sympy.default_sort_key)
    roots = {base: sympy.Dummy(f"r{i}", positive=True) for i, base in enumerate(radicals)}
    expr = expr.xreplace({p: roots[p.base] ** (2 * p.exp) for p in expr.atoms(sympy.Pow) if _is_half_power(p)})
    numerator = sympy.expand(sympy.fraction(sympy.together(expr))[0])
    if numerator == 0:
        return True
    if not roots:
        return False
    reduced = sympy.S.Zero
    for exponents, coefficient in sympy.Poly(numerator, *roots.values()).terms():
        term = coefficient
        for base, k in zip(roots, exponents):
            term *= base ** (k // 2) * roots[base] ** (k % 2)
        reduced += term
    return sympy.expand(sympy.fraction(sympy.together(reduced))[0]) == 0


def _clearly_nonzero(expr: sympy.Expr, point: dict) -> bool:
    # A value held constant by the derivatives (StopGradient) is, at a point, just its value.
    value = sympy.N(expr.replace(StopGradient, lambda argument: argument).xreplace(point), _DIGITS)
    return value.is_number and abs(value) > _NONZERO


# ----- claims -----

@dataclass(frozen=True)
class Verdict:
    """The decision on one claim: ``proved`` (for symbolic M, confirmed at every size of :data:`SIZES`), else
    ``refuted_at``, the (smallest) size at which a counterexample was found. ``reason`` says why a claim is false
    without any algebra (a layer without beta cannot recover x)."""

    name: str
    proved: bool
    refuted_at: tuple[int, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class _Claim:
    """``symbolic()``: the differences that must vanish for symbolic M; ``small(n)``: the same at M = n."""

    symbolic: Callable[[], list[sympy.Expr]]
    small: Callable[[int], list[sympy.Expr]]


class _Layer:
    """What every claim needs from a derivation: the inlined y, dx and the eps adjoint of the program's reverse
    mode, and the forward pass written out at a given M."""

    def __init__(self, d: Derivation):
        s = d.symbols
        self.derivation = d
        self.name = d.declaration.name
        self.forward = d.training_forward
        self.x, self.eps, self.dy = s.x, s.eps, s.dy
        self.y = self.forward.outputs[0]
        self.parameters = d.parameters
        self.has_beta = s.beta in self.forward.inputs
        self.gamma, self.beta = s.gamma, s.beta
        backward = self.forward.vjp({self.y: self.dy}, [self.x, self.eps])
        self.Y = self.forward.inline(self.y)
        self.DX, self.DEPS = (backward.inline(out) for out in backward.outputs)
        self._small: dict[int, tuple] = {}

    def small(self, n: int):
        """(elements, y_i, dy_i/dx_j as J[i][j]) at M = n, by instantiation and ``sympy.diff``."""
        if n not in self._small:
            elements = Elements(n)
            ys = [instantiate(self.y, elements, i, self.forward) for i in range(n)]
            xs = elements[self.x]
            jacobian = [[sympy.diff(y, xj) for xj in xs] for y in ys]
            self._small[n] = (elements, ys, jacobian)
        return self._small[n]

    def values(self, symbol, elements: Elements) -> tuple:
        """The scalars of ``symbol`` at a size: one per element for a field, itself for a group scalar."""
        return tuple(elements[symbol]) if isinstance(symbol, Field) else (symbol,)

    def dx(self, n: int) -> list[sympy.Expr]:
        elements, ys, jacobian = self.small(n)
        dys = elements[self.dy]
        return [sympy.Add(*(dys[i] * jacobian[i][j] for i in range(n))) for j in range(n)]


def _decide(layer: _Layer, name: str, claim: _Claim) -> Verdict:
    if all(vanishes(e) for e in claim.symbolic()):
        for n in SIZES:
            if not all(vanishes(e) for e in claim.small(n)):
                raise AssertionError(f"{name} of {layer.name}: proved for symbolic M but not confirmed by brute "
                                     f"force at M = {n}")
        return Verdict(name, True)
    for n in SIZES:  # the smallest counterexample is enough
        if _refuted(claim.small(n)):
            return Verdict(name, False, (n,))
    raise UndecidedError(f"{name} of {layer.name}: neither proved for symbolic M nor refuted at M in {SIZES}")


def _refuted(differences: list[sympy.Expr]) -> bool:
    """A difference clearly nonzero at some point with rational coordinates (eps and a positive)."""
    symbols = sorted(set().union(*(e.free_symbols for e in differences)), key=sympy.default_sort_key)
    for seed in range(3):
        rng = random.Random(seed)
        point = {}
        for symbol in symbols:
            if symbol.is_nonnegative:  # eps, a scale; a bound such as batch renormalisation's d_max
                point[symbol] = sympy.Rational(rng.randint(1, 20), 10)
            else:
                point[symbol] = sympy.Rational(rng.randint(-30, 30), 11)
        if any(_clearly_nonzero(e, point) for e in differences):
            return True
    return False




@cache
def _layer(d: Derivation) -> _Layer:
    return _Layer(d)


_C = sympy.Dummy("c", real=True)
_A = sympy.Dummy("a", positive=True)


def _shift(layer: _Layer) -> _Claim:
    def small(n):
        elements, ys, _ = layer.small(n)
        moved = {xi: xi + _C for xi in elements[layer.x]}
        return [y.xreplace(moved) - y for y in ys]

    return _Claim(lambda: [layer.Y.xreplace({layer.x: layer.x + _C}) - layer.Y], small)


def _scale(layer: _Layer) -> _Claim:
    def small(n):
        elements, ys, _ = layer.small(n)
        scaled = {xi: _A * xi for xi in elements[layer.x]} | {layer.eps: _A**2 * layer.eps}
        return [y.xreplace(scaled) - y for y in ys]

    return _Claim(lambda: [layer.Y.xreplace({layer.x: _A * layer.x, layer.eps: _A**2 * layer.eps}) - layer.Y],
                  small)


def _dx_sums_to_zero(layer: _Layer) -> _Claim:
    return _Claim(lambda: [BatchSum(layer.DX)], lambda n: [sympy.Add(*layer.dx(n))])


def _dx_orthogonal_to_x(layer: _Layer) -> _Claim:
    def small(n):
        elements, ys, _ = layer.small(n)
        dys = elements[layer.dy]
        eps_term = sympy.Add(*(dyi * sympy.diff(y, layer.eps) for dyi, y in zip(dys, ys)))
        return [sympy.Add(*(xi * dxi for xi, dxi in zip(elements[layer.x], layer.dx(n)))) + 2 * layer.eps * eps_term]

    return _Claim(lambda: [BatchSum(layer.x * layer.DX) + 2 * layer.eps * layer.DEPS], small)


def _identity_recovery(layer: _Layer) -> _Claim:
    def recovered(mean, var):
        return {layer.gamma: sympy.sqrt(var + layer.eps), layer.beta: mean}

    def symbolic():
        mean = BatchSum(layer.x) / M
        var = BatchSum((layer.x - mean) ** 2) / M
        return [layer.Y.xreplace(recovered(mean, var)) - layer.x]

    def small(n):
        elements, ys, _ = layer.small(n)
        xs = elements[layer.x]
        mean = sympy.Add(*xs) / n
        var = sympy.Add(*((xi - mean) ** 2 for xi in xs)) / n
        chosen = recovered(mean, var)
        values = {v: chosen[p] for p in (layer.gamma, layer.beta) for v in layer.values(p, elements)}
        return [y.xreplace(values) - xi for y, xi in zip(ys, xs)]

    return _Claim(symbolic, small)


def _jacobian_symmetric(layer: _Layer, constant_parameters: bool) -> _Claim:
    constant = sympy.Dummy("g", real=True)

    def symbolic():
        u, v = Field("u", real=True), Field("v", real=True)
        dx = layer.DX.xreplace({layer.gamma: constant}) if constant_parameters else layer.DX
        return [BatchSum(u * dx.xreplace({layer.dy: v})) - BatchSum(v * dx.xreplace({layer.dy: u}))]

    def small(n):
        elements, _, jacobian = layer.small(n)
        same = {g: constant for g in layer.values(layer.gamma, elements)} if constant_parameters else {}
        return [(jacobian[i][j] - jacobian[j][i]).xreplace(same) for i in range(n) for j in range(i + 1, n)]

    return _Claim(symbolic, small)


# ----- the public questions -----

#: Every invariance :func:`invariances` decides, in the order of the module docstring's table.
INVARIANCES = ("shift", "scale", "dx_sums_to_zero", "dx_orthogonal_to_x", "identity_recovery", "jacobian_symmetric")


@cache
def _verdict(d: Derivation, name: str, constant_parameters: bool = False) -> Verdict:
    layer = _layer(d)
    if name == "identity_recovery":
        if not layer.has_beta:
            return Verdict(name, False, reason="the layer has no beta, so no choice of parameters adds the mean back")
        algebra = _decide(layer, name, _identity_recovery(layer))
        if algebra.proved and d.declaration.spec.grouping.shared_parameters:
            return Verdict(name, False, reason="y = x for one group's choice of parameters, but the parameters are "
                                               "shared by several groups, which cannot all have that choice")
        return algebra
    claims = {"shift": _shift, "scale": _scale, "dx_sums_to_zero": _dx_sums_to_zero,
              "dx_orthogonal_to_x": _dx_orthogonal_to_x}
    if name == "jacobian_symmetric":
        return _decide(layer, name, _jacobian_symmetric(layer, constant_parameters))
    if name not in claims:
        raise ValueError(f"unknown invariance {name!r}; known: {', '.join(INVARIANCES)}")
    return _decide(layer, name, claims[name](layer))


def verdict(layer, name: str, *, constant_parameters: bool = False) -> Verdict:
    """The :class:`Verdict` on the invariance ``name`` (:data:`INVARIANCES`) of ``layer`` (a
    :class:`~bnsym.symbolic.layers.Derivation`, a :class:`~bnsym.symbolic.layers.LayerDeclaration` or a registered
    layer's name); ``constant_parameters`` only for ``jacobian_symmetric``. Cached per derivation."""
    if constant_parameters and name != "jacobian_symmetric":
        raise ValueError(f"constant_parameters applies to jacobian_symmetric only, not to {name!r}")
    return _verdict(as_derivation(layer), name, constant_parameters)


def shift_invariant(layer) -> bool:
    """Proved: y(x + c) = y(x) for every real c added to every value of a group (centred layers; not RMS norm)."""
    return verdict(layer, "shift").proved


def scale_invariant(layer) -> bool:
    """Proved: y(a x; a^2 eps) = y(x; eps) for every a > 0, i.e. y(a x; eps) = y(x; eps / a^2): exact scale
    invariance at eps = 0 only (every layer of the family)."""
    return verdict(layer, "scale").proved


def dx_sums_to_zero(layer) -> bool:
    """Proved: sum over a group of dx = 0 for every dy (centred layers)."""
    return verdict(layer, "dx_sums_to_zero").proved


def dx_orthogonal_to_x(layer) -> bool:
    """Proved: sum over a group of x dx = -2 eps sum of dy dy/deps for every dy (zero at eps = 0): the derivative of
    the scale claim (every layer of the family)."""
    return verdict(layer, "dx_orthogonal_to_x").proved


def identity_recovery(layer) -> bool:
    """Proved: gamma = sqrt(var + eps), beta = mean (the group's own biased variance and mean) give y = x, and the
    parameters are one value per group so every group can have its choice (batch norm; the module docstring)."""
    return verdict(layer, "identity_recovery").proved


def jacobian_symmetric(layer, *, constant_parameters: bool = False) -> bool:
    """Proved: dy_i/dx_j = dy_j/dx_i within a group, with the parameters as declared (gamma one value per group:
    batch and instance norm), or with gamma constant over the group when ``constant_parameters`` (every layer)."""
    return verdict(layer, "jacobian_symmetric", constant_parameters=constant_parameters).proved


def invariances(layer) -> frozenset[str]:
    """The names of :data:`INVARIANCES` proved for ``layer`` (the parameters as declared)."""
    return frozenset(name for name in INVARIANCES if verdict(layer, name).proved)


# ----- what a layer's generated package records -----

#: The name under which :func:`recorded` gives ``jacobian_symmetric(layer, constant_parameters=True)``: the Jacobian
#: of y symmetric once gamma is constant over a group, i.e. the normalised input's Jacobian is (what a check of dx
#: against gamma u and gamma v sees whatever gamma is).
CONSTANT_PARAMETERS = "jacobian_symmetric_constant_parameters"

#: The name under which :func:`recorded` gives :func:`normalisation_undone`.
UNDONE = "normalisation_undone"

#: The name under which :func:`recorded` gives :func:`differentiable`.
DIFFERENTIABLE = "differentiable"

#: The name under which :func:`recorded` gives :func:`standardised`.
STANDARDISED = "standardised"

#: The name under which :func:`recorded` gives :func:`eval_is_training_at_batch_statistics`.
EVAL_IS_TRAINING = "eval_is_training_at_batch_statistics"

#: Every claim :func:`recorded` decides, in order: :data:`INVARIANCES`, then :data:`CONSTANT_PARAMETERS`,
#: :data:`UNDONE`, :data:`DIFFERENTIABLE`, :data:`STANDARDISED` and :data:`EVAL_IS_TRAINING`.
RECORDED = (*INVARIANCES, CONSTANT_PARAMETERS, UNDONE, DIFFERENTIABLE, STANDARDISED, EVAL_IS_TRAINING)


def _undone(layer: _Layer) -> _Claim:
    """y = x with the scale of x_hat set to 1/s and beta to the mean (module docstring of :func:`normalisation_undone`):
    gamma = 1/s - 1 + gamma_0, gamma_0 the neutral gamma (what makes y = x_hat)."""
    d = layer.derivation
    s = d.symbols
    neutral = sympy.nsimplify(d.declaration.spec.neutral_values["gamma"])

    def chosen(scale, mean) -> dict:
        return {layer.gamma: 1 / scale - 1 + neutral, **({layer.beta: mean} if layer.has_beta else {})}

    def symbolic():
        choice = chosen(layer.forward.inline(d.scale), layer.forward.inline(s.mean) if layer.has_beta else None)
        return [layer.Y.xreplace(choice) - layer.x]

    def small(n):
        elements, ys, _ = layer.small(n)
        choice = chosen(instantiate(d.scale, elements, 0, layer.forward),
                        instantiate(s.mean, elements, 0, layer.forward) if layer.has_beta else None)
        values = {v: choice[p] for p in choice for v in layer.values(p, elements)}
        return [y.xreplace(values) - xi for y, xi in zip(ys, elements[layer.x])]

    return _Claim(symbolic, small)


@cache
def _undone_verdict(d: Derivation) -> Verdict:
    layer = _layer(d)
    if not d.saved:  # the statistics the forward saves, after y and any field outputs
        return Verdict(UNDONE, False, reason="the forward pass saves no scale s to undo")
    return _decide(layer, UNDONE, _undone(layer))


def normalisation_undone(layer) -> bool:
    """Proved: y = x when the parameters undo the normalisation of the group: the scale of x_hat (gamma, or
    gamma - gamma_0 + 1 for a layer whose neutral gamma gamma_0 is not 1: 1 + gamma) set to 1/s, s the saved scale
    (invstd: sqrt(var + eps); invrms: sqrt(ms + eps)), and beta, when the layer has one, to the group's mean.

    This is identity recovery without its question of sharing: the parameters are functions of one group's
    statistics, which every group can have at once when all groups hold the same values (the checker's
    ``identity_recovery`` property builds such groups). It holds for every layer whose y is ``(scale) x_hat (+
    beta)`` and fails for a y that is not undone by them."""
    return _undone_verdict(as_derivation(layer)).proved


def differentiable(layer) -> bool:
    """The training forward pass holds nothing constant in the backward (no
    :class:`~bnsym.symbolic.reduction.StopGradient`), so its gradients are its derivatives and a finite difference
    of it checks them (batch renormalisation's r and d are held constant: a finite difference sees them move)."""
    forward = as_derivation(layer).training_forward
    return not any(d.expr.has(StopGradient) for d in forward.definitions)


@cache
def _standardised(d: Derivation) -> bool:
    s, forward = d.symbols, d.training_forward
    neutral = {getattr(s, name): sympy.nsimplify(value) for name, value in d.declaration.spec.neutral_values.items()}
    return prove_fact(forward, forward.inline(s.y).xreplace(neutral), s.x_hat)


def standardised(layer) -> bool:
    """Proved: with its parameters at their neutral values (:attr:`bnsym.spec.LayerSpec.neutral_values`), the
    training y is x_hat, so the identities of a standardised output (mean(y) = 0, sum(dx x_hat), dgamma = sum(dy
    x_hat)) are the layer's (batch renormalisation's y = r x_hat + d is not x_hat)."""
    return _standardised(as_derivation(layer))


def _eval_is_training(layer: _Layer) -> _Claim:
    """Eval y - training y, each running statistic replaced by the batch's own value of the step it averages (in
    the training forward too, where it reads them) and the scalar options by their defaults; a stop-gradient value
    by its argument (the claim is about values, not derivatives)."""
    d = layer.derivation
    spec = d.declaration.spec
    s = d.symbols
    train, inference = layer.forward, d.inference_forward
    own = {getattr(s, name): train.inline(d.step(step)) for name, step in spec.running}
    scalars = {getattr(s, name): sympy.nsimplify(value) for name, value in spec.scalar_defaults.items()}

    def values(expr):
        return expr.xreplace({**own, **scalars}).replace(StopGradient, lambda argument: argument)

    difference = values(train.inline(layer.y)) - values(inference.inline(s.y))

    def small(n):
        elements = Elements(n)
        return [instantiate(difference, elements, i) for i in range(n)]

    return _Claim(lambda: [difference], small)


@cache
def _eval_is_training_verdict(d: Derivation) -> Verdict:
    if not d.declaration.running_statistics:
        return Verdict(EVAL_IS_TRAINING, False, reason="the layer keeps no running statistics: it has no eval mode")
    return _decide(_layer(d), EVAL_IS_TRAINING, _eval_is_training(_layer(d)))


def eval_is_training_at_batch_statistics(layer) -> bool:
    """Proved: eval mode given, as its running statistics, the batch's own value of each step they average
    (``LayerSpec.running``: the mean and biased variance for batch norm; batch renormalisation's mean and sigma =
    sqrt(var + eps)) is the training forward on that batch (reading those same running statistics, where it reads
    them: batch renormalisation's r = 1 and d = 0 there, at its options' defaults). False for a layer without
    running statistics, and for an eval mode declared otherwise (``LayerSpec.inference``)."""
    return _eval_is_training_verdict(as_derivation(layer)).proved


def recorded(layer) -> dict[str, bool]:
    """Each claim of :data:`RECORDED` for ``layer`` (as :func:`verdict` takes it), proved (True) or refuted (False):
    what ``bnsym derive`` writes into the layer's generated NumPy module as plain data (``INVARIANCES``), so that
    the checker reads it with NumPy alone instead of proving it again."""
    decided = {name: verdict(layer, name).proved for name in INVARIANCES}
    decided[CONSTANT_PARAMETERS] = verdict(layer, "jacobian_symmetric", constant_parameters=True).proved
    decided[UNDONE] = normalisation_undone(layer)
    decided[DIFFERENTIABLE] = differentiable(layer)
    decided[STANDARDISED] = standardised(layer)
    decided[EVAL_IS_TRAINING] = eval_is_training_at_batch_statistics(layer)
    return decided


def fingerprint(layer) -> str:
    """A digest of everything :func:`recorded` reads from ``layer``'s declaration: the forward pass as declared
    (its inputs, each definition and its outputs, written by ``sympy.srepr``, which names every symbol's kind and
    assumptions, so gamma as a field differs from gamma as one value per group), the grouping's
    ``shared_parameters`` (identity recovery asks for it) and the neutral parameter values
    (:func:`normalisation_undone` reads gamma's). Equal declarations give equal digests under one SymPy
    version; the generated module records it (``INVARIANCES_FROM``) so that a reader can tell data proved from
    another declaration. Cheap: nothing is derived or proved."""
    d = as_derivation(layer)
    program = d.training_forward
    lines = ["inputs " + " ".join(sympy.srepr(i) for i in program.inputs)]
    lines += [f"{sympy.srepr(e.name)} = {sympy.srepr(e.expr)}" for e in program.definitions]
    lines += ["outputs " + " ".join(sympy.srepr(o) for o in program.outputs),
              f"shared_parameters {bool(d.declaration.spec.grouping.shared_parameters)}",
              f"neutral {sorted(d.declaration.spec.neutral_values.items())}"]
    if d.declaration.running_statistics:  # eval mode, and what it is compared with (eval_is_training_...)
        spec = d.declaration.spec
        lines += [f"eval {sympy.srepr(e.name)} = {sympy.srepr(e.expr)}" for e in d.inference_forward.definitions]
        lines += [f"running {sorted(spec.running)}", f"scalars {sorted(spec.scalar_defaults.items())}"]
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()
