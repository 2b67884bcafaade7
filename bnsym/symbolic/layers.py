"""The normalisation family as declarations, and everything derived from a declaration.

A layer is declared once (:class:`LayerDeclaration`): its forward pass for one *group* of M values in the engine's
vocabulary (:mod:`bnsym.symbolic.reduction`), which axes a group spans, which axes its parameters live on, and
whether it keeps running statistics. Two forward passes cover the family:

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

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import sympy

from bnsym.symbolic import naming
from bnsym.symbolic.program import Definition, Program
from bnsym.symbolic.reduction import BatchSum, Field, M, ParameterField
from bnsym.symbolic.rewrite import Fact, Vocabulary, closed_form, prove_fact

__all__ = ["LAYERS", "Derivation", "LayerDeclaration", "LayerSymbols", "centred_forward", "derivation",
           "rms_forward"]


class LayerSymbols:
    """Every symbol of one layer's derivations, created once so that all its derivations share them.

    ``per_element_parameters`` makes gamma and beta (and their tangents and cotangents) fields.
    """

    def __init__(self, per_element_parameters: bool):
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


@dataclass(frozen=True)
class LayerDeclaration:
    """One normalisation layer, declared once.

    * ``name``: the layer's name (``bnsym.<name>``, ``bnsym/_generated/<name>.py``, ``derivations/<name>.md``).
    * ``title``: its name in prose.
    * ``forward``: :func:`centred_forward` or :func:`rms_forward`.
    * ``per_element_parameters``: gamma (and beta) vary within a group.
    * ``shared_parameters``: one parameter value serves several groups, so a parameter's gradient is summed over
      them (every layer but batch norm).
    * ``running_statistics``: the layer keeps running statistics and has an eval mode (batch norm).
    * ``group``: what one group of M values is, in prose (for the derivation document).
    * ``statistics_over``, ``parameters``: the reduction axes and the parameter axes, in prose.
    * ``conventions``: where the frameworks' conventions differ, one paragraph each (for the document).
    * ``per_sample``: every group lies within one sample (every layer but batch norm), so the compiled kernels can
      finish one group (or one sample) at a time while it is in cache.
    * ``channel_axis``: the layer takes a channel axis, which may be the last one. With ``per_sample`` (group norm,
      instance norm), the groups of a sample then interleave in memory on channel-last input, and the compiled
      kernels add sample-wise loops for that; batch norm's channel axis needs none.
    * ``parameter_per_value``: gamma (and beta) hold one value for every value of a group (layer and RMS norm: the
      normalised shape), so the compiled group-local loops only ever see one parameter value per position and need
      no loop nest for runs of values that share one.
    """

    name: str
    title: str
    forward: Callable[[LayerSymbols], Program]
    per_element_parameters: bool
    shared_parameters: bool
    running_statistics: bool
    group: str
    statistics_over: str
    parameters: str
    conventions: tuple[str, ...] = ()
    per_sample: bool = True
    channel_axis: bool = False
    parameter_per_value: bool = False

    @property
    def centred(self) -> bool:
        return self.forward is centred_forward


class Derivation:
    """Everything derived from one :class:`LayerDeclaration`; each result is computed once, on first use.

    The names of a centred layer's programs are ``y, mean, invstd`` (forward), ``dx, dgamma, dbeta`` (backward),
    ``gx, ggamma, gdy`` (double backward), ``y, ty`` (JVP); an RMS layer has ``invrms`` for ``mean, invstd`` and no
    beta.
    """

    def __init__(self, declaration: LayerDeclaration):
        self.declaration = declaration
        self.symbols = LayerSymbols(declaration.per_element_parameters)

    def __repr__(self) -> str:
        return f"Derivation({self.declaration.name})"

    # ----- the forward pass and what it lets us prove -----

    @cached_property
    def training_forward(self) -> Program:
        return self.declaration.forward(self.symbols)

    @property
    def parameters(self) -> tuple[sympy.Symbol, ...]:
        """The trainable parameters: (gamma, beta), or (gamma,) for a layer without a shift."""
        s = self.symbols
        return (s.gamma, s.beta) if s.beta in self.training_forward.inputs else (s.gamma,)

    @property
    def saved(self) -> tuple[sympy.Symbol, ...]:
        """The statistics the forward pass returns for the backward pass: (mean, invstd) or (invrms,)."""
        return self.training_forward.outputs[1:]

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
        claims = [Fact(BatchSum(s.x_hat**2), M * (1 - s.eps * self.scale**2),
                       "the normalised values have mean square statistic/(statistic + eps), not 1")]
        if self.declaration.centred:
            claims.insert(0, Fact(BatchSum(s.x_hat), sympy.S.Zero, "the normalised values have mean zero"))
        for fact in claims:
            if not prove_fact(self.training_forward, fact.lhs, fact.rhs):
                raise AssertionError(f"could not prove {fact.lhs} = {fact.rhs} from the forward definition")
        return tuple(claims)

    @cached_property
    def vocabulary(self) -> Vocabulary:
        """Closed forms speak of x_hat, the saved statistics and the inputs."""
        s = self.symbols
        if self.declaration.centred:
            eliminate = ((s.x, s.mean + s.x_hat / s.invstd), (s.var, s.invstd**-2 - s.eps))
        else:
            eliminate = ((s.x, s.x_hat / s.invrms), (s.ms, s.invrms**-2 - s.eps))
        for name, replacement in eliminate:
            if not prove_fact(self.training_forward, name, replacement):
                raise AssertionError(f"{name} = {replacement} is not an identity of the forward pass")
        return Vocabulary(forward=self.training_forward, keep=(s.x_hat,) + self.saved, eliminate=eliminate,
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
        return closed_form(program, name, self.vocabulary, collect_over=(s.dy, s.x_hat))

    # ----- training mode -----

    @cached_property
    def backward(self) -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
        """The training backward pass: the derived program, and the closed form of dx and the parameter adjoints
        (per group: summed over the groups that share a parameter only when kernels are built)."""
        s = self.symbols
        program = self.training_forward.vjp({s.y: s.dy}, [s.x, *self.parameters],
                                            name=lambda v: naming.adjoint(v.name))
        return program, {out: self.closed_form_of(program, out) for out in program.outputs}

    def _second_order(self, first, closed, forward: Program, statistics, vocab: Vocabulary):
        s = self.symbols
        needed = [d for d in forward.definitions if d.name in statistics]
        outputs = list(closed)
        inputs = [i for i in forward.inputs if i != s.beta] + [s.dy]
        program = Program(inputs, needed + [Definition(name, closed[name]) for name in outputs], outputs)
        cotangents = {s.x: s.ggx, s.gamma: s.gggamma, s.beta: s.ggbeta}
        wrt = [s.x, *self.parameters]
        seeds = {adjoint: cotangents[u] for adjoint, u in zip(first.outputs, wrt)}
        derived = program.vjp(seeds, [s.x, s.gamma, s.dy], name=lambda v: naming.second_order(v.name))
        return derived, {out: closed_form(derived, out, vocab, collect_over=(s.ggx, s.dy, s.x_hat))
                         for out in derived.outputs}

    @cached_property
    def double_backward(self) -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
        """Training double backward: the gradients of <ggx, dx> + <gggamma, dgamma> (+ <ggbeta, dbeta>) with
        respect to x, gamma and dy, by reverse mode through the derived backward (whose statistics depend on x)."""
        first, closed = self.backward
        return self._second_order(first, closed, self.training_forward, self.statistics, self.vocabulary)

    @cached_property
    def jvp(self) -> tuple[Program, dict[sympy.Symbol, sympy.Expr]]:
        """Training forward mode: the tangent ty of y when x and the parameters move along their tangents."""
        s = self.symbols
        forward = Program(self.training_forward.inputs, self.training_forward.definitions, [s.y])
        tangents = {s.x: s.tx, s.gamma: s.tgamma, s.beta: s.tbeta}
        program = forward.jvp({u: tangents[u] for u in (s.x, *self.parameters)},
                              name=lambda v: naming.tangent(v.name))
        y, ty = program.outputs
        return program, {ty: closed_form(program, ty, self.vocabulary, collect_over=(s.tx, s.x_hat))}

    # ----- eval mode (layers with running statistics) -----

    def _require_running_statistics(self) -> None:
        if not self.declaration.running_statistics:
            raise ValueError(f"{self.declaration.name} keeps no running statistics and has no eval mode")

    @cached_property
    def inference_forward(self) -> Program:
        """Eval mode: the training forward pass with the batch statistics frozen to given running statistics.

        Nothing is re-typed: :meth:`Program.freeze` replaces the definitions of ``mean`` and ``var`` by the inputs
        ``running_mean`` and ``running_var``, and keeps everything downstream.
        """
        self._require_running_statistics()
        s = self.symbols
        frozen = self.training_forward.freeze({s.mean: s.running_mean, s.var: s.running_var})
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


LAYERS: dict[str, LayerDeclaration] = {
    d.name: d for d in (
        LayerDeclaration(
            "batch_norm", "Batch normalisation", centred_forward, per_element_parameters=False,
            shared_parameters=False, running_statistics=True,
            per_sample=False, channel_axis=True,
            group="one channel: its values over the batch and every spatial position",
            statistics_over="every axis but the channel axis", parameters="one value per channel"),
        LayerDeclaration(
            "layer_norm", "Layer normalisation", centred_forward, per_element_parameters=True,
            shared_parameters=True, running_statistics=False, parameter_per_value=True,
            group="one sample's values over the trailing normalised axes",
            statistics_over="the trailing normalised axes", parameters="the shape of the normalised axes",
            conventions=(
                "eps: PyTorch `torch.nn.LayerNorm` 1e-5, Flax `nn.LayerNorm` 1e-6, Keras 1e-3; always inside the "
                "square root, with the biased variance.",
                "PyTorch's `elementwise_affine=False` (and `bias=False`) drop gamma (and beta): pass `None`.",
                "Flax's `use_fast_variance=True` (its default) computes E[x^2] - E[x]^2, which cancels at a large "
                "offset; bnsym always uses the two-pass variance written above, which matches Flax with "
                "`use_fast_variance=False`.")),
        LayerDeclaration(
            "rms_norm", "RMS normalisation", rms_forward, per_element_parameters=True,
            shared_parameters=True, running_statistics=False, parameter_per_value=True,
            group="one sample's values over the trailing normalised axes",
            statistics_over="the trailing normalised axes (nothing is centred)",
            parameters="the shape of the normalised axes (a scale gamma only, no beta)",
            conventions=(
                "eps: PyTorch's `torch.nn.functional.rms_norm` with `eps=None` uses `torch.finfo(dtype).eps` "
                "(2.2e-16 in float64, 1.2e-7 in float32); Flax `nn.RMSNorm` uses 1e-6, which is bnsym's default. "
                "Both add eps to the mean square inside the square root.",)),
        LayerDeclaration(
            "group_norm", "Group normalisation", centred_forward, per_element_parameters=True,
            shared_parameters=True, running_statistics=False,
            channel_axis=True,
            group="one sample's values over C/G consecutive channels and every spatial position",
            statistics_over="per sample, the channels split into G contiguous groups, with the spatial axes",
            parameters="one value per channel",
            conventions=(
                "eps: PyTorch `torch.nn.GroupNorm` 1e-5, Flax `nn.GroupNorm` 1e-6; both inside the square root "
                "with the biased variance over the group.",
                "Channels are grouped contiguously: group g holds channels g*C/G to (g+1)*C/G - 1 in both "
                "frameworks. With G = 1 the layer is layer norm over (C, spatial) with per-channel parameters; "
                "with G = C it is instance norm.",
                "Flax's `use_fast_variance` applies here as for layer norm.")),
        LayerDeclaration(
            "instance_norm", "Instance normalisation", centred_forward, per_element_parameters=False,
            shared_parameters=True, running_statistics=False,
            channel_axis=True,
            group="one sample's values of one channel over the spatial positions",
            statistics_over="per sample and channel, the spatial axes", parameters="one value per channel",
            conventions=(
                "PyTorch's `torch.nn.InstanceNorm*d` has `affine=False` by default (pass `None` for gamma and "
                "beta) and eps 1e-5; it refuses a spatial size of 1 in training.",
                "PyTorch's `track_running_stats=True` variant of instance norm keeps running statistics; bnsym's "
                "instance norm is the training-statistics layer, as `torch.nn.functional.instance_norm` with "
                "`use_input_stats=True`.")),
    )
}

_DERIVATIONS: dict[str, Derivation] = {}


def derivation(name: str) -> Derivation:
    """The (cached) :class:`Derivation` of the registered layer ``name``."""
    if name not in LAYERS:
        raise ValueError(f"unknown layer {name!r}; known: {', '.join(LAYERS)}")
    if name not in _DERIVATIONS:
        _DERIVATIONS[name] = Derivation(LAYERS[name])
    return _DERIVATIONS[name]
