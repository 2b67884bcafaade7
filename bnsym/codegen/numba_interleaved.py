"""The compiled-CPU printer for kernels whose groups interleave within each sample: channel-last group and instance
norm, one sample at a time with all of its groups side by side.

Notation (:class:`bnsym.runtime.fused.InterleavedLayout`). Fields are (B, R, K) arrays: sample ``b`` is one contiguous
block of R rows of K = G*S values, and group ``(b, g)`` is the values ``[b, r, g*S + s]`` of every row r (channel
``c = g*S + s``). Parameters are (K,) arrays, one value per channel; per-group values are (B, G) arrays.

The plans are those that :mod:`bnsym.codegen.numba_local` prints as group-local loops (every plan of a layer whose
groups lie within one sample that :meth:`~bnsym.codegen.numba_local.GroupLocalPrinter.unsupported` accepts), with
its names and its steps (:func:`~bnsym.codegen.numba_plan.loop_steps`); the wrapper
(:mod:`bnsym.codegen.numba_printer`) chooses between the two layouts. What one plan becomes here:

* **per-group values, one per channel.** Every per-group value of a sample is kept as a (K,) row that repeats a
  group's value for each of its S channels (the same arithmetic, once per channel), so that the loops over a row
  read every value along memory and LLVM vectorises them;
* **each stage of sums: one pass over the sample.** Every term, computed in the fields' dtype, is added to a float64
  total of its channel, row after row; a group's total is the float64 sum of its S channels' totals. The inner loop
  runs along one row of K values (never across rows), so the float64 additions are vectorised across channels and
  cost no more than float32 ones would. Float32 partial sums, as the other loops keep, would here add a channel's
  terms one after another with nothing to pair them: on a sample of a few dozen rows at a large offset, that
  measured up to 3.7 units of the accuracy contract's bound, which allows 2 (``tests/test_family_accuracy.py``);
* **parameter sums.** Each sample adds its share to a (K,) float64 row of its own (a per-group term only when
  S == 1); the rows are added in sample order after the parallel loop, so results do not depend on the number of
  threads;
* **the field outputs: one pass over the sample.**

The parallel loop runs over samples (``numba.prange``): a batch of one sample runs on one thread. Every per-sample
row (per-group values, float64 totals, parameter shares) is allocated before it, as a (B, K) array, so that nothing
is allocated in the parallel loop and no array expression makes a parallel region of its own (see
:mod:`bnsym.codegen.numba_local`).
"""

from __future__ import annotations

from bnsym.codegen.numba_plan import PlanNames, form, loop_steps, product, split_names
from bnsym.codegen.numba_text import CompiledLoops, Printer, docstring
from bnsym.codegen.plan import Accumulate, KernelPlan, Reduce
from bnsym.symbolic.naming import COUNT

__all__ = ["InterleavedPrinter", "samples_function"]


def samples_function(plan: KernelPlan) -> str:
    """The name of the parallel function that the wrapper calls for this layout."""
    return f"_{plan.name}_samples"


class InterleavedPrinter:
    """Renders a :class:`KernelPlan` that :class:`~bnsym.codegen.numba_local.GroupLocalPrinter` covers as
    sample-wise Numba loops (module docstring): the helpers and the parallel function, not the wrapper."""

    def __init__(self, indent: str = "    "):
        self.indent = indent

    def render(self, plan: KernelPlan) -> CompiledLoops:
        """The helpers and the parallel function; the call needs S == 1 when a parameter sum has a per-group
        term."""
        names = PlanNames(plan)
        i = self.indent
        helpers: list[str] = []
        body: list[str] = []  # the body of the loop over samples
        after: list[str] = []  # after the parallel loop: parameter sums and what reads them
        sums: list[str] = []
        field_less: list[str] = []
        wides: list[str] = []  # the group sums, whose float64 totals are (B, K) arrays
        # per-group values, kept as (B, K) arrays (one row per sample): the inputs, then each value computed
        rows = [n for n in names.inputs if n not in names.fields + names.parameters]
        for step in loop_steps(plan.statements, names):
            if step.kind == "parameter value":
                name, expr = step.statement.name.name, step.statement.expr
                if expr.is_Symbol:
                    after.append(f"{name} = {expr.name}")
                    continue
                printed = Printer({n: f"{n}[c]" for n in names.parameter_values}, typed_numbers=True).doprint(expr)
                after += [f"{name} = numpy.empty(K, dtype)", "for c in range(K):", f"{i}{name}[c] = {printed}"]
            elif step.kind == "group value":
                name, expr = step.statement.name.name, step.statement.expr
                printed = Printer({n: f"{n}[c]" for n in rows}, typed_numbers=False).doprint(expr)
                rows.append(name)
                body += ["for c in range(K):", f"{i}{name}[c] = dtype({printed})"]
            else:
                function = f"_{plan.name}_sample_pass{step.stage}"
                source, arguments, lacking = self._pass(function, plan, step.group, step.parameter, names)
                helpers.append(source)
                call = f"{function}({', '.join(arguments)})"
                body.append(call)
                if step.group:
                    body += ["for c in range(K):"] + [f"{i}{n.name}[c] = dtype(wide_{n.name}[b, c])"
                                                      for n in step.group.names]
                    rows += [n.name for n in step.group.names]
                    wides += [n.name for n in step.group.names]
                if step.parameter:
                    sums += [n.name for n in step.parameter.names]
                    field_less += lacking
        if names.accumulates:
            function = f"_{plan.name}_sample_outputs"
            source, arguments = self._outputs(function, plan, names.accumulates, names)
            helpers.append(source)
            body.append(f"{function}({', '.join(arguments)})")
        if names.group_results:
            body += ["for g in range(G):"] + [f"{i}{n}_groups[b, g] = {n}[g * S]" for n in names.group_results]
        main = self._main(plan, names, rows, wides, body, after, sums)
        return CompiledLoops("\n\n\n".join(helpers + [main]), samples_function(plan),
                             " and layout.S == 1" if field_less else "", ["layout.S"])

    # ----- helpers -----

    def _pass(self, function: str, plan: KernelPlan, group: Reduce | None, parameter: Reduce | None,
              names: PlanNames):
        """One pass over a sample's rows that returns the float64 totals of ``group``'s sums (each group's total
        repeated for its S channels) and adds the sample's share of ``parameter``'s sums to its float64 rows
        ``shares<k>``. Returns (source, call arguments, the parameter sums of per-group terms only)."""
        group_terms = group.terms if group else ()
        parameter_terms = parameter.terms if parameter else ()
        factors = [f.name for term in group_terms + parameter_terms for f in term]
        fields, parameters, per_group, scalars = split_names(names, names.read(factors))
        atoms = names.atoms_used(factors)
        element = [j for j, t in enumerate(parameter_terms) if any(f.name in names.element for f in t)]
        lacking = [parameter.names[j].name for j in range(len(parameter_terms)) if j not in element]
        k = range(len(group_terms))
        shares = [f"shares{j}" for j in range(len(parameter_terms))]
        described = "; ".join(part for part in (
            ", ".join("*".join(f.name for f in t) for t in group_terms),
            ("its share of the parameter sums of " + ", ".join("*".join(f.name for f in t) for t in parameter_terms))
            if parameter_terms else "") if part)
        i, i2, i3 = self.indent, self.indent * 2, self.indent * 3
        totals = [f"totals{j}" for j in k]
        lines = ["@numba.njit(cache=True)",
                 f"def {function}({', '.join(fields + parameters + per_group + scalars + ['S'] + totals + shares)}):",
                 *docstring(self.indent,
                            f"One pass of {plan.name} over one sample's (R, K) values, every group side by "
                            f"side: {described}."
                            + (" Totals go to the float64 rows totals<k>, each group's total repeated for its S "
                                     "channels." if group_terms else "")
                                  + (" Shares are added to the float64 rows shares<k>." if parameter_terms else ""))]
        reference = (fields + parameters + per_group + totals + shares)[0]
        lines.append(f"{i}K = {reference}.shape[-1]")
        if fields:
            lines += [f"{i}R = {fields[0]}.shape[0]", f"{i}dtype = {fields[0]}.dtype.type"]
        texts = {f: f"{f}_r[c]" for f in fields} | {n: f"{n}[c]" for n in parameters + per_group}
        texts |= {a: a for a in names.atoms}
        printer = Printer(texts, typed_numbers=True)
        for j in range(len(parameter_terms)):
            if j not in element:  # a per-group term (S == 1): once per sample and channel
                value = Printer({n: f"{n}[c]" for n in per_group}, typed_numbers=False).doprint(
                    product(parameter_terms[j]))
                lines += [f"{i}for c in range(K):", f"{i2}shares{j}[c] += {value}"]
        if group_terms:
            lines += [f"{i}for c in range(K):"] + [f"{i2}totals{j}[c] = 0.0" for j in k]
        if group_terms or element:
            # Each term, rounded in the fields' dtype, is added to a float64 total of its channel, row after row.
            # (In float32, a channel's terms would be added one after another, with nothing to pair them up when
            # there are few rows: at a large offset that loses more than the accuracy contract allows.)
            lines += [f"{i}for r in range(R):"]
            lines += [f"{i2}{f}_r = {f}[r]" for f in fields]
            lines += [f"{i2}for c in range(K):"]
            lines += [f"{i3}{a} = {printer.doprint(names.atoms[a])}" for a in atoms]
            lines += [f"{i3}totals{j}[c] += {printer.doprint(product(t))}" for j, t in zip(k, group_terms)]
            lines += [f"{i3}shares{j}[c] += {printer.doprint(product(parameter_terms[j]))}" for j in element]
        if group_terms:
            lines += [f"{i}for g in range(K // S):"]
            for j in k:
                lines += [f"{i2}total = 0.0", f"{i2}for s in range(S):", f"{i3}total += totals{j}[g * S + s]",
                          f"{i2}for s in range(S):", f"{i3}totals{j}[g * S + s] = total"]
        arguments = ([f"{f}[b]" for f in fields] + parameters + per_group + [f"dtype({s})" for s in scalars]
                     + ["S"] + [f"wide_{n.name}[b]" for n in (group.names if group else ())]
                     + [f"shares_{n.name}[b]" for n in (parameter.names if parameter else ())])
        return "\n".join(lines), arguments, lacking

    def _outputs(self, function: str, plan: KernelPlan, outputs: list[Accumulate], names: PlanNames):
        expressions = [form(s) for s in outputs]
        written = [s.name.name for s in outputs]
        fields, parameters, per_group, scalars = split_names(names, names.read(expressions))
        fields = [f for f in fields if f not in written]
        atoms = names.atoms_used(expressions)
        i, i2, i3 = self.indent, self.indent * 2, self.indent * 3
        texts = {f: f"{f}_r[c]" for f in fields + written} | {n: f"{n}[c]" for n in parameters + per_group}
        printer = Printer(texts | {a: a for a in names.atoms}, typed_numbers=True)
        lines = ["@numba.njit(cache=True)",
                 f"def {function}({', '.join(fields + parameters + per_group + scalars + written)}):",
                 *docstring(self.indent,
                            f"The field outputs of {plan.name} ({', '.join(written)}) for one sample's (R, K) "
                            "values."),
                 f"{i}dtype = {written[0]}.dtype.type",
                 f"{i}R, K = {written[0]}.shape",
                 f"{i}for r in range(R):"]
        lines += [f"{i2}{f}_r = {f}[r]" for f in fields + written]
        lines += [f"{i2}for c in range(K):"]
        lines += [f"{i3}{a} = {printer.doprint(names.atoms[a])}" for a in atoms]
        lines += [f"{i3}{printer.names[n]} = {printer.doprint(e)}" for n, e in zip(written, expressions)]
        arguments = ([f"{f}[b]" for f in fields] + parameters + per_group + [f"dtype({s})" for s in scalars]
                     + [f"{n}[b]" for n in written])
        return "\n".join(lines), arguments

    def _main(self, plan: KernelPlan, names: PlanNames, rows: list[str], wides: list[str], body: list[str],
              after: list[str], sums: list[str]) -> str:
        i, i2, i3 = self.indent, self.indent * 2, self.indent * 3
        per_group_inputs = [n for n in names.inputs if n not in names.fields + names.parameters]
        inputs = [f"{n}_groups" if n in per_group_inputs else n for n in names.inputs]
        first = names.fields[0]
        lines = ["@numba.njit(cache=True, parallel=True)",
                 f"def {samples_function(plan)}({', '.join(inputs + [COUNT, 'S'] + names.outputs)}):",
                 *docstring(self.indent,
                            f"{plan.name} on (B, R, K) fields, (K,) parameters and (B, G) per-group values, "
                            "one sample per parallel iteration."),
                 f"{i}B, R, K = {first}.shape",
                 f"{i}G = K // S",
                 f"{i}dtype = {first}.dtype.type"]
        lines += [f"{i}{n} = {Printer({}, typed_numbers=False).doprint(e)}" for n, e in names.scalars]
        lines += [f"{i}rows_{n} = numpy.empty((B, K), {first}.dtype)" for n in rows]
        lines += [f"{i}wide_{n} = numpy.empty((B, K))" for n in wides]
        lines += [f"{i}shares_{n} = numpy.empty((B, K))" for n in sums]  # zeroed in the loop: numpy.zeros
        # would be a parallel region of its own
        lines += [f"{i}{n}_groups = numpy.empty((B, G), {first}.dtype)" for n in names.group_results]
        lines += [f"{i}for b in numba.prange(B):"]
        if sums:
            lines += [f"{i2}for c in range(K):"] + [f"{i3}shares_{n}[b, c] = 0.0" for n in sums]
        lines += [f"{i2}{n} = rows_{n}[b]" for n in rows]
        if per_group_inputs:
            lines += [f"{i2}for c in range(K):"] + [f"{i3}{n}[c] = {n}_groups[b, c // S]" for n in per_group_inputs]
        lines += [f"{i2}{line}" for line in body]
        for n in sums:  # the samples' shares in a fixed order: the same result on any number of threads
            lines += [f"{i}{n} = numpy.empty(K, {first}.dtype)", f"{i}for c in range(K):", f"{i2}total = 0.0",
                      f"{i2}for b in range(B):", f"{i3}total += shares_{n}[b, c]", f"{i2}{n}[c] = total"]
        lines += [f"{i}{line}" for line in after]
        results = [s.name for s in plan.returns if s.name not in names.outputs]
        returned = [f"{n}_groups" if n in names.group_results else n for n in results]
        lines.append(f"{i}return {', '.join(returned)}{',' if len(returned) == 1 else ''}" if returned
                     else f"{i}return")
        return "\n".join(lines)
