"""The stage loops of the compiled-CPU backend: a :class:`~bnsym.codegen.plan.KernelPlan` rendered as fused loops
for Numba, one pass over memory per stage.

Notation. The fields of a call are seen as ``(rows, groups, inner)`` arrays (:mod:`bnsym.runtime.fused`): ``groups`` are
the kept axes (batch norm: the channels), ``rows`` the reduced axes before them and ``inner`` the reduced axes
after them. An NCHW batch is (N, C, H*W); an (N, C) batch or an NHWC batch is (N*H*W, C, 1). Per-group values
(statistics, coefficients, gamma) are ``(groups,)`` arrays; ``count`` (M) and what depends on it alone are scalars.

What one plan becomes (every loop is printed from the plan's statements; nothing here knows a layer):

* each :class:`~bnsym.codegen.plan.Reduce` stage: one function that makes **one pass** over the fields and returns
  every total of the stage in float64, in two variants (``_rows`` and ``_runs``), one loop nest each: when
  ``inner == 1`` a sweep over rows that accumulates every group side by side in float32 over blocks of at most
  ``BLOCK`` rows (the inner loop runs along memory, never across rows); otherwise one contiguous run of ``inner``
  values per row and group, summed in float32 pieces of at most ``RUN`` values. The wrapper chooses the variant by
  the layout, so a call compiles only the nest it runs (the two nests of one function took three times as long to
  compile as the runs nest alone). Block and piece partials are added in float64: the
  accuracy contract of :mod:`bnsym.runtime.reduce`. The partials of each block are stored and added in a fixed order, so
  results do not depend on the number of threads. Field atoms such as ``x_minus_mean`` are never materialised:
  they are computed in the loop body, as written (a difference stays a difference);
* the consecutive :class:`~bnsym.codegen.plan.Accumulate` outputs at the end: **one** elementwise pass that writes
  them all, each in its coefficient form, terms in the order of the NumPy kernel;
* the per-group :class:`~bnsym.codegen.plan.Assign` statements between the stages: loops over the groups in a
  driver function, in the plan's order, each value stored in the fields' dtype (as the NumPy kernels round them);
* a driver per variant (``_<kernel>_rows``, ``_<kernel>_runs``) that calls the stages and outputs of its nest;
* a Python wrapper with the NumPy kernel's signature that arranges the arrays
(:class:`bnsym.runtime.fused.FusedLayout`),
  runs the driver of the layout's nest, and falls back to the NumPy kernel for what the loops do not cover
  (another layout, a sharded reducer).

A plan that reads a parameter varying within a group or sums a parameter's gradient over groups, and any plan of
a layer whose groups lie within one sample (every layer but batch norm), is printed by
:mod:`bnsym.codegen.numba_local` instead (group-local loops, for groups that are contiguous runs, and
:mod:`bnsym.codegen.numba_interleaved` for groups that interleave on channel-last input).

Loops are parallel over blocks of rows or over runs with ``numba.prange`` (as many threads as
``numba.set_num_threads`` allows). Only the reduction stages are compiled with reassociation (``fastmath``
"reassoc", so that LLVM vectorises a float32 sum); the elementwise passes keep IEEE semantics. Loop indices start
at 0 on views of the fields: an index that LLVM cannot prove non-negative makes Numba emit its negative-index
wrap-around, and the loop is then compiled to gathers, ten times slower.
"""
from __future__ import annotations

import sympy

from bnsym.codegen.numba_plan import PlanNames, form, product
from bnsym.codegen.numba_text import Printer, docstring, plan_symbols, python_tuple, wrapper_head
from bnsym.codegen.plan import Accumulate, Assign, KernelPlan, Reduce
from bnsym.symbolic.naming import COUNT, REDUCER
from bnsym.symbolic.reduction import M, ParameterField

__all__ = ["NESTS", "StageLoopPrinter"]


#: The two loop nests of the fused loops (module docstring): groups side by side in every row, or contiguous runs.
NESTS = ("rows", "runs")
_NEST = "<nest>"  # where a driver's calls name the variant of its nest
_NEST_NOTES = {"rows": "Fields with inner == 1 (groups side by side in every row).",
               "runs": "Fields with inner > 1 (one contiguous run per row and group)."}

class StageLoopPrinter:
    """Renders a :class:`KernelPlan` as stage loops (module docstring): the Numba functions and a wrapper with the
    NumPy kernel's signature, or, for a plan the loops do not cover, the NumPy kernel itself."""

    def __init__(self, indent: str = "    "):
        self.indent = indent

    # ----- the whole kernel -----

    def render(self, plan: KernelPlan) -> str:
        """Source of the kernel's compiled functions and its wrapper (no trailing blank line)."""
        kinds = PlanNames(plan)
        reason = self._unsupported(plan, kinds)
        if reason:
            return self._delegate(plan, reason)
        parts = []
        stage = 0
        calls = []  # the driver's body
        group_lines: list[str] = []
        allocated: set[str] = set()
        statements = list(plan.statements)
        index = 0
        field_inputs = [n for n in kinds.inputs if n in kinds.every_field]
        first = field_inputs[0]
        while index < len(statements):
            statement = statements[index]
            if isinstance(statement, Assign):
                if statement.name.name in kinds.every_field:
                    pass  # an atom: computed inside the loops that read it
                elif statement.name.name in kinds.scalar_names:
                    self._flush(group_lines, calls)
                    calls.append(f"{statement.name.name} = {self._scalar(statement.expr)}")
                else:
                    name = statement.name.name
                    if name not in allocated:
                        calls.append(f"{name} = numpy.empty(groups, {first}.dtype)")
                        allocated.add(name)
                    group_lines.append(f"{name}[g] = {self._group(statement.expr, kinds)}")
                index += 1
            elif isinstance(statement, Reduce):
                self._flush(group_lines, calls)
                stage += 1
                function = f"_{plan.name}_stage{stage}"
                source, arguments = self._stage(function, plan, statement, kinds, stage)
                parts.append(source)
                names = ", ".join(n.name for n in statement.names)
                calls.append(f"{names}{',' if len(statement.names) == 1 else ''} = {function}_{_NEST}("
                             f"{', '.join(self._argument(a, kinds, first) for a in arguments)})")
                index += 1
            else:  # the field outputs: every Accumulate from here on, in one pass
                self._flush(group_lines, calls)
                outputs = [s for s in statements[index:] if isinstance(s, Accumulate)]
                if len(outputs) != len(statements) - index:
                    raise ValueError(f"{plan.name}: a statement follows the field outputs; the fused printer "
                                     "evaluates them last, in one pass")
                function = f"_{plan.name}_outputs"
                source, arguments = self._outputs(function, plan, outputs, kinds)
                parts.append(source)
                calls.append(f"{function}_{_NEST}({', '.join(self._argument(a, kinds, first) for a in arguments)})")
                index = len(statements)
        self._flush(group_lines, calls)
        field_outputs = [s.name for s in plan.returns if s.name in kinds.every_field]
        group_outputs = [s.name for s in plan.returns if s.name not in kinds.every_field]
        for name in group_outputs:
            if name not in allocated and name not in kinds.totals:
                raise ValueError(f"{plan.name}: the result {name} is neither a field nor a per-group value")
        calls.append(f"return {', '.join(group_outputs)}{',' if len(group_outputs) == 1 else ''}" if group_outputs
                     else "return")
        parts += [self._driver(plan, kinds, [line.replace(_NEST, nest) for line in calls], field_outputs, nest)
                  for nest in NESTS]
        parts.append(self._wrapper(plan, kinds, field_outputs, group_outputs))
        return "\n\n\n".join(parts)

    # ----- pieces -----

    @staticmethod
    def _unsupported(plan: KernelPlan, kinds: PlanNames) -> str | None:
        """Why the loops do not cover ``plan`` (it is then delegated to the NumPy kernel), or None."""
        if not any(n in kinds.every_field for n in kinds.inputs):
            return "it reads no field (only per-group values): nothing to fuse"
        if any(isinstance(s, Reduce) and s.over != "group" for s in plan.statements):
            return "it sums over the axes a parameter is shared on (parameter_sums), which these loops do not cover"
        if any(isinstance(symbol, ParameterField) for symbol in plan_symbols(plan)):
            return "it reads a parameter that varies within a group (of the parameters' shape, not per group)"
        return None

    def _delegate(self, plan: KernelPlan, reason: str) -> str:
        return f"# {plan.name}: the NumPy kernel, because {reason}.\n{plan.name} = numpy_kernels.{plan.name}"

    def _flush(self, group_lines: list[str], calls: list[str]) -> None:
        if group_lines:
            calls.append("for g in range(groups):")
            calls.extend(self.indent + line for line in group_lines)
            group_lines.clear()

    def _scalar(self, expr: sympy.Expr) -> str:
        return Printer({}, typed_numbers=False).doprint(expr)

    def _group(self, expr: sympy.Expr, kinds: PlanNames) -> str:
        names = {s.name: s.name if s.name in kinds.scalar_names else f"{s.name}[g]"
                 for s in expr.free_symbols if s != M}
        return Printer(names, typed_numbers=False).doprint(expr)

    def _argument(self, name: str, kinds: PlanNames, first: str) -> str:
        """How the driver passes ``name`` to a field loop: in the fields' dtype."""
        if name in kinds.totals:
            return f"{name}.astype({first}.dtype)"
        if name in kinds.scalar_names or name == COUNT:
            return f"{first}.dtype.type({name})"
        return name

    def _field_text(self, kinds: PlanNames, fields: list[str], groups: list[str], nest: str):
        """Symbol names inside the innermost loop of a nest: ``x_r[g]``/``mean[g]`` or ``x_p[i]``/``mean_g``."""
        if nest == "rows":
            names = {f: f"{f}_r[g]" for f in fields} | {v: f"{v}[g]" for v in groups}
        else:
            names = {f: f"{f}_p[i]" for f in fields} | {v: f"{v}_g" for v in groups}
        names.update({a: a for a in kinds.atoms})
        return names

    def _atom_lines(self, kinds: PlanNames, atoms: list[str], printer: Printer) -> list[str]:
        return [f"{a} = {printer.doprint(kinds.atoms[a])}" for a in atoms]

    def _stage(self, function: str, plan: KernelPlan, statement: Reduce, kinds: PlanNames, stage: int):
        """Stage ``stage``'s two variants, ``function``_rows and ``function``_runs (module docstring), and the
        arguments they take."""
        reads = kinds.read([f.name for term in statement.terms for f in term])
        fields = [n for n in reads if n in kinds.every_field]
        groups = [n for n in reads if n not in kinds.every_field]
        atoms = kinds.atoms_used([f.name for term in statement.terms for f in term])
        arguments = fields + groups
        first = fields[0]
        k = range(len(statement.terms))
        totals = [n.name for n in statement.names]
        described = ", ".join("*".join(f.name for f in term) for term in statement.terms)
        i = self.indent
        i2, i3 = i * 2, i * 3
        sources = []
        for nest in NESTS:
            lines = [
                "@numba.njit(cache=True, parallel=True, fastmath=REASSOCIATE)",
                f"def {function}_{nest}({', '.join(arguments)}):",
                *docstring(self.indent,
                           f"Stage {stage} of {plan.name}, one pass over the fields: the per-group totals "
                           f"(float64) of {described}. {_NEST_NOTES[nest]}"),
                f"{i}rows, groups, inner = {first}.shape",
                f"{i}dtype = {first}.dtype.type",
            ]
            nest_lines = self._stage_rows if nest == "rows" else self._stage_runs
            lines += [i + line for line in nest_lines(statement, kinds, fields, groups, atoms, k)]
            # Loops, not array expressions: Numba would make each of those a parallel region of its own, and waking
            # the threads for it costs more than the work (with OMP_WAIT_POLICY=PASSIVE, tens of microseconds each).
            lines += [f"{i}{name} = numpy.empty(groups)" for name in totals]
            lines += [f"{i}for g in range(groups):"] + [f"{i2}{name}[g] = 0.0" for name in totals]
            lines += [f"{i}for part in range(parts):", f"{i2}for g in range(groups):"]
            lines += [f"{i3}{name}[g] += part{j}[part, g]" for j, name in zip(k, totals)]
            lines += [f"{i}return {', '.join(totals)}{',' if len(totals) == 1 else ''}"]
            sources.append("\n".join(lines))
        return "\n\n\n".join(sources), arguments

    def _stage_rows(self, statement: Reduce, kinds: PlanNames, fields, groups, atoms, k) -> list[str]:
        """(rows, groups): sweep the rows; every group is accumulated side by side over BLOCK rows."""
        i = self.indent
        i2, i3 = i * 2, i * 3
        rows = Printer(self._field_text(kinds, fields, groups, "rows"), typed_numbers=True)
        first = fields[0]
        lines = [f"{f}_rows = {f}.reshape((rows, groups))" for f in fields]
        lines += ["parts = (rows + BLOCK - 1) // BLOCK"]
        lines += [f"part{j} = numpy.empty((parts, groups))" for j in k]
        lines += ["for part in numba.prange(parts):"]
        lines += [f"{i}block{j} = numpy.zeros(groups, {first}.dtype)" for j in k]
        lines += [f"{i}for row in range(part * BLOCK, min(rows, part * BLOCK + BLOCK)):"]
        lines += [f"{i2}{f}_r = {f}_rows[row]" for f in fields]
        lines += [f"{i2}for g in range(groups):"]
        lines += [f"{i3}{line}" for line in self._atom_lines(kinds, atoms, rows)]
        lines += [f"{i3}block{j}[g] += {rows.doprint(product(term))}" for j, term in zip(k, statement.terms)]
        lines += [f"{i}part{j}[part] = block{j}" for j in k]
        return lines

    def _stage_runs(self, statement: Reduce, kinds: PlanNames, fields, groups, atoms, k) -> list[str]:
        """(rows, groups, inner): one contiguous run of `inner` values per row and group, in pieces of RUN."""
        i = self.indent
        i2, i3 = i * 2, i * 3
        runs = Printer(self._field_text(kinds, fields, groups, "runs"), typed_numbers=True)
        first = fields[0]
        lines = ["parts = rows"]
        lines += [f"part{j} = numpy.empty((rows, groups))" for j in k]
        lines += ["for run in numba.prange(rows * groups):", f"{i}row = run // groups", f"{i}g = run % groups"]
        lines += [f"{i}{v}_g = {v}[g]" for v in groups]
        lines += [f"{i}total{j} = 0.0" for j in k]
        lines += [f"{i}for start in range(0, inner, RUN):"]
        lines += [f"{i2}{f}_p = {f}[row, g, start:start + RUN]" for f in fields]
        lines += [f"{i2}piece{j} = dtype(0)" for j in k]
        lines += [f"{i2}for i in range({first}_p.size):"]
        lines += [f"{i3}{line}" for line in self._atom_lines(kinds, atoms, runs)]
        lines += [f"{i3}piece{j} += {runs.doprint(product(term))}" for j, term in zip(k, statement.terms)]
        lines += [f"{i2}total{j} += piece{j}" for j in k]
        lines += [f"{i}part{j}[row, g] = total{j}" for j in k]
        return lines

    def _outputs(self, function: str, plan: KernelPlan, outputs: list[Accumulate], kinds: PlanNames):
        """The field outputs' two variants, ``function``_rows and ``function``_runs, and their arguments."""
        expressions = [form(s) for s in outputs]
        reads = kinds.read(expressions)
        fields = [n for n in reads if n in kinds.every_field]
        groups = [n for n in reads if n not in kinds.every_field]
        atoms = kinds.atoms_used([s.name for e in expressions for s in e.free_symbols])
        names = [s.name.name for s in outputs]
        arguments = fields + groups + names
        i = self.indent
        i2, i3, i4 = i * 2, i * 3, i * 4
        out = names[0]
        sources = []
        for nest in NESTS:
            printer = Printer(self._field_text(kinds, fields + names, groups, nest), typed_numbers=True)
            lines = [
                "@numba.njit(cache=True, parallel=True)",
                f"def {function}_{nest}({', '.join(arguments)}):",
                *docstring(self.indent,
                           f"The field outputs of {plan.name} ({', '.join(names)}), written in one pass. "
                           f"{_NEST_NOTES[nest]}"),
                f"{i}rows, groups, inner = {out}.shape",
                f"{i}dtype = {out}.dtype.type",
            ]
            if nest == "rows":
                lines += [f"{i}{f}_rows = {f}.reshape((rows, groups))" for f in fields + names]
                lines += [f"{i}for part in numba.prange((rows + BLOCK - 1) // BLOCK):",
                          f"{i2}for row in range(part * BLOCK, min(rows, part * BLOCK + BLOCK)):"]
                lines += [f"{i3}{f}_r = {f}_rows[row]" for f in fields + names]
                lines += [f"{i3}for g in range(groups):"]
                body = i4
            else:
                lines += [f"{i}for run in numba.prange(rows * groups):", f"{i2}row = run // groups",
                          f"{i2}g = run % groups"]
                lines += [f"{i2}{v}_g = {v}[g]" for v in groups]
                lines += [f"{i2}{f}_p = {f}[row, g]" for f in fields + names]
                lines += [f"{i2}for i in range(inner):"]
                body = i3
            lines += [f"{body}{line}" for line in self._atom_lines(kinds, atoms, printer)]
            lines += [f"{body}{printer.names[n]} = {printer.doprint(e)}" for n, e in zip(names, expressions)]
            sources.append("\n".join(lines))
        return "\n\n\n".join(sources), arguments

    def _driver(self, plan: KernelPlan, kinds: PlanNames, calls: list[str], field_outputs: list[str],
                nest: str) -> str:
        inputs = list(kinds.inputs) + ([COUNT] if REDUCER in plan.parameters or COUNT in plan.parameters else [])
        first = next(n for n in kinds.inputs if n in kinds.every_field)
        i = self.indent
        lines = [
            "@numba.njit(cache=True)",
            f"def _{plan.name}_{nest}({', '.join(inputs + field_outputs)}):",
            *docstring(self.indent,
                       f"{plan.name} on (rows, groups, inner) fields and (groups,) per-group values: writes "
                       f"{', '.join(field_outputs)} and returns the per-group results. {_NEST_NOTES[nest]}"),
            f"{i}groups = {first}.shape[1]",
        ]
        lines += [i + line for line in calls]
        return "\n".join(lines)

    def _wrapper(self, plan: KernelPlan, kinds: PlanNames, field_outputs: list[str], group_outputs: list[str]) -> str:
        i = self.indent
        fields = [n for n in kinds.inputs if n in kinds.every_field]
        groups = [n for n in kinds.inputs if n not in kinds.every_field]
        reducer = REDUCER if REDUCER in plan.parameters else "None"
        lines = wrapper_head(plan, i, "Compiled: one pass over memory per reduction stage and one for the field "
                             "outputs (bnsym.runtime.fused has the layouts); any other layout, reducer or sum "
                             "runs the NumPy kernel.")
        lines += [f"{i}layout = FusedLayout.of({reducer}, fields=({', '.join(fields)},), "
                  f"per_group={python_tuple(groups)})",
                  f"{i}if layout is None:",
                  f"{i}{i}return numpy_kernels.{plan.name}({', '.join(plan.parameters)})"]
        lines += [f"{i}{n} = layout.empty()" for n in field_outputs]
        arguments = [f"layout.fields({n})" if n in kinds.every_field else f"layout.per_group({n})"
                     for n in kinds.inputs]
        if REDUCER in plan.parameters:
            arguments.append(f"{REDUCER}.count")
        elif COUNT in plan.parameters:
            arguments.append(COUNT)
        arguments += [f"layout.fields({n})" for n in field_outputs]
        results = ", ".join(group_outputs)
        call = f"run_compiled(_{plan.name}_rows if layout.inner == 1 else _{plan.name}_runs, {', '.join(arguments)})"
        if group_outputs:
            lines.append(f"{i}{results}{',' if len(group_outputs) == 1 else ''} = {call}")
        else:
            lines.append(f"{i}{call}")
        returned = [n if n in field_outputs else f"layout.grouped({n})" for n in (s.name for s in plan.returns)]
        lines.append(f"{i}return {', '.join(returned)}")
        return "\n".join(lines)
