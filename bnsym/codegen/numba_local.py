"""The compiled-CPU printer for kernels whose groups are contiguous runs: one group finished while it is in cache.

:mod:`bnsym.codegen.numba_stages` makes one pass over memory per stage of reductions. When every group is a
contiguous run of ``inner`` values ((groups, inner) fields: layer norm and RMS norm over their trailing axes, group
norm and instance norm on channel-first input; :class:`bnsym.runtime.fused.GroupLocalLayout`), a group of a few thousand
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
  the pass that sums dy*gamma), so that the group is read once fewer;
* **parameters of one row per sample** (``sample_rows``: adaptive layer norm's (N, D) gamma for x of (N, T, D);
  :class:`bnsym.runtime.fused.SampleLocalLayout`): row ``p`` serves the ``R = groups // P`` consecutive groups of a
  sample, and a parameter sum is per row, never over the batch. The parallel loop then runs over the rows: an
  iteration takes its R groups in blocks of at most ``BLOCK``, each block's shares added in the fields' dtype to
  a row of Q values of the iteration's own, and the blocks' rows added in float64 when R > BLOCK; the parameter
  values are computed on those rows and written to row ``p`` of (P, Q) results that the wrapper allocates with
  NumPy (as large as x when R = 1: NumPy's allocation asks for huge pages, Numba's faults 4 kB pages one at a
  time). No (blocks, P, Q) partials (P = N would make them quadratic in the batch), and each row written by one
  iteration: results independent of the number of threads. The helpers (passes and outputs) are the flat nest's,
  unchanged.

No array expressions in the parallel function: Numba would make each one a parallel region of its own, and waking
the threads for it costs more than its work.

For a layer whose groups interleave on channel-last input, the module also gets the sample-wise loops of
:mod:`bnsym.codegen.numba_interleaved`, printed from the same steps (:func:`bnsym.codegen.numba_plan.loop_steps`),
and the wrapper (:mod:`bnsym.codegen.numba_printer`) tries the group-local layout first, then the interleaved one,
then the NumPy kernel.

Every loop that sums is a function of its own compiled with reassociation (LLVM vectorises a float32 sum); the
per-group arithmetic and the output loops keep IEEE semantics. The parallel loop runs over blocks of ``BLOCK``
groups (``numba.prange``). Sums of one group follow the accuracy contract of :mod:`bnsym.runtime.reduce`: float32
pieces of
at most ``RUN`` contiguous values, float64 totals. Per-group values are rounded to the fields' dtype as the NumPy
kernels round them.
"""

from __future__ import annotations

from bnsym.codegen.numba_plan import PlanNames, form, loop_steps, product, split_names
from bnsym.codegen.numba_text import CompiledLoops, Printer, docstring
from bnsym.codegen.plan import Accumulate, Assign, KernelPlan, Reduce
from bnsym.symbolic.naming import COUNT, REDUCER

__all__ = ["NESTS", "GroupLocalPrinter"]

#: The two loop nests over a group (module docstring): S == 1, and runs of S > 1 values per parameter value.
NESTS = ("flat", "runs")
_NEST = "<nest>"  # where the driver's body names the variant of its nest
_NEST_NOTES = {"flat": "For S == 1 (one parameter value per position).",
               "runs": "For S > 1 (a run of S values per parameter value)."}


class GroupLocalPrinter:
    """Renders a :class:`KernelPlan` that reduces through its reducer as group-local Numba loops (module
    docstring): the helpers and drivers, and what a wrapper needs to call them (:class:`CompiledLoops`); the wrapper
    itself is :mod:`bnsym.codegen.numba_printer`'s, which knows every strategy."""

    def __init__(self, indent: str = "    ", nests: tuple[str, ...] = NESTS, sample_rows: bool = False):
        """``nests``: the loop nests to print (("flat",) for a layer whose parameters have one value per value of a
        group: its wrapper then runs the NumPy kernel for S > 1, which its public functions never pass).
        ``sample_rows``: the parameters hold one row per sample (``Grouping.sample_parameters``; the layout is
        :class:`bnsym.runtime.fused.SampleLocalLayout`): the parallel loop runs over the parameter rows, each
        iteration takes the R = groups // P groups of its row, and a parameter sum is that row's (module
        docstring). The flat nest only: a parameter per sample that is one value per group (S > 1) runs the NumPy
        kernel."""
        self.indent = indent
        self.sample_rows = sample_rows
        self.nests = ("flat",) if sample_rows else nests

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
                                            else form(s).free_symbols)})
            if reads & names.parameter_values:
                return "a per-group value or a field reads a parameter sum"
        return None

    # ----- the whole kernel -----

    def render(self, plan: KernelPlan) -> CompiledLoops:
        names = PlanNames(plan)
        helpers: list[str] = []
        body: list[str] = []  # the body of the loop over one block's groups
        after: list[str] = []  # after the parallel loop: parameter sums and what reads them
        sums: list[str] = []  # the parameter sums, in order
        field_less: list[str] = []  # parameter sums of per-group values (no field): need Q == 1
        for step in loop_steps(plan.statements, names):
            if step.kind == "parameter value":
                name, expr = step.statement.name.name, step.statement.expr
                if self.sample_rows:  # per row, inside the row's iteration (_main_sample_rows)
                    after += self._row_value(name, expr, names)
                    continue
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
        main = self._main_sample_rows if self.sample_rows else self._main
        parts = helpers + [main(plan, names, [line.replace(_NEST, f"_{nest}") for line in body], after, sums,
                                field_less, nest) for nest in nests]
        flat_only = len(self.nests) == 1 and bool(names.parameters)
        condition = ((" and layout.Q == 1" if field_less else "")
                     + (" and layout.inner == layout.Q" if flat_only else ""))
        driver = f"_{plan.name}_flat if layout.inner == layout.Q else _{plan.name}_runs" if split else f"_{plan.name}"
        return CompiledLoops("\n\n\n".join(parts), driver, condition, ["layout.P", "layout.Q"],
                             parameter_outputs=self.sample_rows)

    def _row_value(self, name: str, expr, names: PlanNames) -> list[str]:
        """Lines that compute row ``p`` of a parameter value (``name_row``, Q values) from the rows of the parameter
        sums and values it reads (``sample_rows``)."""
        if expr.is_Symbol:  # another name for a parameter sum
            return [f"{name}_row = {expr.name}_row"]
        printed = Printer({n: f"{n}_row[q]" for n in names.parameter_values}, typed_numbers=True).doprint(expr)
        return [f"{name}_row = numpy.empty(Q, dtype)", "for q in range(Q):", f"{self.indent}{name}_row[q] = {printed}"]

    # ----- helpers -----

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
                     *docstring(self.indent,
                                f"One pass of {plan.name} over one group of Q*S values: {described}."
                                + (" Totals in float64." if group_terms else "") + shares
                                + (f" {_NEST_NOTES[nest]}" if nest else ""))]
            if fields + parameters:
                lines.append(f"{i}dtype = {(fields + parameters)[0]}.dtype.type")
            lines += [f"{i}total{j} = 0.0" for j in k]
            for j in range(len(parameter_terms)):
                if j not in element:  # a per-group value: once per group (the parameters do not vary within a group)
                    value = Printer({}, typed_numbers=bool(fields + parameters)).doprint(product(parameter_terms[j]))
                    lines.append(f"{i}partial{j}[0] += {value}")
            return lines

        def loops(nest: str, depth: int) -> list[str]:
            printer = Printer(self._texts(names, fields, parameters, nest), typed_numbers=True)
            inner = self._atom_lines(names, atoms, printer)
            inner += [f"piece{j} += {printer.doprint(product(t))}" for j, t in zip(k, group_terms)]
            before = [f"piece{j} = dtype(0)" for j in k]
            if nest == "flat":
                inner += [f"block{j}_p[i] += {printer.doprint(product(parameter_terms[j]))}" for j in element]
                before += [f"block{j}_p = block{j}[start:start + RUN]" for j in element]
            else:
                inner += [f"share{j} += {printer.doprint(product(parameter_terms[j]))}" for j in element]
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
            if self.sample_rows:  # the row's own partials (_main_sample_rows)
                arguments += [f"{n.name}_row" for n in parameter.names]
                arguments += [f"{n.name}_wide" for n in parameter.names]
            else:
                arguments += [f"parts_{n.name}[block, p]" for n in parameter.names]
                arguments += [f"wide_{n.name}[block, p]" for n in parameter.names]
        return sources, arguments, lacking

    def _outputs(self, function: str, plan: KernelPlan, outputs: list[Accumulate], names: PlanNames):
        expressions = [form(s) for s in outputs]
        written = [s.name.name for s in outputs]
        fields, parameters, per_group, scalars = split_names(names, names.read(expressions))
        fields = [f for f in fields if f not in written]
        atoms = names.atoms_used(expressions)
        i = self.indent

        def head(name: str, nest: str | None) -> list[str]:
            return ["@numba.njit(cache=True)",
                    f"def {name}({', '.join(fields + parameters + per_group + scalars + ['Q', 'S'] + written)}):",
                    *docstring(self.indent,
                               f"The field outputs of {plan.name} ({', '.join(written)}) for one group."
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
                 *docstring(self.indent,
                            f"{plan.name} on (groups, inner) fields, (P, Q) parameters and (groups,) per-group "
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

    def _main_sample_rows(self, plan: KernelPlan, names: PlanNames, body: list[str], after: list[str],
                          sums: list[str], field_less: list[str], nest: str | None) -> str:
        """The parallel driver over parameter rows (``sample_rows``): iteration ``p`` takes groups ``p * R`` to
        ``p * R + R - 1`` in blocks of at most ``BLOCK``. A parameter sum has a row of Q values per iteration,
        ``<sum>_row`` in the fields' dtype, which holds a block's float32 partial; with more than one block (R >
        BLOCK) the blocks' rows are added in float64 into ``<sum>_wide``, in order, and the total is rounded into
        the row. A sum of per-group values (no field) goes to ``<sum>_wide`` directly. The parameter values are
        then computed on the rows, and the results copied into row ``p`` of the (P, Q) arrays that the wrapper
        passes. Each row is written by its own iteration only: the results do not depend on the number of
        threads."""
        i = self.indent
        i2, i3, i4 = i * 2, i * 3, i * 4
        inputs = [f"{n}_groups" if n not in names.fields + names.parameters else n for n in names.inputs]
        first = names.fields[0]
        per_group_inputs = [n for n in names.inputs if n not in names.fields + names.parameters]
        element_sums = [n for n in sums if n not in field_less]
        results = [s.name for s in plan.returns if s.name not in names.outputs]
        filled = [n for n in results if n not in names.group_results]
        lines = ["@numba.njit(cache=True, parallel=True)",
                 f"def _{plan.name}({', '.join(inputs + [COUNT, 'P', 'Q'] + names.outputs + filled)}):",
                 *docstring(self.indent,
                            f"{plan.name} on (groups, inner) fields, (P, Q) parameters of one row per R = groups // P "
                            "groups and (groups,) per-group values, one parameter row (a sample) per parallel "
                            "iteration" + (f"; fills {', '.join(filled)}." if filled else ".")),
                 f"{i}groups, inner = {first}.shape",
                 f"{i}S = inner // Q",
                 f"{i}R = groups // P",
                 f"{i}dtype = {first}.dtype.type"]
        lines += [f"{i}{n} = {Printer({}, typed_numbers=False).doprint(e)}" for n, e in names.scalars]
        lines += [f"{i}{n}_groups = numpy.empty(groups, {first}.dtype)" for n in names.group_results]
        lines += [f"{i}for p in numba.prange(P):"]
        # Rows of Q values, small and in cache; zeroed and added by loops, not array expressions (Numba would make
        # each array expression a parallel region of its own: module docstring).
        lines += [f"{i2}{n}_row = numpy.empty(Q, {first}.dtype)" for n in sums]
        lines += [f"{i2}{n}_wide = numpy.empty(Q if R > BLOCK else 1)" for n in element_sums]
        lines += [f"{i2}{n}_wide = numpy.zeros(1)" for n in field_less]  # Q == 1 (the wrapper's condition)
        if element_sums:
            lines += [f"{i2}if R > BLOCK:", f"{i3}for q in range(Q):"]
            lines += [f"{i4}{n}_wide[q] = 0.0" for n in element_sums]
        lines += [f"{i2}for start in range(p * R, p * R + R, BLOCK):"]
        if element_sums:
            lines += [f"{i3}for q in range(Q):"] + [f"{i4}{n}_row[q] = 0" for n in element_sums]
        lines += [f"{i3}for g in range(start, min(start + BLOCK, p * R + R)):"]
        lines += [f"{i4}{n} = {n}_groups[g]" for n in per_group_inputs]
        lines += [f"{i4}{line}" for line in body]
        if element_sums:
            lines += [f"{i3}if R > BLOCK:", f"{i4}for q in range(Q):"]
            lines += [f"{i4}{i}{n}_wide[q] += {n}_row[q]" for n in element_sums]
            lines += [f"{i2}if R > BLOCK:", f"{i3}for q in range(Q):"]
            lines += [f"{i4}{n}_row[q] = {n}_wide[q]" for n in element_sums]
        lines += [f"{i2}{n}_row[0] = {n}_wide[0]" for n in field_less]
        lines += [f"{i2}{line}" for line in after]
        if filled:
            lines += [f"{i2}for q in range(Q):"] + [f"{i3}{n}[p, q] = {n}_row[q]" for n in filled]
        returned = [f"{n}_groups" if n in names.group_results else n for n in results]
        lines.append(f"{i}return {', '.join(returned)}{',' if len(returned) == 1 else ''}" if returned
                     else f"{i}return")
        return "\n".join(lines)
