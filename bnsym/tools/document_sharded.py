"""The section "Sharded training (data parallel)" of ``derivations/batch_norm.md``, from the SymPy objects of
:mod:`bnsym.symbolic.sharded`: the sharded forward and backward, the communication plan, the proved parallel merge,
and the data-parallel convention for the parameter gradients. Every equation is printed from those objects; the
prose around them is the only thing typed here.
"""

from __future__ import annotations

from collections.abc import Iterable

import sympy

from bnsym.symbolic import sharded as sh
from bnsym.symbolic.layers import Derivation
from bnsym.symbolic.reduction import BatchSum, Field, M
from bnsym.tools.latex import to_latex

__all__ = ["render_sharded_section"]


def _math(lines: Iterable[str]) -> str:
    return "```math\n\\begin{aligned}\n" + " \\\\\n".join(lines) + "\n\\end{aligned}\n```"


def _equation(lhs, rhs) -> str:
    return f"{to_latex(lhs)} &= {to_latex(rhs)}"


def _inline(expr) -> str:
    return f"${to_latex(expr)}$"


def _numbers(r) -> str:
    """How many numbers one worker sends in round ``r``, for C channels: "C + 1", "2C"."""
    per_channel = {0: "", 1: "C"}.get(r.per_channel, f"{r.per_channel}C")
    return " + ".join(part for part in (per_channel, str(r.per_worker) if r.per_worker else "") if part)


def _plan_table(plan, names_by_round: dict[int, list[str]]) -> list[str]:
    rows = ["| round | all-reduced | numbers from each worker | before |", "|---|---|---|---|"]
    for r in plan:
        sums = ", ".join(_inline(total) for total in r.reductions)
        numbers = _numbers(r)
        rows.append(f"| {r.index} | {sums} | {numbers} | {', '.join(names_by_round.get(r.index, []))} |")
    return rows


def render_sharded_section(layer: Derivation) -> str:
    """The Markdown text of the section, appended to the derivation document of ``layer``, a layer whose groups
    span samples (batch norm)."""
    e = Field("e", real=True)
    forward = sh.sharded_forward(layer)
    plan = sh.communication_plan(forward)
    rounds = sh.definition_rounds(forward)
    needed = {index: [_inline(name) for name, r in rounds.items() if r == index] for index in {r.index for r in plan}}
    program, _ = layer.backward
    dx, dgamma, dbeta = program.outputs
    backward = sh.sharded_backward(layer)
    backward_plan = sh.communication_plan((), backward.values(), known=(sh.TOTAL_COUNT,))
    merge = sh.merge_identities(layer)
    shortcut = sh.all_reduce_shortcut(layer)
    k = sh.SHARD
    worker_dgamma, worker_dbeta = (sh.local_contribution(backward[name]) for name in (dgamma, dbeta))
    out = [
        "## Sharded training (data parallel)",
        "",
        "In data-parallel training the batch is split over $K$ workers, and the statistics must still be those of "
        "the whole batch. Shard $k$ holds $n_k$ of a channel's $M$ values ($n_k = 0$ is a worker with an empty "
        "batch); $\\sum_{j \\in \\mathcal{B}_k}$ sums over shard $k$'s values, which worker $k$ does alone, and "
        "$\\sum_k$ sums over the shards, which is an all-reduce. The only rule is the definition of a sum over a "
        "partition, applied to every reduction of a derived program (`bnsym.symbolic.sharded.shard`):",
        "",
        _math([_equation(BatchSum(e), sh.shard(BatchSum(e))), _equation(M, sh.TOTAL_COUNT)]),
        "",
        "It is exact for any expression, so the sharded forward and backward are the derived ones, rewritten; "
        "nothing is derived again. The sharded forward pass:",
        "",
        _math(_equation(d.name, d.expr) for d in forward),
        "",
        "### What crosses the network, and when",
        "",
        "Every $\\sum_k$ is an all-reduce, and one whose summand needs the result of another must wait for it: "
        "the variance sums squares about the *global* mean. `bnsym.symbolic.sharded.communication_plan` reads the "
        f"rounds off the sharded program; the forward needs {len(plan)}, for $C$ channels:",
        "",
        *_plan_table(plan, needed),
        "",
        "The backward pass, the closed form above with its reductions split, needs the global "
        + " and ".join(_inline(total) for total in backward_plan[0].reductions)
        + f" ($M$, $\\mu$ and $s$ are saved by the forward): {len(backward_plan)} round of "
        f"{_numbers(backward_plan[0])} numbers.",
        "",
        _math([_equation(dx, sympy.factor_terms(backward[dx]))]),
        "",
        "### Parameter gradients: each worker returns its own share",
        "",
        "The global $\\overline{\\gamma}$ and $\\overline{\\beta}$ are sums over the shards. Following PyTorch's "
        "data-parallel convention, worker $k$ returns only its own share, and the data-parallel wrapper "
        "(`DistributedDataParallel`) adds the shares together with every other parameter gradient; a layer that "
        "all-reduced them itself would have them added twice. `bnsym.symbolic.sharded.local_contribution` splits "
        "each gradient into the shares, whose sum over the shards is proved equal to it:",
        "",
        _math([f"\\overline{{\\gamma}}_{{{to_latex(k)}}} &= {to_latex(worker_dgamma)}",
               f"\\overline{{\\beta}}_{{{to_latex(k)}}} &= {to_latex(worker_dbeta)}",
               f"{to_latex(dgamma)} &= {to_latex(backward[dgamma])} = "
               f"\\sum_{{{to_latex(k)}}} \\overline{{\\gamma}}_{{{to_latex(k)}}}"]),
        "",
        "### One round instead of two: the parallel merge",
        "",
        "Each worker can instead summarise its shard by its count, its mean and its centred sum of squares "
        "(the local two-pass statistics),",
        "",
        _math(_equation(d.name, d.expr) for d in sh.per_shard_statistics(layer)),
        "",
        "and the triples merge into the global statistics. SymPy proves these identities from the definitions "
        "above (`bnsym.symbolic.sharded.merge_identities`: every local sum's summand expanded into power sums, "
        "for any $K$ and any shard sizes), first for $K$ shards at once, then for two shards $A$ and $B$ (the "
        "update of Chan, Golub and LeVeque, the operator of a tree reduction):",
        "",
        _math(_equation(identity.lhs, identity.rhs) for identity in merge),
        "",
        "A worker with an empty batch has no mean ($0/0$): it must be left out of the merge, not weighted by "
        "$n_k = 0$, which turns its NaN into everyone's. The $K$-way form needs every worker's triple, so one "
        "round is an all-gather ($2C + 1$ numbers from each worker, $K(2C + 1)$ received; PyTorch's "
        "SyncBatchNorm gathers mean, invstd and count this way). A plain "
        "all-reduce, a sum, would allow one round only through this rearrangement, also proved:",
        "",
        _math([_equation(shortcut.lhs, shortcut.rhs)]),
        "",
        "It is $E[x^2] - E[x]^2$ again, one level up: two terms of size $M\\mu^2$ subtract to leave $M\\sigma^2$, "
        "and the relative error of the result grows like $u\\,\\mu^2/\\sigma^2$ ($u = 2^{-24}$ in float32: for "
        "$\\mu = 10^4$ and $\\sigma = 1$, larger than the result). The merge does not cancel: every term of "
        + _inline(merge[1].rhs) + " is non-negative, so rounding the terms and their sum costs a few $u$ of the "
        "result. Its only subtraction, $\\mu_k - \\mu$, is between two computed means; their error, about "
        "$u|\\mu|$, enters $M\\sigma^2$ as $2 n_k |\\mu_k - \\mu|\\,u|\\mu|$, the same size as the error the "
        "two-pass form makes through its own inexact mean, and nothing when the shard means agree.",
        "",
        "### Running statistics",
        "",
        "The unbiased variance that PyTorch's running variance receives is, sharded, "
        + _inline(sh.sharded_running_variance(layer))
        + ": Bessel's correction with the global count. A worker that used its own $n_k/(n_k - 1)$ would "
        "disagree with the others (and divide by zero with a one-sample batch).",
        "",
        "### In bnsym",
        "",
        "`bnsym.torch.SyncBatchNorm` evaluates the generated kernels with a reducer whose sums all-reduce the "
        "workers' totals, one collective per round of the plan above (round 1 also carries $n_k$), and returns "
        "each worker's own $\\overline{\\gamma}_k$, $\\overline{\\beta}_k$; its tests count the collectives "
        "against this plan. `bnsym check TARGET --shards K` checks any data-parallel batch norm against the "
        "unsharded reference. `tests/symbolic/test_sharded.py` writes the sharded forward and backward out for "
        "explicit shards of sizes such as (1, 2), (0, 3) and (2, 1, 2) and proves them equal to the unsharded "
        "ones, and shows that the shortcuts of the known SyncBatchNorm bugs (an unweighted mean of the shard "
        "means, a mean of the shard variances, the local count in Bessel's correction) are not identities.",
        "",
    ]
    return "\n".join(out)
