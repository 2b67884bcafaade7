"""Batch norm over K shards (data-parallel training): the same derivation, with its reductions split.

Notation. The M values of a channel are split over K workers ("shards"); shard k holds n_k of them (n_k = 0 is
allowed: a worker with an empty batch), so M = sum_k n_k. Two reductions replace the one of
:mod:`bnsym.symbolic.reduction`:

* :class:`LocalSum` ``(e, k)`` is sum_{i in shard k} e_i, what worker k computes alone (a per-shard value);
* :class:`ShardSum` ``(v)`` is sum_k v_k over the K shards of a per-shard value ``v``: one all-reduce.

The only rule of sharding is the definition of a sum over a partition, :func:`shard`:

    BatchSum(e) = ShardSum(LocalSum(e, k))        M = ShardSum(n(k)).

It is exact for every expression, so applying it to any program the engine derived (the forward definition, the
closed-form backward) gives that program's sharded form, with nothing re-derived and nothing typed. What must cross
the network, and when, is then read off the sharded program by :func:`communication_plan`: every ``ShardSum`` is an
all-reduce, and one that depends on the result of another must wait for it (a later *round*).

The alternative one-round forward merges per-shard statistics (count, mean, M2) instead of all-reducing
(:func:`merge_identities`); :func:`prove` checks those identities from the definitions. Proofs may expand squares
inside a local sum (they are exact algebra); computed expressions never do, so the sharded variance stays the
two-pass form.

Per-shard quantities are SymPy expressions in the shard label :data:`SHARD` (``k``): ``n(k)``, ``LocalSum(x, k)``,
the shard mean ``mu(k)``. An expression that does not mention ``k`` (outside a ``ShardSum``, which binds it) is the
same on every worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

import sympy

from bnsym.symbolic.layers import Derivation
from bnsym.symbolic.program import Definition
from bnsym.symbolic.reduction import BatchSum, Field, M

__all__ = ["K", "LocalSum", "MergeIdentity", "Round", "SHARD", "ShardSum", "TOTAL_COUNT", "all_reduce_shortcut",
           "communication_plan", "definition_rounds", "inline", "instantiate_shards", "local_contribution",
           "merge_identities", "n", "per_shard_statistics", "prove", "shard", "shard_m2", "shard_mean",
           "sharded_backward", "sharded_forward", "sharded_running_variance", "varies_per_element",
           "varies_per_shard"]

#: The label of "the current shard"; a per-shard quantity is an expression in it.
SHARD = sympy.Symbol("k", integer=True, nonnegative=True)

#: The number of shards (workers).
K = sympy.Symbol("K", integer=True, positive=True)



class _PerShard(sympy.Function):
    """A named per-shard value ``f(s)`` of shard ``s``, printed as a subscript (n_k, mu_k)."""

    nargs = 1
    latex_template = "%s"

    def _latex(self, printer, exp=None):
        tex = self.latex_template % printer._print(self.args[0])
        return tex if exp is None else "{%s}^{%s}" % (tex, exp)


class n(_PerShard):  # noqa: N801  (named as in the maths: n_k)
    """n(s): how many of the channel's values shard s holds (0 for a worker with an empty batch)."""

    latex_template = "n_{%s}"
    is_integer = True
    is_nonnegative = True


class shard_mean(_PerShard):  # noqa: N801
    """mu(s): the mean of shard s's values (:func:`per_shard_statistics`)."""

    latex_template = r"\mu_{%s}"
    is_real = True


class shard_m2(_PerShard):  # noqa: N801
    """M2(s): the sum of squares of shard s's values about their own mean (:func:`per_shard_statistics`)."""

    latex_template = r"M_{2,%s}"
    is_real = True
    is_nonnegative = True


def varies_per_element(expr: sympy.Expr) -> bool:
    """True when ``expr`` has a :class:`Field` outside every reduction (local, sharded or whole-batch)."""
    if isinstance(expr, Field):
        return True
    if isinstance(expr, (BatchSum, LocalSum, ShardSum)) or not expr.args:
        return False
    return any(varies_per_element(arg) for arg in expr.args)


def varies_per_shard(expr: sympy.Expr) -> bool:
    """True when ``expr`` differs from shard to shard: it mentions the shard label or a field outside a ShardSum."""
    if expr == SHARD or isinstance(expr, Field):
        return True
    if isinstance(expr, ShardSum) or not expr.args:
        return False
    return any(varies_per_shard(arg) for arg in expr.args)


class LocalSum(sympy.Function):
    """``LocalSum(e, s)`` is sum_{i in shard s} e_i: what worker s reduces on its own, a per-shard value.

    Canonical on construction, like :class:`~bnsym.symbolic.reduction.BatchSum`: linear, factors that are
    constant within the shard come out, and the local sum of such a value c is ``n(s) * c``. A power of a field
    is never expanded.
    """

    nargs = 2
    is_commutative = True

    @classmethod
    def eval(cls, arg, shard):
        if not varies_per_element(arg):
            return n(shard) * arg
        if isinstance(arg, sympy.Add):
            return sympy.Add(*(cls(term, shard) for term in arg.args))
        if isinstance(arg, sympy.Mul):
            constant = [f for f in arg.args if not varies_per_element(f)]
            if constant:
                return sympy.Mul(*constant) * cls(sympy.Mul(*(f for f in arg.args if varies_per_element(f))), shard)
        return None

    def _latex(self, printer):
        # The summation index of a local sum is an element of the shard: j in B_k (fields print as {x}_{j}).
        outer = getattr(printer, "_index", None)
        if outer is not None:
            printer._index = "j" if outer == "i" else "l"
        try:
            inner = printer._print(self.args[0])
        finally:
            bound = getattr(printer, "_index", "j")
            if outer is not None:
                printer._index = outer
        if isinstance(self.args[0], sympy.Add):
            inner = r"\left(%s\right)" % inner
        return r"\left(\sum_{%s \in \mathcal{B}_{%s}} %s\right)" % (bound, printer._print(self.args[1]), inner)


class ShardSum(sympy.Function):
    """``ShardSum(v)`` is sum_k v_k over the K shards of a per-shard value: an all-reduce, the same on every worker.

    Canonical on construction: linear, factors that are the same on every shard come out, and the shard sum of
    such a value c is ``K * c``. A per-element value cannot be summed over shards directly: reduce it locally
    first (:class:`LocalSum`).
    """

    nargs = 1
    is_commutative = True

    @classmethod
    def eval(cls, arg):
        if varies_per_element(arg):
            raise ValueError(f"ShardSum({arg}): a per-element value must be reduced locally (LocalSum) first")
        if not varies_per_shard(arg):
            return K * arg
        if isinstance(arg, sympy.Add):
            return sympy.Add(*(cls(term) for term in arg.args))
        if isinstance(arg, sympy.Mul):
            common = [f for f in arg.args if not varies_per_shard(f)]
            if common:
                return sympy.Mul(*common) * cls(sympy.Mul(*(f for f in arg.args if varies_per_shard(f))))
        return None

    def _latex(self, printer):
        inner = printer._print(self.args[0])
        if isinstance(self.args[0], sympy.Add):
            inner = r"\left(%s\right)" % inner
        return r"\left(\sum_{%s} %s\right)" % (printer._print(SHARD), inner)


#: M = sum_k n(k): the global count, itself an all-reduce.
TOTAL_COUNT = ShardSum(n(SHARD))


# ----- sharding a derived program -----

def shard(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` with every batch reduction split over the shards and M replaced by the sum of the shard counts."""
    split = expr.replace(lambda e: isinstance(e, BatchSum), lambda e: ShardSum(LocalSum(e.args[0], SHARD)))
    return split.xreplace({M: TOTAL_COUNT})


def _shard_definitions(definitions: Iterable[Definition]) -> tuple[Definition, ...]:
    return tuple(Definition(d.name, shard(d.expr)) for d in definitions)


@cache
def sharded_forward(layer: Derivation) -> tuple[Definition, ...]:
    """The training forward pass of ``layer`` over K shards: its ``training_forward``, sharded."""
    return _shard_definitions(layer.training_forward.definitions)


@cache
def sharded_backward(layer: Derivation) -> dict[sympy.Symbol, sympy.Expr]:
    """The closed-form backward (dx, dgamma, dbeta) of ``layer``'s training backward, sharded.

    dgamma and dbeta come out global (a ShardSum); what a worker returns under the data-parallel convention is
    their :func:`local_contribution`.
    """
    program, closed = layer.backward
    return {name: shard(closed[name]) for name in program.outputs}


def local_contribution(expr: sympy.Expr) -> sympy.Expr:
    """For ``expr`` = sum of (global factor) * ShardSum(v), the per-shard ``sum of (factor) * v``: what worker k
    contributes, so that ``ShardSum(local_contribution(expr)) = expr``. Raises ValueError for any other form."""
    terms = []
    for term in sympy.Add.make_args(expr):
        sums = [f for f in sympy.Mul.make_args(term) if isinstance(f, ShardSum)]
        rest = [f for f in sympy.Mul.make_args(term) if not isinstance(f, ShardSum)]
        if len(sums) != 1 or any(varies_per_shard(f) or f.has(ShardSum) for f in rest):
            raise ValueError(f"{term} is not a global factor times one shard sum")
        terms.append(sympy.Mul(*rest) * sums[0].args[0])
    return sympy.Add(*terms)


def sharded_running_variance(layer: Derivation) -> sympy.Expr:
    """The unbiased variance that PyTorch's running_var receives, sharded: M var / (M - 1) with the global M."""
    from bnsym.symbolic.running_stats import bessel_corrected_variance

    return shard(bessel_corrected_variance(layer))


# ----- what crosses the network, and when -----

@dataclass(frozen=True)
class Round:
    """One all-reduce round: the shard sums it carries, and how many numbers that is.

    ``per_channel`` counts the sums that differ from channel to channel (a sum over a shard's values of a
    channel), ``per_worker`` those that do not (the shard's count n(k)), so a round sends
    ``per_channel * C + per_worker`` numbers from each worker.
    """

    index: int
    reductions: tuple[ShardSum, ...]

    @property
    def per_channel(self) -> int:
        return sum(1 for r in self.reductions if _per_channel(r))

    @property
    def per_worker(self) -> int:
        return len(self.reductions) - self.per_channel


def _per_channel(reduction: ShardSum) -> bool:
    return bool(reduction.atoms(LocalSum))


def _shard_sums(expr: sympy.Expr) -> set[ShardSum]:
    return set(expr.atoms(ShardSum))


def definition_rounds(definitions: Sequence[Definition], known: Iterable[ShardSum] = ()) -> dict[sympy.Symbol, int]:
    """For each defined name, the number of all-reduce rounds that must complete before it can be computed."""
    ready: dict[sympy.Symbol, int] = {}
    rounds: dict[ShardSum, int] = {total: 0 for total in known}
    for definition in definitions:
        ready[definition.name] = _depth(definition.expr, ready, rounds)
    return ready


def _depth(expr: sympy.Expr, ready: dict, rounds: dict) -> int:
    """The rounds ``expr`` waits for; records the round of every shard sum it meets in ``rounds``."""
    deepest = max((ready[s] for s in expr.free_symbols if s in ready), default=0)
    for total in _shard_sums(expr):
        if total not in rounds:
            rounds[total] = _depth(total.args[0], ready, rounds) + 1
        deepest = max(deepest, rounds[total])
    return deepest


def communication_plan(definitions: Sequence[Definition], outputs: Iterable[sympy.Expr] = (),
                       known: Iterable[ShardSum] = ()) -> tuple[Round, ...]:
    """The all-reduce rounds a sharded program needs, in order.

    ``definitions`` are evaluated in order; ``outputs`` are further expressions over them (closed forms);
    ``known`` are shard sums already available (the global count M in a backward pass, saved by the forward). A
    shard sum goes in round r + 1 when the value it sums needs a result of round r (through any chain of
    definitions); the shard sums of one round are independent of each other, so one collective carries them all.
    """
    ready: dict[sympy.Symbol, int] = {}  # the round after which each defined name can be computed
    rounds: dict[ShardSum, int] = {total: 0 for total in known}
    for definition in definitions:
        ready[definition.name] = _depth(definition.expr, ready, rounds)
    for expr in outputs:
        _depth(expr, ready, rounds)
    by_round: dict[int, list[ShardSum]] = {}
    for total, index in rounds.items():
        if index:
            by_round.setdefault(index, []).append(total)
    return tuple(Round(index, tuple(sorted(by_round[index], key=sympy.default_sort_key)))
                 for index in sorted(by_round))


# ----- proofs -----

def inline(expr: sympy.Expr, definitions: Sequence[Definition]) -> sympy.Expr:
    """``expr`` with every name of ``definitions`` replaced by its definition."""
    for definition in reversed(definitions):
        if expr.has(definition.name):
            expr = expr.xreplace({definition.name: definition.expr})
    return expr


def _moments(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` in terms of local power sums: every local sum's argument expanded (exact algebra, for proofs
    only), then every shard sum's, so that both reductions distribute down to LocalSum(x**p, k) and n(k)."""
    expr = expr.replace(lambda e: isinstance(e, LocalSum), lambda e: LocalSum(sympy.expand(e.args[0]), e.args[1]))
    return expr.replace(lambda e: isinstance(e, ShardSum), lambda e: ShardSum(sympy.expand(e.args[0])))


def prove(lhs: sympy.Expr, rhs: sympy.Expr, definitions: Sequence[Definition] = ()) -> bool:
    """True when ``lhs = rhs`` holds identically once every name of ``definitions`` is replaced by its definition
    (for every shard size, and every number of shards unless the expressions name explicit shards)."""
    difference = _moments(inline(lhs, definitions) - inline(rhs, definitions))
    return sympy.simplify(sympy.expand(difference)) == 0


def instantiate_shards(expr: sympy.Expr, labels: Sequence[sympy.Symbol]) -> sympy.Expr:
    """``expr`` for explicit shards: every ShardSum written out as a sum over ``labels`` (K = len(labels))."""
    def written_out(total: ShardSum) -> sympy.Expr:
        return sympy.Add(*(total.args[0].xreplace({SHARD: label}) for label in labels))

    return expr.replace(lambda e: isinstance(e, ShardSum), written_out).xreplace({K: len(labels)})


@dataclass(frozen=True)
class MergeIdentity:
    """A proved identity ``lhs = rhs``; ``description`` says what it means for the implementation."""

    lhs: sympy.Expr
    rhs: sympy.Expr
    description: str


def per_shard_statistics(layer: Derivation) -> tuple[Definition, ...]:
    """What a worker computes alone for the one-round merge: its mean mu(k) and M2(k), the sum of squares about it.

    These are the local forward pass of a centred layer (the two-pass mean and centred sum of squares over the shard).
    """
    x = layer.symbols.x
    mean = shard_mean(SHARD)
    return (Definition(mean, LocalSum(x, SHARD) / n(SHARD)),
            Definition(shard_m2(SHARD), LocalSum((x - mean) ** 2, SHARD)))


def _for_shards(definitions: Iterable[Definition], labels: Sequence[sympy.Symbol]) -> list[Definition]:
    """Per-shard definitions repeated for each explicit shard, and global ones with their shard sums written out."""
    out = []
    for definition in definitions:
        if varies_per_shard(definition.name):
            out += [Definition(definition.name.xreplace({SHARD: label}), definition.expr.xreplace({SHARD: label}))
                    for label in labels]
        else:
            out.append(Definition(definition.name, instantiate_shards(definition.expr, labels)))
    return out


@cache
def merge_identities(layer: Derivation) -> tuple[MergeIdentity, ...]:
    """The parallel merge of (count, mean, M2) per shard, proved equal to the two-pass global statistics.

    In the names of the sharded forward (mu the global mean, sigma^2 the biased global variance, so M sigma^2 is
    the global centred sum of squares):

    * K-way (one all-gather of every shard's triple): mu = sum_k n_k mu_k / M and
      M sigma^2 = sum_k M2_k + sum_k n_k (mu_k - mu)^2, for any K and any shard sizes;
    * pairwise (Chan, Golub and LeVeque's update, the operator of a tree reduction), for shards A and B:
      mu = mu_A + (mu_B - mu_A) n_B / (n_A + n_B) and
      (n_A + n_B) sigma^2 = M2_A + M2_B + (mu_B - mu_A)^2 n_A n_B / (n_A + n_B).

    Each is checked by :func:`prove` from :func:`per_shard_statistics` and :func:`sharded_forward` (for two
    explicit shards in the pairwise case); an identity that does not hold raises AssertionError.
    """
    s = layer.symbols
    definitions = (*sharded_forward(layer), *per_shard_statistics(layer))
    mu, m2k, nk = shard_mean(SHARD), shard_m2(SHARD), n(SHARD)
    k_way = (
        MergeIdentity(s.mean, ShardSum(nk * mu) / TOTAL_COUNT, "the global mean: the shard means weighted by "
                                                               "their counts"),
        MergeIdentity(TOTAL_COUNT * s.var, ShardSum(m2k) + ShardSum(nk * (mu - s.mean) ** 2),
                      "the global centred sum of squares: the shards' own, plus the spread of the shard means"),
    )
    a, b = sympy.symbols("A B")
    delta = shard_mean(b) - shard_mean(a)
    total = n(a) + n(b)
    pairwise = (
        MergeIdentity(s.mean, shard_mean(a) + delta * n(b) / total, "two shards' means, merged"),
        MergeIdentity(total * s.var, shard_m2(a) + shard_m2(b) + delta**2 * n(a) * n(b) / total,
                      "two shards' centred sums of squares, merged"),
    )
    for identities, context in ((k_way, definitions), (pairwise, _for_shards(definitions, (a, b)))):
        for identity in identities:
            if not prove(identity.lhs, identity.rhs, context):
                raise AssertionError(f"could not prove {identity.lhs} = {identity.rhs}")
    return k_way + pairwise


@cache
def all_reduce_shortcut(layer: Derivation) -> MergeIdentity:
    """The one-round form a plain all-reduce would allow, proved equal to the two-pass M sigma^2, and not used.

    M sigma^2 = sum_k (M2_k + n_k mu_k^2) - M mu^2 needs only sums over shards (one all-reduce of n_k, n_k mu_k
    and M2_k + n_k mu_k^2), but it is the E[x^2] - E[x]^2 cancellation again, one level up: two terms of size
    M mu^2 subtract to leave M sigma^2. The derivation document shows it to say why bnsym does not use it.
    """
    s = layer.symbols
    definitions = (*sharded_forward(layer), *per_shard_statistics(layer))
    mu, m2k, nk = shard_mean(SHARD), shard_m2(SHARD), n(SHARD)
    shortcut = MergeIdentity(TOTAL_COUNT * s.var, ShardSum(m2k + nk * mu**2) - TOTAL_COUNT * s.mean**2,
                             "one all-reduce of (n_k, n_k mu_k, M2_k + n_k mu_k^2), then a cancelling difference")
    if not prove(shortcut.lhs, shortcut.rhs, definitions):
        raise AssertionError("the all-reduce shortcut is not the two-pass M sigma^2")
    return shortcut
