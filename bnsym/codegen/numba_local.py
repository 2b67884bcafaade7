"""The compiled-CPU printer for kernels whose groups are contiguous runs: one group finished while it is in cache.

:mod:`bnsym.codegen.numba_printer` makes one pass over memory per stage of reductions. When every group is a
contiguous run of ``inner`` values ((groups, inner) fields: layer norm and RMS norm over their trailing axes, group
norm and instance norm on channel-first input; :class:`bnsym._fused.GroupLocalLayout`), a group of a few thousand
values fits in the core's cache, and the loops printed here do better: for each group they take every stage of its
sums, its per-group values and its field outputs one after another, so that the fields are read from memory once
and the outputs written once, whatever the number of stages. This is also how these loops read what the stage
printer does not:

* **a parameter that varies within a group** (layer norm's gamma, group norm's per-channel gamma): a (P, Q) array;
  group ``g`` reads row ``g % P``, value ``i`` of a group column ``i // S`` (``S = inner // Q``). Two loop nests:
  ``S == 1`` (one parameter value per position: a flat loop along memory) and ``S > 1`` (a loop over the Q
  parameter values, each covering a run of S values). Each is a function of its own (``_flat`` and ``_runs``),
  called by a driver of its own, and the wrapper runs the driver of the call's nest: a call compiles only the nest
  it runs (both nests in one function took a quarter longer to compile);
* **a sum over the groups that share a parameter** (``Reduce(over="parameter")``: dgamma of layer norm): each group
  adds its share to a (P, Q) partial of its block of at most ``BLOCK`` groups, in the fields' dtype when ``S == 1``
  (at most ``BLOCK`` values per entry) and in float64 otherwise (after float32 pieces of at most ``RUN`` values);
  the block partials are added in float64, in a fixed order, so results do not depend on the number of threads.
  A parameter sum joins the earliest pass over the group that can take it (layer norm's dgamma and dbeta ride along
  the pass that sums dy*gamma), so that the group is read once fewer.

No array expressions in the parallel function: Numba would make each one a parallel region of its own, and waking
the threads for it costs more than its work.

For a layer whose groups interleave on channel-last input, the module also gets the sample-wise loops of
:mod:`bnsym.codegen.numba_interleaved`, printed from the same steps (:func:`loop_steps`), and the wrapper tries the
group-local layout first, then the interleaved one, then the NumPy kernel.

Every loop that sums is a function of its own compiled with reassociation (LLVM vectorises a float32 sum); the
per-group arithmetic and the output loops keep IEEE semantics. The parallel loop runs over blocks of ``BLOCK``
groups (``numba.prange``). Sums of one group follow the accuracy contract of :mod:`bnsym._reduce`: float32 pieces of
at most ``RUN`` contiguous values, float64 totals. Per-group values are rounded to the fields' dtype as the NumPy
kernels round them.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import sympy

from bnsym.codegen.numba_printer import (
    NumbaPlanPrinter,
    Printer,
    atoms_used,
    names_read,
    plan_symbols,
    python_tuple,
    wrapper_head,
)
from bnsym.codegen.plan import Accumulate, Assign, KernelPlan, Reduce
from bnsym.naming import COUNT, REDUCER
from bnsym.symbolic.reduction import M, ParameterField

__all__ = ["NESTS", "GroupLocalPrinter", "LoopStep", "PlanNames", "loop_steps", "merged_passes", "split_names"]

#: The two loop nests over a group (module docstring): S == 1, and runs of S > 1 values per parameter value.
NESTS = ("flat", "runs")
_NEST = "<nest>"  # where the driver's body names the variant of its nest
_NEST_NOTES = {"flat": "For S == 1 (one parameter value per position).",
               "runs": "For S > 1 (a run of S values per parameter value)."}


class PlanNames:
    """What each name of a plan is, for the group-local loops.

    ``fields``: full-size inputs and outputs; ``parameters``: parameter-shaped inputs (:class:`ParameterField`);
    ``atoms``: element-valued assignments (computed in the loop bodies, never stored); ``scalars``: values of M
    alone; ``parameter_values``: parameter sums and what is computed from them (after the loops); everything else
    is a per-group value. ``accumulates``: the field outputs' statements; ``group_results``: the per-group values
    that the kernel returns (its statistics).
    """

    def __init__(self, plan: KernelPlan):
        symbols = plan_symbols(plan)
        self.parameters = [p for p in plan.parameters
                           if any(isinstance(s, ParameterField) and s.name == p for s in symbols)]
        self.inputs = [p for p in plan.parameters if p not in (REDUCER, COUNT)]
        self.fields = [n for n in self.inputs if n in plan.fields and n not in self.parameters]
        self.accumulates = [s for s in plan.statements if isinstance(s, Accumulate)]
        self.outputs = [s.name.name for s in self.accumulates]
        element = set(plan.fields) - set(self.outputs)
        self.atoms: dict[str, sympy.Expr] = {}
        self.scalars: list[tuple[str, sympy.Expr]] = []
        self.parameter_values = {n.name for s in plan.statements if isinstance(s, Reduce) and s.over == "parameter"
                                 for n in s.names}
        scalar_names: set[str] = set()
        for s in plan.statements:
            if not isinstance(s, Assign):
                continue
            reads = {f.name for f in s.expr.free_symbols if f != M}
            if reads & element:
                element.add(s.name.name)
                self.atoms[s.name.name] = s.expr
            elif reads & self.parameter_values:
                self.parameter_values.add(s.name.name)
            elif reads <= scalar_names:
                scalar_names.add(s.name.name)
                self.scalars.append((s.name.name, s.expr))
        self.scalar_names = scalar_names
        self.element = element
        self.group_results = [s.name for s in plan.returns if s.name not in self.fields and s.name not in self.outputs
                              and s.name not in self.parameter_values]

    def read(self, exprs) -> list[str]:
        """The names that loops evaluating ``exprs`` (expressions or names) read, atoms expanded, first seen first;
        ``count`` for M."""
        return names_read(self.atoms, exprs)

    def atoms_used(self, exprs) -> list[str]:
        """The atoms that ``exprs`` read (directly or through other atoms), in definition order."""
        return atoms_used(self.atoms, exprs)


class GroupLocalPrinter:
    """Renders a :class:`KernelPlan` that reduces through its reducer as group-local Numba loops (module
    docstring), with a wrapper of the NumPy kernel's signature that runs them for groups that are contiguous runs,
    the sample-wise loops (when printed) for groups that interleave, and the NumPy kernel for any other layout."""

    def __init__(self, indent: str = "    ", interleaved: bool = False, nests: tuple[str, ...] = NESTS):
        """``interleaved``: also print the sample-wise loops of :mod:`bnsym.codegen.numba_interleaved` (for a layer
        whose groups interleave on channel-last input), and a wrapper that chooses between the two layouts;
        ``nests``: the loop nests to print (("flat",) for a layer whose parameters have one value per value of a
        group: its wrapper then runs the NumPy kernel for S > 1, which its public functions never pass)."""
        self.indent = indent
        self.interleaved = interleaved
        self.nests = nests

    @staticmethod
    def unsupported(plan: KernelPlan) -> str | None:
        """Why these loops do not cover ``plan``, or None."""
        if REDUCER not in plan.parameters:
            return "it does not reduce: nothing to take group by group"
        names = PlanNames(plan)
        if not names.fields:
            return "it reads no field"
        accumulates = [i for i, s in enumerate(plan.statements) if isinstance(s, Accumulate)]
        if accumulates and accumulates != list(range(accumulates[0], len(plan.statements))):
            return "a statement follows its field outputs"
        for s in plan.statements:
            if isinstance(s, Assign) and s.name.name in names.element | names.parameter_values:
                continue
            reads = (set().union(*({f.name for f in t} for t in s.terms)) if isinstance(s, Reduce)
                     else {f.name for f in (s.expr.free_symbols if isinstance(s, Assign)
                                            else _form(s).free_symbols)})
            if reads & names.parameter_values:
                return "a per-group value or a field reads a parameter sum"
        return None

    # ----- the whole kernel -----

    def render(self, plan: KernelPlan) -> str:
        names = PlanNames(plan)
        helpers: list[str] = []
        body: list[str] = []  # the body of the loop over one block's groups
        after: list[str] = []  # after the parallel loop: parameter sums and what reads them
        sums: list[str] = []  # the parameter sums, in order
        field_less: list[str] = []  # parameter sums of per-group values (no field): need Q == 1
        for step in loop_steps(plan.statements, names):
            if step.kind == "parameter value":
                name, expr = step.statement.name.name, step.statement.expr
                if expr.is_Symbol:  # another name for a parameter sum
                    after.append(f"{name} = {expr.name}")
                    continue
                printed = Printer({n: f"{n}[p, q]" for n in names.parameter_values}, typed_numbers=True).doprint(expr)
                after += [f"{name} = numpy.empty((P, Q), dtype)", "for p in range(P):",
                          f"{self.indent}for q in range(Q):", f"{self.indent * 2}{name}[p, q] = {printed}"]
            elif step.kind == "group value":
                name, expr = step.statement.name.name, step.statement.expr
                body.append(f"{name} = dtype({Printer({}, typed_numbers=False).doprint(expr)})")
            else:
                function = f"_{plan.name}_pass{step.stage}"
                sources, arguments, lacking = self._loop(function, plan, step.group, step.parameter, names)
                helpers += sources
                call = f"{function}{_NEST if len(sources) > 1 else ''}({', '.join(arguments)})"
                if step.group:
                    totals = [f"total_{n.name}" for n in step.group.names]
                    body.append(f"{', '.join(totals)}{',' if len(totals) == 1 else ''} = {call}")
                    body += [f"{n.name} = dtype({t})" for n, t in zip(step.group.names, totals)]
                else:
                    body.append(call)
                if step.parameter:
                    sums += [n.name for n in step.parameter.names]
                    field_less += lacking
        if names.accumulates:
            function = f"_{plan.name}_outputs"
            sources, arguments = self._outputs(function, plan, names.accumulates, names)
            helpers += sources
            body.append(f"{function}{_NEST if len(sources) > 1 else ''}({', '.join(arguments)})")
        body += [f"{n}_groups[g] = {n}" for n in names.group_results]
        split = any(_NEST in line for line in body)  # a driver per nest, or one for both
        nests = NESTS if split else (None,)
        parts = helpers + [self._main(plan, names, [line.replace(_NEST, f"_{nest}") for line in body], after, sums,
                                      field_less, nest) for nest in nests]
        needs_s1 = None  # the sample-wise loops are not printed
        if self.interleaved:
            from bnsym.codegen.numba_interleaved import InterleavedPrinter

            source, needs_s1 = InterleavedPrinter(self.indent).render(plan)
            parts.append(source)
        flat_only = len(self.nests) == 1 and bool(names.parameters)
        parts.append(self._wrapper(plan, names, bool(field_less), needs_s1, split, flat_only))
        return "\n\n\n".join(parts)

    # ----- helpers -----

    def _docstring(self, text: str, indent: str | None = None) -> list[str]:
        indent = self.indent if indent is None else indent
        return [indent + line for line in textwrap.wrap(f'"""{text}"""', 116 - len(indent))]

    def _call_arguments(self, fields, parameters, per_group, scalars) -> list[str]:
        """How the group loop passes these to a helper: rows of group g, parameter row p, values in dtype."""
        return ([f"{f}[g]" for f in fields] + [f"{p}[p]" for p in parameters] + per_group
                + [f"dtype({s})" for s in scalars] + ["Q", "S"])

    def _texts(self, names: PlanNames, fields, parameters, nest: str) -> dict[str, str]:
        """Symbol names in the innermost loop: ``x_p[i]`` for fields, ``gamma_p[i]`` (``S == 1``) or ``gamma_q``
        (``S > 1``) for parameters; per-group values and scalars keep their names, atoms theirs."""
        texts = {f: f"{f}_p[i]" for f in fields}
        texts |= {p: (f"{p}_p[i]" if nest == "flat" else f"{p}_q") for p in parameters}
        return texts | {a: a for a in names.atoms}

    def _atom_lines(self, names: PlanNames, atoms: list[str], printer: Printer) -> list[str]:
        return [f"{a} = {printer.doprint(names.atoms[a])}" for a in atoms]

    def _pieces(self, fields, parameters, depth: int, nest: str, inner_lines, before, after) -> list[str]:
        """The loops over one group's values in pieces of at most RUN: ``before`` each piece, ``inner_lines`` for
        each value, ``after`` each piece."""
        i = self.indent
        d = i * depth
        lines: list[str] = []
        if nest == "flat":
            lines += [f"{d}for start in range(0, Q * S, RUN):"]
            lines += [f"{d}{i}{f}_p = {f}[start:start + RUN]" for f in fields + parameters]
        else:
            lines += [f"{d}for q in range(Q):"]
            lines += [f"{d}{i}{p}_q = {p}[q]" for p in parameters]
            lines += [f"{d}{i}for start in range(0, S, RUN):"]
            d += i
            lines += [f"{d}{i}{f}_p = {f}[q * S + start:q * S + min(S, start + RUN)]" for f in fields]
        lines += [f"{d}{i}{line}" for line in before]
        count = f"{fields[0]}_p.size" if fields else ("min(RUN, Q * S - start)" if nest == "flat" else
                                                      "min(RUN, S - start)")
        lines += [f"{d}{i}for i in range({count}):"]
        lines += [f"{d}{i}{i}{line}" for line in inner_lines]
        lines += [f"{d}{i}{line}" for line in after(nest)]
        return lines

    def _loop(self, function: str, plan: KernelPlan, group: Reduce | None, parameter: Reduce | None, names: PlanNames):
        """One pass over a group's values that takes the sums of ``group`` (returned as float64 totals) and adds
        the group's share of the parameter sums of ``parameter`` (to the block's float32 rows ``block<k>`` when
        ``S == 1``, else to its float64 rows ``partial<k>``). Returns (source, call arguments, the parameter sums
        of per-group values only)."""
        group_terms = group.terms if group else ()
        parameter_terms = parameter.terms if parameter else ()
        factors = [f.name for term in group_terms + parameter_terms for f in term]
        fields, parameters, per_group, scalars = split_names(names, names.read(factors))
        atoms = names.atoms_used(factors)
        k = range(len(group_terms))
        element = [j for j, t in enumerate(parameter_terms) if any(f.name in names.element for f in t)]
        lacking = [parameter.names[j].name for j in range(len(parameter_terms)) if j not in element]
        blocks = [f"block{j}" for j in range(len(parameter_terms))]
        partials = [f"partial{j}" for j in range(len(parameter_terms))]
        described = "; ".join(part for part in (
            ", ".join("*".join(f.name for f in t) for t in group_terms),
            ("its share of the parameter sums of " + ", ".join("*".join(f.name for f in t) for t in parameter_terms))
            if parameter_terms else "") if part)
        i = self.indent

        def head(name: str, nest: str | None) -> list[str]:
            shares = ((" Parameter shares go to the block's float32 rows block<k>." if nest == "flat" else
                       " Parameter shares go to the block's float64 rows partial<k>." if nest == "runs" else
                       " Parameter shares go to the block's float32 rows block<k> when S == 1, else to its float64 "
                       "rows partial<k>.") if parameter_terms else "")
            lines = ["@numba.njit(cache=True, fastmath=REASSOCIATE)",
                     f"def {name}({', '.join(fields + parameters + per_group + scalars + ['Q', 'S'])}"
                     f"{''.join(', ' + n for n in blocks + partials)}):",
                     *self._docstring(f"One pass of {plan.name} over one group of Q*S values: {described}."
                                      + (" Totals in float64." if group_terms else "") + shares
                                      + (f" {_NEST_NOTES[nest]}" if nest else ""))]
            if fields + parameters:
                lines.append(f"{i}dtype = {(fields + parameters)[0]}.dtype.type")
            lines += [f"{i}total{j} = 0.0" for j in k]
            for j in range(len(parameter_terms)):
                if j not in element:  # a per-group value: once per group (the parameters do not vary within a group)
                    value = Printer({}, typed_numbers=bool(fields + parameters)).doprint(_product(parameter_terms[j]))
                    lines.append(f"{i}partial{j}[0] += {value}")
            return lines

        def loops(nest: str, depth: int) -> list[str]:
            printer = Printer(self._texts(names, fields, parameters, nest), typed_numbers=True)
            inner = self._atom_lines(names, atoms, printer)
            inner += [f"piece{j} += {printer.doprint(_product(t))}" for j, t in zip(k, group_terms)]
            before = [f"piece{j} = dtype(0)" for j in k]
            if nest == "flat":
                inner += [f"block{j}_p[i] += {printer.doprint(_product(parameter_terms[j]))}" for j in element]
                before += [f"block{j}_p = block{j}[start:start + RUN]" for j in element]
            else:
                inner += [f"share{j} += {printer.doprint(_product(parameter_terms[j]))}" for j in element]
                before += [f"share{j} = dtype(0)" for j in element]
            return self._pieces(fields, parameters, depth, nest, inner, before,
                                lambda nest: [f"total{j} += piece{j}" for j in k]
                                + ([f"partial{j}[q] += share{j}" for j in element] if nest == "runs" else []))

        returned = [f"{i}return {', '.join(f'total{j}' for j in k)}{',' if len(k) == 1 else ''}"] if group_terms else []
        if (group_terms or element) and (parameters or element) and len(self.nests) > 1:  # a function per nest
            sources = ["\n".join(head(f"{function}_{nest}", nest) + loops(nest, 1) + returned) for nest in NESTS]
        else:
            sources = ["\n".join(head(function, None) + (loops("flat", 1) if group_terms or element else [])
                                  + returned)]
        arguments = self._call_arguments(fields, parameters, per_group, scalars)
        if parameter:
            arguments += [f"parts_{n.name}[block, p]" for n in parameter.names]
            arguments += [f"wide_{n.name}[block, p]" for n in parameter.names]
        return sources, arguments, lacking

    def _outputs(self, function: str, plan: KernelPlan, outputs: list[Accumulate], names: PlanNames):
        expressions = [_form(s) for s in outputs]
        written = [s.name.name for s in outputs]
        fields, parameters, per_group, scalars = split_names(names, names.read(expressions))
        fields = [f for f in fields if f not in written]
        atoms = names.atoms_used(expressions)
        i = self.indent

        def head(name: str, nest: str | None) -> list[str]:
            return ["@numba.njit(cache=True)",
                    f"def {name}({', '.join(fields + parameters + per_group + scalars + ['Q', 'S'] + written)}):",
                    *self._docstring(f"The field outputs of {plan.name} ({', '.join(written)}) for one group."
                                     + (f" {_NEST_NOTES[nest]}" if nest else "")),
                    f"{i}dtype = {written[0]}.dtype.type"]

        def loops(nest: str, depth: int) -> list[str]:
            d = i * depth
            printer = Printer(self._texts(names, fields + written, parameters, nest), typed_numbers=True)
            out: list[str] = []
            if nest == "flat":
                out += [f"{d}{f}_p = {f}" for f in fields + written + parameters]
                out += [f"{d}for i in range({written[0]}_p.size):"]
                inner = d + i
            else:
                out += [f"{d}for q in range(Q):"]
                out += [f"{d}{i}{p}_q = {p}[q]" for p in parameters]
                out += [f"{d}{i}{f}_p = {f}[q * S:q * S + S]" for f in fields + written]
                out += [f"{d}{i}for i in range(S):"]
                inner = d + i + i
            out += [f"{inner}{line}" for line in self._atom_lines(names, atoms, printer)]
            out += [f"{inner}{printer.names[n]} = {printer.doprint(e)}" for n, e in zip(written, expressions)]
            return out

        if parameters and len(self.nests) > 1:  # the nests differ: a function for each
            sources = ["\n".join(head(f"{function}_{nest}", nest) + loops(nest, 1)) for nest in NESTS]
        else:
            sources = ["\n".join(head(function, None) + loops("flat", 1))]
        arguments = self._call_arguments(fields, parameters, per_group, scalars) + [f"{n}[g]" for n in written]
        return sources, arguments

    def _main(self, plan: KernelPlan, names: PlanNames, body: list[str], after: list[str], sums: list[str],
              field_less: list[str], nest: str | None) -> str:
        """The parallel driver over blocks of groups; ``_<kernel>_<nest>`` when the nests have drivers of their
        own (``nest`` None: one driver for both)."""
        i = self.indent
        i2, i3, i4 = i * 2, i * 3, i * 4
        inputs = [f"{n}_groups" if n not in names.fields + names.parameters else n for n in names.inputs]
        first = names.fields[0]
        per_group_inputs = [n for n in names.inputs if n not in names.fields + names.parameters]
        suffix = f"_{nest}" if nest else ""
        lines = ["@numba.njit(cache=True, parallel=True)",
                 f"def _{plan.name}{suffix}({', '.join(inputs + [COUNT, 'P', 'Q'] + names.outputs)}):",
                 *self._docstring(f"{plan.name} on (groups, inner) fields, (P, Q) parameters and (groups,) per-group "
                                  "values, one block of BLOCK groups per parallel iteration."
                                  + (f" {_NEST_NOTES[nest]}" if nest else "")),
                 f"{i}groups, inner = {first}.shape",
                 f"{i}S = inner // Q",
                 f"{i}dtype = {first}.dtype.type"]
        lines += [f"{i}{n} = {Printer({}, typed_numbers=False).doprint(e)}" for n, e in names.scalars]
        lines += [f"{i}blocks = (groups + BLOCK - 1) // BLOCK"]
        # Each parameter sum's partials per block: in the fields' dtype when S == 1 (a float32 partial covers at
        # most BLOCK groups), in float64 when S > 1 (a block adds many float32 pieces) and for per-group terms.
        # Zeroed and added by loops, not array expressions: Numba would make each of those a parallel region of its
        # own, and waking the threads for one costs more than its work (tens of microseconds when they sleep).
        lines += [f"{i}parts_{n} = numpy.empty((blocks, P, Q), {first}.dtype)" for n in sums]
        lines += [f"{i}wide_{n} = numpy.empty((blocks, P, Q if S > 1 else 1))" for n in sums]
        lines += [f"{i}{n}_groups = numpy.empty(groups, {first}.dtype)" for n in names.group_results]
        lines += [f"{i}for block in numba.prange(blocks):"]
        if sums:
            lines += [f"{i2}for p in range(P):", f"{i3}for q in range(Q):"]
            lines += [f"{i4}parts_{n}[block, p, q] = 0" for n in sums]
            lines += [f"{i3}for q in range(Q if S > 1 else 1):"]
            lines += [f"{i4}wide_{n}[block, p, q] = 0.0" for n in sums]
        lines += [f"{i2}for g in range(block * BLOCK, min(groups, block * BLOCK + BLOCK)):",
                  f"{i3}p = g % P"]
        lines += [f"{i3}{n} = {n}_groups[g]" for n in per_group_inputs]
        lines += [f"{i3}{line}" for line in body]
        for n in sums:  # the block partials in a fixed order: the same result on any number of threads
            if n in field_less:  # per-group terms: float64 partials only (and Q == 1)
                add = [f"{i4}total += wide_{n}[block, p, q]"]
            else:
                add = [f"{i4}if S == 1:", f"{i4}{i}total += parts_{n}[block, p, q]", f"{i4}else:",
                       f"{i4}{i}total += wide_{n}[block, p, q]"]
            total = [f"{i}{n} = numpy.empty((P, Q), {first}.dtype)", f"{i}for p in range(P):",
                     f"{i2}for q in range(Q):", f"{i3}total = 0.0", f"{i3}for block in range(blocks):", *add,
                     f"{i3}{n}[p, q] = total"]
            if n in field_less:
                lines += total
            else:  # one block of partials in the fields' dtype is the total: no copy of a parameter-sized array
                lines += [f"{i}if S == 1 and blocks == 1:", f"{i2}{n} = parts_{n}[0]", f"{i}else:",
                          *(i + line for line in total)]
        lines += [f"{i}{line}" for line in after]
        results = [s.name for s in plan.returns if s.name not in names.outputs]
        returned = [f"{n}_groups" if n in names.group_results else n for n in results]
        lines.append(f"{i}return {', '.join(returned)}{',' if len(returned) == 1 else ''}" if returned
                     else f"{i}return")
        return "\n".join(lines)

    def _wrapper(self, plan: KernelPlan, names: PlanNames, needs_q1: bool,
                 interleaved: bool | None, split: bool, flat_only: bool) -> str:
        """The wrapper with the NumPy kernel's signature: the group-local loops when the groups are contiguous
        runs, the sample-wise ones when they interleave (``interleaved`` is None when those are not printed, else
        whether they need S == 1), and the NumPy kernel for anything else."""
        i = self.indent
        per_group = [n for n in names.inputs if n not in names.fields + names.parameters]
        covers = ("each group's stages and outputs one after another while the group is in cache "
                  "(bnsym.codegen.numba_local)")
        if interleaved is not None:
            covers += (", or, on channel-last input, one sample at a time with its groups side by side "
                       "(bnsym.codegen.numba_interleaved)")
        lines = wrapper_head(plan, i, f"Compiled: {covers}; any other layout or reducer runs the NumPy kernel.")
        of = (f"{REDUCER}, fields={python_tuple(names.fields)}, per_group={python_tuple(per_group)}, "
              f"parameters={python_tuple(names.parameters)}")
        lines += [f"{i}layout = GroupLocalLayout.of({of})",
                  f"{i}if layout is not None{' and layout.Q == 1' if needs_q1 else ''}"
                  f"{' and layout.inner == layout.Q' if flat_only else ''}:"]
        driver = (f"_{plan.name}_flat if layout.inner == layout.Q else _{plan.name}_runs" if split
                  else f"_{plan.name}")
        lines += self._call(plan, names, driver, ["layout.P", "layout.Q"])
        if interleaved is not None:
            from bnsym.codegen.numba_interleaved import samples_function

            lines += [f"{i}layout = InterleavedLayout.of({of})",
                      f"{i}if layout is not None{' and layout.S == 1' if interleaved else ''}:"]
            lines += self._call(plan, names, samples_function(plan), ["layout.S"])
        lines += [f"{i}return numpy_kernels.{plan.name}({', '.join(plan.parameters)})"]
        return "\n".join(lines)

    def _call(self, plan: KernelPlan, names: PlanNames, function: str,
              shape: list[str]) -> list[str]:
        """The wrapper's lines (inside its ``if``) that call ``function`` with the arrays arranged by ``layout``
        and ``shape`` (what the function takes after M), and return its results as the NumPy kernel does."""
        i2 = self.indent * 2
        lines = [f"{i2}{n} = layout.empty()" for n in names.outputs]
        arguments = [f"layout.fields({n})" if n in names.fields else
                     f"layout.parameter({n})" if n in names.parameters else f"layout.per_group({n})"
                     for n in names.inputs]
        arguments += [f"{REDUCER}.count", *shape] + [f"layout.fields({n})" for n in names.outputs]
        results = [s.name for s in plan.returns if s.name not in names.outputs]
        call = f"run_compiled({function}, {', '.join(arguments)})"
        lines.append(f"{i2}{', '.join(results)}{',' if len(results) == 1 else ''} = {call}" if results
                     else f"{i2}{call}")
        returned = [n if n in names.outputs else f"layout.grouped({n})" if n in names.group_results
                    else f"layout.parameter_result({n})" for n in (s.name for s in plan.returns)]
        return lines + [f"{i2}return {', '.join(returned)}"]


@dataclass(frozen=True)
class LoopStep:
    """One step of the loops over a group (or a sample), in the plan's order (:func:`loop_steps`).

    ``kind``: "group value" (a per-group :class:`Assign`, in ``statement``), "parameter value" (an Assign computed
    from parameter sums, after the loops) or "pass" (one pass over the values: ``stage``, its 1-based number, the
    group sums ``group`` and the parameter sums ``parameter`` that it takes, either may be None).
    """

    kind: str
    statement: Assign | None = None
    stage: int = 0
    group: Reduce | None = None
    parameter: Reduce | None = None


def loop_steps(statements, names: PlanNames):
    """The :class:`LoopStep` of a plan's statements, for the group-local and the sample-wise printers: atoms (computed
    in the loop bodies) and scalars (before the loops) are left out, and each parameter sum rides along the pass
    that :func:`merged_passes` gives it, or gets a pass of its own."""
    statements = list(statements)
    merged = merged_passes(statements, names)
    stage = 0
    for index, statement in enumerate(statements):
        if isinstance(statement, Assign):
            name = statement.name.name
            if name in names.element or name in names.scalar_names:
                continue
            yield LoopStep("parameter value" if name in names.parameter_values else "group value", statement)
        elif isinstance(statement, Reduce) and (statement.over == "group" or index not in merged):
            stage += 1
            if statement.over == "group":
                parameter = next((statements[j] for j, k in merged.items() if k == index), None)
                yield LoopStep("pass", stage=stage, group=statement, parameter=parameter)
            else:
                yield LoopStep("pass", stage=stage, parameter=statement)


def merged_passes(statements, names: PlanNames) -> dict[int, int]:
    """{index of a parameter Reduce: index of the group Reduce whose pass also takes it}: the earliest group
    stage before which everything its terms read is known (layer norm's dgamma and dbeta join the pass that
    sums dy*gamma), so that a group's values are read once fewer. The others get a pass of their own."""
    known = set(names.inputs) | names.scalar_names | {COUNT}
    group_stages: list[tuple[int, set]] = []
    merges: dict[int, int] = {}
    for index, statement in enumerate(statements):
        if isinstance(statement, Reduce) and statement.over == "group":
            group_stages.append((index, set(known)))
            known |= {n.name for n in statement.names}
        elif isinstance(statement, Reduce):
            reads = set(names.read([f.name for term in statement.terms for f in term]))
            earlier = [stage for stage, available in group_stages if reads <= available
                       and stage not in merges.values()]
            if earlier:
                merges[index] = earlier[0]
        elif isinstance(statement, Assign):
            known.add(statement.name.name)
    return merges


def split_names(names: PlanNames, read: list[str]):
    """(fields, parameters, per-group values, scalars) among the names a loop reads."""
    fields = [n for n in read if n in names.fields or n in names.outputs]
    parameters = [n for n in read if n in names.parameters]
    scalars = [n for n in read if n in names.scalar_names or n == COUNT]
    per_group = [n for n in read if n not in fields + parameters + scalars]
    return fields, parameters, per_group, scalars


def _product(term) -> sympy.Expr:
    return NumbaPlanPrinter._product(term)


def _form(statement: Accumulate) -> sympy.Expr:
    return NumbaPlanPrinter._form(None, statement)
