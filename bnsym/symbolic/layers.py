"""The normalisation family as declarations, and everything derived from a declaration.

A layer is declared once (:class:`LayerDeclaration`): its specification (:class:`bnsym.spec.LayerSpec`: which axes
a group spans, which axes its parameters live on, whether it keeps running statistics) and its forward pass for one
*group* of M values in the engine's vocabulary (:mod:`bnsym.symbolic.reduction`). Two standard forward passes,
chosen by the specification's ``statistic``, cover the textbook family:

* centred (batch, layer, group and instance norm)::

      mean   = (1/M) sum_i x_i
      var    = (1/M) sum_i (x_i - mean)^2          biased, two-pass: never E[x^2] - E[x]^2
      invstd = 1 / sqrt(var + eps)
      x_hat  = (x - mean) * invstd
      y      = gamma * x_hat + beta

* root mean square (RMS norm)::

      ms     = (1/M) sum_i x_i^2
      invrms = 1 / sqrt(ms + eps)
      x_hat  = x * invrms
      y      = gamma * x_hat

A variant declares its own forward pass in its specification (``LayerSpec.forward``: Gemma's RMS norm scales by
``1 + gamma``), a function of the same symbols (:class:`LayerSymbols`); it is checked before anything is derived
from it (:mod:`bnsym.symbolic.checks`).

The layers differ in where gamma and beta live relative to a group. In batch and instance norm a group is one
channel's values, so gamma is one value per group: a channel scalar. In layer, group and RMS norm the parameters
vary *within* a group (layer norm's gamma has the normalised shape; a group-norm group holds several channels), so
gamma and beta are fields (:class:`~bnsym.symbolic.reduction.ParameterField`: per element, the same in every
group). When a parameter is shared by several groups (every
layer but batch norm), its gradient is the per-group adjoint derived here summed over those groups: one rule,
applied when kernels are built (:class:`~bnsym.symbolic.reduction.ParameterSum`).

Everything else (the backward pass, the double backward, forward mode, eval mode where there are running
statistics, the facts the closed forms rely on) is derived by :class:`Derivation` from the declaration, with no
per-layer code. Derivations are cached: each runs once per process.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import sympy

from bnsym.spec import SPECS, LayerSpec, spec
from bnsym.spec.loading import declaration_file
from bnsym.symbolic import naming
from bnsym.symbolic.checks import DeclarationError, check_forward, vocabulary_identities
from bnsym.symbolic.program import Definition, Program
from bnsym.symbolic.reduction import BatchSum, Field, M, ParameterField
from bnsym.symbolic.rewrite import Fact, Vocabulary, closed_form, prove_fact

__all__ = ["LAYERS", "Derivation", "LayerDeclaration", "LayerSymbols", "centred_forward", "derivation",
           "rms_forward"]


class LayerSymbols:
    """Every symbol of one layer's derivations, created once so that all its derivations share them.

    ``per_element_parameters`` makes gamma and beta (and their tangents and cotangents) fields. ``fields`` are the
    specification's field inputs and outputs (``LayerSpec.field_inputs``, ``field_outputs``): each is an attribute
    (``s.residual``, ``s.h``), a field; :meth:`field` gives any field by name (``s.field("dh")``), one symbol per
    name.
    """

    def __init__(self, per_element_parameters: bool, running: tuple[str, ...] = (), scalars: tuple[str, ...] = (),
                 fields: tuple[str, ...] = ()):
        self._fields: dict[str, Field] = {}
        for name in fields:
            setattr(self, name, self.field(name))
        field = lambda name: Field(name, real=True)  # noqa: E731
        scalar = lambda name, **kw: sympy.Symbol(name, **(kw or {"real": True}))  # noqa: E731
        parameter = (lambda name: ParameterField(name, real=True)) if per_element_parameters else scalar
        self.x, self.y, self.x_hat, self.dy = field("x"), field("y"), field("x_hat"), field(naming.adjoint("y"))
        self.gamma, self.beta = parameter("gamma"), parameter("beta")
        self.eps = scalar("eps", positive=True)
        self.mean = scalar("mean")
        self.var = scalar("var", nonnegative=True)
        self.invstd = scalar("invstd", positive=True)
        self.ms = scalar("ms", nonnegative=True)
        self.invrms = scalar("invrms", positive=True)
        self.running_mean = scalar("running_mean")
        self.running_var = scalar("running_var", nonnegative=True)
        # Cotangents a double backward receives for dx, dgamma, dbeta; tangents a JVP receives for x, gamma, beta.
        self.ggx = field("gg" + "x")
        self.gggamma, self.ggbeta = parameter("gg" + "gamma"), parameter("gg" + "beta")
        self.tx = field(naming.tangent("x"))
        self.tgamma, self.tbeta = parameter(naming.tangent("gamma")), parameter(naming.tangent("beta"))
        self.M = M
        # A layer's own running statistics (batch renormalisation's running_std: positive) and scalar options (r_max,
        # d_max: channel scalars that are one value for the whole call).
        for name in running:
            if not hasattr(self, name):
                setattr(self, name, scalar(name, positive=True))
        for name in scalars:
            setattr(self, name, scalar(name, nonnegative=True))

    def constants(self, spec: LayerSpec) -> tuple[sympy.Symbol, ...]:
        """The inputs of ``spec``'s training forward pass that are never differentiated: the running statistics it
        reads (``spec.reads_running``), then its scalar options (``spec.scalars``): ``spec.constant_names``."""
        return tuple(getattr(self, name) for name in spec.constant_names)

    def field(self, name: str) -> Field:
        """The field named ``name`` (created once): a declared field, its adjoint ``d<name>``, its tangent
        ``t<name>``, its double-backward cotangent ``gg<name>``."""
        if name not in self._fields:
            self._fields[name] = Field(name, real=True)
        return self._fields[name]


# ----- the two forward passes, each written once -----

def centred_forward(s: LayerSymbols) -> Program:
    """The centred training forward pass: (x, gamma, beta, eps) -> (y, mean, invstd)."""
    return Program(
        inputs=[s.x, s.gamma, s.beta, s.eps],
        definitions=[
            Definition(s.mean, BatchSum(s.x) / M),
            Definition(s.var, BatchSum((s.x - s.mean) ** 2) / M),
            Definition(s.invstd, 1 / sympy.sqrt(s.var + s.eps)),
            Definition(s.x_hat, (s.x - s.mean) * s.invstd),
            Definition(s.y, s.gamma * s.x_hat + s.beta),
        ],
        outputs=[s.y, s.mean, s.invstd],
    )


def rms_forward(s: LayerSymbols) -> Program:
    """The root-mean-square forward pass: (x, gamma, eps) -> (y, invrms). Nothing is centred, so the mean square
    sum(x^2)/M is the statistic itself, not a difference of two large terms."""
    return Program(
        inputs=[s.x, s.gamma, s.eps],
        definitions=[
            Definition(s.ms, BatchSum(s.x**2) / M),
            Definition(s.invrms, 1 / sympy.sqrt(s.ms + s.eps)),
            Definition(s.x_hat, s.x * s.invrms),
            Definition(s.y, s.gamma * s.x_hat),
        ],
        outputs=[s.y, s.invrms],
    )


#: The forward pass of each kind of statistic a specification names (:attr:`bnsym.spec.LayerSpec.statistic`).
FORWARDS: dict[str, Callable[[LayerSymbols], Program]] = {"centred": centred_forward, "rms": rms_forward}


@dataclass(frozen=True)
class LayerDeclaration:
    """One normalisation layer, declared once: its specification (:class:`bnsym.spec.LayerSpec`: groups, options,
    parameters, statistics, prose) and its forward pass for one group, in the engine's vocabulary.

    Every other attribute reads the specification: ``name``, ``title``, ``running_statistics``, ``conventions``,
    the prose ``group``, ``statistics_over`` and ``parameters_are``, and the grouping's facts
    (:class:`bnsym.spec.Grouping`): ``per_element_parameters`` (gamma and beta vary within a group, so they are
    fields of the derivation), ``shared_parameters`` (a parameter's gradient sums over the groups that share it),
    ``per_sample``, ``channel_axis`` and ``parameter_per_value`` (which loop strategies the compiled kernels need).
    """

    spec: LayerSpec
    forward: Callable[[LayerSymbols], Program]
    inference: Callable[[LayerSymbols], Mapping] | None = None

    @classmethod
    def of(cls, spec: LayerSpec) -> LayerDeclaration:
        """The declaration of a specified layer: its own forward pass (``spec.forward``, a function or
        ``"module:function"``), or the standard one of its kind of statistic; and its own eval mode
        (``spec.inference``), if it declares one."""
        forward = FORWARDS[spec.statistic] if spec.forward is None else _resolve(spec, "forward")
        inference = None if spec.inference is None else _resolve(spec, "inference")
        return cls(spec, forward, inference)

    def __getattr__(self, name: str):
        if name in _FROM_SPEC:
            return getattr(self.spec, name)
        if name in _FROM_GROUPING:
            return getattr(self.spec.grouping, name)
        raise AttributeError(f"LayerDeclaration has no attribute {name!r}")

    @property
    def centred(self) -> bool:
        """The specification's kind of statistic is centred (a mean and a variance; else a mean square)."""
        return self.spec.centred

    @property
    def forward_source(self) -> str:
        """Where the forward pass is written, for documents and generated code: ``package.module.function``, or
        ``file.py:function`` for a declaration file loaded by path (never the path itself, which differs between
        machines)."""
        module = getattr(self.forward, "__module__", None) or "<unknown module>"
        name = getattr(self.forward, "__qualname__", None) or repr(self.forward)
        file = declaration_file(module)
        return f"{file}:{name}" if file is not None else f"{module}.{name}"


def _resolve(spec: LayerSpec, field: str) -> Callable:
    """The function that ``spec.<field>`` (forward or inference) is or names (``"package.module:function"``)."""
    given = getattr(spec, field)
    if not isinstance(given, str):
        return given
    module, _, function = given.partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as error:
        what = "forward pass" if field == "forward" else "eval mode (inference)"
        raise DeclarationError(f"{spec.name}: its {what} {given!r} cannot be found ({error})") from None


_FROM_SPEC = frozenset({"name", "title", "running_statistics", "group", "statistics_over", "parameters_are",
                        "conventions"})
_FROM_GROUPING = frozenset({"per_element_parameters", "shared_parameters", "per_sample", "channel_axis",
                            "parameter_per_value", "sample_parameters"})


class Derivation:
    """Everything derived from one :class:`LayerDeclaration`; each result is computed once, on first use.

    The names of a centred layer's programs are ``y, mean, invstd`` (forward), ``dx, dgamma, dbeta`` (backward),
    ``gx, ggamma, gdy`` (double backward), ``y, ty`` (JVP); an RMS layer has ``invrms`` for ``mean, invstd`` and no
    beta.
    """

    def __init__(self, declaration: LayerDeclaration):
        self.declaration = declaration
        spec = declaration.spec
        self.symbols = LayerSymbols(declaration.per_element_parameters, spec.running_names,
                                    tuple(spec.scalar_defaults), (*spec.field_inputs, *spec.field_outputs))

    def __repr__(self) -> str:
        return f"Derivation({self.declaration.name})"

    # ----- the forward pass and what it lets us prove -----

    @cached_property
    def training_forward(self) -> Program:
        """The forward pass as declared (unchecked: :attr:`checked_forward` is the one derivatives come from)."""
        return self.declaration.forward(self.symbols)

    @cached_property
    def checked_forward(self) -> Program:
        """The forward pass, once it has passed every check of :mod:`bnsym.symbolic.checks` against the layer's
        specification (DeclarationError otherwise)."""
        return check_forward(self.declaration.spec, self.symbols, self.training_forward,
                             self.declaration.forward_source, inference=lambda: self.inference_forward)

    @property
    def parameters(self) -> tuple[sympy.Symbol, ...]:
        """The trainable parameters: (gamma, beta), or (gamma,) for a layer without a shift."""
        s = self.symbols
        return (s.gamma, s.beta) if s.beta in self.training_forward.inputs else (s.gamma,)

    @property
    def constants(self) -> tuple[sympy.Symbol, ...]:
        """The inputs of the training forward pass that are never differentiated (:meth:`LayerSymbols.constants`):
        the running statistics it reads, then its scalar options; the backward kernels take them too."""
        return self.symbols.constants(self.declaration.spec)

    @property
    def running(self) -> tuple[sympy.Symbol, ...]:
        """The running statistics (running_mean, running_var; batch renormalisation's running_std)."""
        return tuple(getattr(self.symbols, name) for name in self.declaration.spec.running_names)

    def step(self, name: str) -> sympy.Symbol:
        """The name of the training forward pass's step ``name`` (a running statistic averages it)."""
        for definition in self.training_forward.definitions:
            if definition.name.name == name:
                return definition.name
        raise DeclarationError(f"{self.declaration.name}: the forward pass defines no step {name!r}, which a "
                               "running statistic averages (LayerSpec.running)")

    @property
    def field_inputs(self) -> tuple[sympy.Symbol, ...]:
        """The per-element inputs that the gradients are taken for: (x, *LayerSpec.field_inputs)."""
        s = self.symbols
        return (s.x, *(getattr(s, name) for name in self.declaration.spec.field_inputs))

    @property
    def field_outputs(self) -> tuple[sympy.Symbol, ...]:
        """The per-element outputs the backward takes an upstream gradient for: (y, *LayerSpec.field_outputs)."""
        s = self.symbols
        return (s.y, *(getattr(s, name) for name in self.declaration.spec.field_outputs))

    @property
    def normalised(self) -> sympy.Symbol:
        """The field whose groups are normalised (``LayerSpec.normalises``): x, or a field output such as h."""
        return getattr(self.symbols, self.declaration.spec.normalises)

    def adjoint(self, symbol: sympy.Symbol) -> sympy.Symbol:
        """The upstream gradient of a field output (``dy``, ``dh``), the cotangent of a gradient (``ggx``,
        ``ggresidual``, ``gggamma``) and the tangent of an input (``tx``, ``tgamma``) have these names."""
        s = self.symbols
        return s.dy if symbol == s.y else s.field(naming.adjoint(symbol.name))

    @property
    def upstream(self) -> tuple[sympy.Symbol, ...]:
        """The upstream gradients the backward takes, one per field output: (dy, *d field outputs)."""
        return tuple(self.adjoint(o) for o in self.field_outputs)

    def cotangent(self, symbol: sympy.Symbol) -> sympy.Symbol:
        """The double backward's cotangent for the gradient of the input ``symbol``: ggx, ggresidual, gggamma."""
        s = self.symbols
        known = {s.x: s.ggx, s.gamma: s.gggamma, s.beta: s.ggbeta}
        return known[symbol] if symbol in known else s.field("gg" + symbol.name)

    def tangent_of(self, symbol: sympy.Symbol) -> sympy.Symbol:
        """Forward mode's tangent of the input ``symbol``: tx, tresidual, tgamma."""
        s = self.symbols
        known = {s.x: s.tx, s.gamma: s.tgamma, s.beta: s.tbeta}
        return known[symbol] if symbol in known else s.field(naming.tangent(symbol.name))

    @property
    def saved(self) -> tuple[sympy.Symbol, ...]:
        """The statistics the forward pass returns for the backward pass, after y and the field outputs: (mean,
        invstd) or (invrms,)."""
        return self.training_forward.outputs[len(self.declaration.spec.outputs):]

    @property
    def scale(self) -> sympy.Symbol:
        """1/sqrt(statistic + eps): ``invstd`` or ``invrms``."""
        return self.saved[-1]

    @property
    def statistics(self) -> frozenset:
        """The names a backward pass recomputes from x when it is differentiated again."""
        return frozenset(d.name for d in self.training_forward.definitions if d.name != self.symbols.y)

    @cached_property
    def facts(self) -> tuple[Fact, ...]:
        """Identities about the forward pass, each proved from it before it is used."""
        s = self.symbols
        forward = self.checked_forward
        claims = [Fact(BatchSum(s.x_hat**2), M * (1 - s.eps * self.scale**2),
                       "the normalised values have mean square statistic/(statistic + eps), not 1")]
        if self.declaration.centred:
            claims.insert(0, Fact(BatchSum(s.x_hat), sympy.S.Zero, "the normalised values have mean zero"))
        for fact in claims:
            if not prove_fact(forward, fact.lhs, fact.rhs):
                raise AssertionError(f"could not prove {fact.lhs} = {fact.rhs} from the forward definition")
        return tuple(claims)

    @cached_property
    def vocabulary(self) -> Vocabulary:
        """Closed forms speak of x_hat, the saved statistics and the inputs."""
        s = self.symbols
        forward = self.checked_forward
        eliminate = vocabulary_identities(s, self.declaration.centred, self.normalised)
        for name, replacement in eliminate:
            if not prove_fact(forward, name, replacement):
                raise AssertionError(f"{name} = {replacement} is not an identity of the forward pass")
        # The normalised field is kept (not inlined: h stays h, not x + residual) and then eliminated for x_hat.
        return Vocabulary(forward=forward, keep=(s.x_hat, self.normalised) + self.saved, eliminate=eliminate,
                          facts=self.facts)

    def identity_recovery_holds(self) -> bool:
        """Proves that gamma = sqrt(var + eps) and beta = mean give y = x (centred layers with per-group gamma)."""
        s = self.symbols
        forward = self.training_forward
        substituted = forward.inline(s.y).xreplace(
            {s.gamma: sympy.sqrt(forward.inline(s.var) + s.eps), s.beta: forward.inline(s.mean)})
        return prove_fact(forward, substituted, s.x)

    def closed_form_of(self, program: Program, name: sympy.Symbol) -> sympy.Expr:
        """Any name of a derived training-mode program, in closed form in the layer's vocabulary."""
        s = self.symbols
        return closed_form(program, name, self.vocabulary, collect_over=(*self.upstream, s.x_hat))

    # ----- training mode -----

    def _adjoint_name(self, v: sympy.Symbol) -> str:
        """The name of the adjoint of ``v`` in a derived backward program: ``d<v>``, except a field output that
        later steps use (h), whose total adjoint (its upstream gradient dh plus what y sends back) is ``dh_total``,
        as dh is the seed's name."""
        if v in self.field_outputs[1:]:
            return naming.adjoint(v.name) + "_total"
        return naming.adjoint(v.name)

    @cached_property
    def backward(self) -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
        """The training backward pass: the derived program, and the closed form of the adjoints of the field inputs
        (dx, then one per field input) and of the parameters (per group: summed over the groups that share a
        parameter only when kernels are built), for an upstream gradient per field output (dy, dh, ...)."""
        seeds = dict(zip(self.field_outputs, self.upstream))
        program = self.training_forward.vjp(seeds, [*self.field_inputs, *self.parameters], name=self._adjoint_name)
        return program, {out: self.closed_form_of(program, out) for out in program.outputs}

    def _second_order(self, first, closed, forward: Program, statistics, vocab: Vocabulary):
        s = self.symbols
        needed = [d for d in forward.definitions if d.name in statistics]
        outputs = list(closed)
        inputs = [i for i in forward.inputs if i != s.beta] + list(self.upstream)
        uses_beta = [name for name in outputs if closed[name].has(s.beta)]
        if uses_beta:
            # The backward kernels take no beta (every standard layer's gradients are free of it), so a closed form
            # that needs it has no kernel to live in: refuse the declaration, naming the layer and why.
            raise DeclarationError(
                f"{self.declaration.name}: the gradient{'s' * (len(uses_beta) > 1)} "
                f"{', '.join(map(str, uses_beta))} depend{'s' * (len(uses_beta) == 1)} on beta, which the backward "
                "pass does not take (it takes the upstream gradients, x, gamma and the saved statistics). Write y so "
                "that beta enters it as a shift, y = (scale) * x_hat + beta, not inside the scale's argument "
                "(gamma * (x_hat + beta))")
        program = Program(inputs, needed + [Definition(name, closed[name]) for name in outputs], outputs)
        wrt = [*self.field_inputs, *self.parameters]
        seeds = {adjoint: self.cotangent(u) for adjoint, u in zip(first.outputs, wrt)}
        derived = program.vjp(seeds, [*self.field_inputs, s.gamma, *self.upstream],
                              name=lambda v: naming.second_order(v.name))
        collect = (*(self.cotangent(u) for u in self.field_inputs), *self.upstream, s.x_hat)
        return derived, {out: closed_form(derived, out, vocab, collect_over=collect) for out in derived.outputs}

    @cached_property
    def double_backward(self) -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
        """Training double backward: the gradients of <ggx, dx> + <gggamma, dgamma> (+ <ggbeta, dbeta>) with
        respect to x, gamma and dy, by reverse mode through the derived backward (whose statistics depend on x)."""
        first, closed = self.backward
        return self._second_order(first, closed, self.training_forward, self.statistics, self.vocabulary)

    @cached_property
    def jvp(self) -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
        """Training forward mode: the tangent of each field output (ty, and th for a field output h) when the field
        inputs and the parameters move along their tangents (tx, tresidual, tgamma, ...)."""
        s = self.symbols
        outputs = self.field_outputs
        forward = Program(self.training_forward.inputs, self.training_forward.definitions, outputs)
        inputs = (*self.field_inputs, *self.parameters)
        program = forward.jvp({u: self.tangent_of(u) for u in inputs}, name=lambda v: naming.tangent(v.name))
        collect = (*(self.tangent_of(u) for u in self.field_inputs), s.x_hat)
        return program, {t: closed_form(program, t, self.vocabulary, collect_over=collect)
                         for t in program.outputs[len(outputs):]}

    # ----- eval mode (layers with running statistics) -----

    def _require_running_statistics(self) -> None:
        if not self.declaration.running_statistics:
            raise ValueError(f"{self.declaration.name} keeps no running statistics and has no eval mode")

    @cached_property
    def inference_forward(self) -> Program:
        """Eval mode: the training forward pass with the batch statistics frozen to given running statistics.

        Nothing is re-typed: :meth:`Program.freeze` replaces the definitions of the steps that the running statistics
        average (``mean`` and ``var``) by the inputs ``running_mean`` and ``running_var``, and keeps everything
        downstream; a layer that declares its own eval mode (``LayerSpec.inference``) says which steps become what
        (batch renormalisation: mean and sigma the running ones, r = 1, d = 0).
        """
        self._require_running_statistics()
        s = self.symbols
        if self.declaration.inference is None:
            frozen = {self.step(step): getattr(s, running) for running, step in self.declaration.spec.running}
        else:
            frozen = dict(self.declaration.inference(s))
        frozen = self.training_forward.freeze(frozen)
        return Program(frozen.inputs, frozen.definitions, [s.y]).prune()

    @cached_property
    def inference_vocabulary(self) -> Vocabulary:
        """Closed forms in eval mode speak of x_hat = (x - running_mean) * invstd and invstd; no reduction facts
        apply (x_hat does not have mean zero over a batch in eval mode)."""
        s = self.symbols
        forward = self.inference_forward
        eliminate = ((s.x, s.running_mean + s.x_hat / s.invstd),)
        for name, replacement in eliminate:
            if not prove_fact(forward, name, replacement):
                raise AssertionError(f"{name} = {replacement} is not an identity of the eval forward pass")
        return Vocabulary(forward=forward, keep=(s.x_hat, s.invstd), eliminate=eliminate, facts=())

    @cached_property
    def inference_backward(self) -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
        """Eval-mode backward: reverse mode through :attr:`inference_forward`."""
        s = self.symbols
        program = self.inference_forward.vjp({s.y: s.dy}, [s.x, *self.parameters],
                                             name=lambda v: naming.adjoint(v.name))
        return program, {out: closed_form(program, out, self.inference_vocabulary, collect_over=(s.dy, s.x_hat))
                         for out in program.outputs}

    @cached_property
    def inference_double_backward(self) -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
        """Eval-mode double backward: as :attr:`double_backward`, with the running statistics constant."""
        s = self.symbols
        first, closed = self.inference_backward
        return self._second_order(first, closed, self.inference_forward, {s.invstd, s.x_hat},
                                  self.inference_vocabulary)


class _Declarations(Mapping):
    """Every layer of :data:`bnsym.spec.SPECS` (registered ones too), as a :class:`LayerDeclaration`."""

    def __getitem__(self, name: str) -> LayerDeclaration:
        if name not in SPECS:
            raise KeyError(name)
        return LayerDeclaration.of(SPECS[name])

    def __iter__(self):
        return iter(SPECS)

    def __len__(self) -> int:
        return len(SPECS)


LAYERS: Mapping[str, LayerDeclaration] = _Declarations()

_DERIVATIONS: dict[str, Derivation] = {}


def derivation(name: str) -> Derivation:
    """The (cached) :class:`Derivation` of the registered layer ``name`` (cached per specification: a layer
    registered again under the same name with another specification is derived again). Its forward pass is checked
    first (:mod:`bnsym.symbolic.checks`): DeclarationError, a ValueError, when the engine cannot derive from it."""
    declaration = LayerDeclaration.of(spec(name))
    if name not in _DERIVATIONS or _DERIVATIONS[name].declaration != declaration:
        derived = Derivation(declaration)
        _ = derived.checked_forward  # a declaration the engine cannot derive from is refused before anything else
        _DERIVATIONS[name] = derived
    return _DERIVATIONS[name]


def as_derivation(layer) -> Derivation:
    """``layer`` as a :class:`Derivation`: a Derivation as it is, a :class:`LayerDeclaration` derived (not
    cached: a made-up declaration), a registered layer's name by :func:`derivation`; TypeError otherwise."""
    if isinstance(layer, Derivation):
        return layer
    if isinstance(layer, LayerDeclaration):
        return Derivation(layer)
    if isinstance(layer, str):
        return derivation(layer)
    raise TypeError(f"layer must be a Derivation, a LayerDeclaration or a registered layer's name, got "
                    f"{type(layer).__name__}")
