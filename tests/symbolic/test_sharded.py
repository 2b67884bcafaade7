"""The sharded derivation: exact against the unsharded one for explicit shards, its communication plan, and the
proved merge identities (with claims that must not prove: the SyncBN bugs)."""

import pytest
import sympy

from bnsym.symbolic import sharded as sh
from bnsym.symbolic.brute_force import Elements, difference_is_zero, instantiate
from bnsym.symbolic.layers import derivation
from bnsym.symbolic.reduction import Field

bn = BATCH_NORM = derivation("batch_norm")

# Shard sizes: uneven, with a single-value shard and an empty one.
SPLITS = [(1, 2), (0, 3), (2, 1, 2), (3, 0, 1)]


def _explicit(expr, sizes, elements: Elements, at: int):
    """A sharded expression for explicit shards of ``sizes`` over the elements 0..M-1 (shard 0 first), at element
    ``at``: shard sums and local sums written out element by element."""
    starts = [sum(sizes[:s]) for s in range(len(sizes))]
    expr = sh.instantiate_shards(expr, [sympy.Integer(s) for s in range(len(sizes))])

    def walk(node, i):
        if isinstance(node, Field):
            return elements[node][i]
        if isinstance(node, sh.LocalSum):
            label = int(node.args[1])
            return sympy.Add(*(walk(node.args[0], j) for j in range(starts[label], starts[label] + sizes[label])))
        if isinstance(node, sh.n):
            return sympy.Integer(sizes[int(node.args[0])])
        if not node.args:
            return node
        return node.func(*(walk(arg, i) for arg in node.args))

    return walk(expr, at)


@pytest.mark.parametrize("sizes", SPLITS, ids=str)
def test_sharded_forward_equals_the_unsharded_one(sizes):
    s = bn.symbols
    elements = Elements(sum(sizes))
    forward = sh.sharded_forward(BATCH_NORM)
    for output in (s.mean, s.var, s.y):
        for i in range(elements.n):
            sharded = _explicit(sh.inline(output, forward), sizes, elements, i)
            whole = instantiate(output, elements, i, bn.training_forward)
            assert difference_is_zero(sharded, whole), f"{output} at element {i}, shards {sizes}"


@pytest.mark.parametrize("sizes", SPLITS, ids=str)
def test_sharded_backward_equals_the_unsharded_one(sizes):
    program, closed = bn.backward
    forward = bn.training_forward
    elements = Elements(sum(sizes))
    sharded = sh.sharded_backward(BATCH_NORM)
    for name in program.outputs:
        for i in range(elements.n):
            got = _explicit(sh.inline(sharded[name], sh.sharded_forward(BATCH_NORM)), sizes, elements, i)
            assert difference_is_zero(got, instantiate(closed[name], elements, i, forward)), f"{name}, {sizes}"


def test_the_explicit_comparison_can_fail():
    """A sharded mean that forgets one shard differs from the whole-batch mean."""
    s = bn.symbols
    sizes = (2, 1)
    elements = Elements(3)
    wrong = sh.LocalSum(s.x, sh.SHARD) / sh.n(sh.SHARD)  # shard k's mean, for shard 0
    got = _explicit(wrong.xreplace({sh.SHARD: sympy.Integer(0)}), sizes, elements, 0)
    assert not difference_is_zero(got, instantiate(s.mean, elements, 0, bn.training_forward))


def test_parameter_gradients_are_the_sums_of_local_contributions():
    """Each worker's dgamma, dbeta (the data-parallel convention) sum over the shards to the global gradients."""
    s = bn.symbols
    program, _ = bn.backward
    _, dgamma, dbeta = program.outputs
    sharded = sh.sharded_backward(BATCH_NORM)
    assert sh.local_contribution(sharded[dgamma]) == sh.LocalSum(s.dy * s.x_hat, sh.SHARD)
    assert sh.local_contribution(sharded[dbeta]) == sh.LocalSum(s.dy, sh.SHARD)
    for name in (dgamma, dbeta):
        assert sh.prove(sh.ShardSum(sh.local_contribution(sharded[name])), sharded[name])
    with pytest.raises(ValueError, match="one shard sum"):
        sh.local_contribution(sharded[program.outputs[0]])  # dx is per element, not a sum of contributions


def test_forward_needs_two_rounds_and_the_backward_one():
    s = bn.symbols
    x, dy, x_hat, mean, k = s.x, s.dy, s.x_hat, s.mean, sh.SHARD
    forward = sh.communication_plan(sh.sharded_forward(BATCH_NORM))
    assert [set(r.reductions) for r in forward] == [
        {sh.TOTAL_COUNT, sh.ShardSum(sh.LocalSum(x, k))},
        {sh.ShardSum(sh.LocalSum((x - mean) ** 2, k))},
    ]
    assert [(r.per_channel, r.per_worker) for r in forward] == [(1, 1), (1, 0)]
    backward = sh.communication_plan((), sh.sharded_backward(BATCH_NORM).values(), known=(sh.TOTAL_COUNT,))
    assert [set(r.reductions) for r in backward] == [{sh.ShardSum(sh.LocalSum(dy, k)),
                                                      sh.ShardSum(sh.LocalSum(dy * x_hat, k))}]
    assert backward[0].per_channel == 2 and backward[0].per_worker == 0


def test_merge_identities_are_proved():
    identities = sh.merge_identities(BATCH_NORM)
    assert len(identities) == 4
    shortcut = sh.all_reduce_shortcut(BATCH_NORM)
    assert shortcut.rhs.has(bn.symbols.mean ** 2), "the shortcut subtracts M mu^2"


def _claim(lhs, rhs):
    return sh.prove(lhs, rhs, (*sh.sharded_forward(BATCH_NORM), *sh.per_shard_statistics(BATCH_NORM)))


def test_the_syncbn_bugs_are_not_identities():
    """The prover can say no: each SyncBN bug class, written as a claim about the statistics, fails to prove."""
    s = bn.symbols
    mu, m2, nk, k = sh.shard_mean(sh.SHARD), sh.shard_m2(sh.SHARD), sh.n(sh.SHARD), sh.K
    total = sh.TOTAL_COUNT
    assert not _claim(s.mean, sh.ShardSum(mu) / k), "an unweighted mean of shard means is not the mean"
    assert not _claim(s.var, sh.ShardSum(m2 / nk) / k), "the mean of shard variances is not the variance"
    assert not _claim(total * s.var, sh.ShardSum(m2)), "M2 without the spread of the shard means"
    unbiased = sh.sharded_running_variance(BATCH_NORM)
    assert unbiased == s.var * total / (total - 1)
    assert not sh.prove(unbiased, s.var * nk / (nk - 1)), "Bessel's correction with the local count"


def test_running_variance_uses_the_global_count():
    assert sh.TOTAL_COUNT in sh.sharded_running_variance(BATCH_NORM).atoms(sh.ShardSum)


def test_shard_sum_refuses_a_per_element_value():
    with pytest.raises(ValueError, match="reduced locally"):
        sh.ShardSum(bn.symbols.x)


def test_reductions_are_canonical():
    s, k = bn.symbols, sh.SHARD
    assert sh.LocalSum(2 * s.gamma * s.x + s.beta, k) == 2 * s.gamma * sh.LocalSum(s.x, k) + s.beta * sh.n(k)
    assert sh.ShardSum(s.gamma * sh.n(k)) == s.gamma * sh.TOTAL_COUNT
    assert sh.ShardSum(s.gamma) == sh.K * s.gamma
    assert sh.LocalSum((s.x - s.mean) ** 2, k).args[0] == (s.x - s.mean) ** 2, "never expands the square"


def test_parameter_gradients_depend_on_the_fields_only_through_the_sums():
    """dgamma and dbeta are per-channel functions of the reductions: a worker's share is the same expression of its
    local sums (what lets bnsym.torch compute the shares from the local totals it all-reduced, without another
    pass over the data)."""
    program, closed = bn.backward
    for name in program.outputs[1:]:
        assert not sh.varies_per_element(closed[name]), f"{name} has a per-element factor outside a sum"
        assert not sh.varies_per_element(sh.local_contribution(sh.sharded_backward(BATCH_NORM)[name]))
