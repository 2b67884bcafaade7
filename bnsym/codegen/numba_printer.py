"""The compiled-CPU (Numba) backend's printer: for each kernel plan, the loop strategies that run it, chosen here.

Four strategies, each a printer paired with the runtime layout of :mod:`bnsym.runtime.fused` whose arrays its loops
take (:data:`STRATEGIES`; the group-local printer serves two):

* **stage loops** (:mod:`bnsym.codegen.numba_stages`, ``FusedLayout``): one pass over memory per stage of sums, for
  groups that span the batch (batch norm);
* **group-local loops** (:mod:`bnsym.codegen.numba_local`, ``GroupLocalLayout``): one group finished while it is in
  cache, for groups that are contiguous runs (layer and RMS norm, group and instance norm on channel-first input),
  and for any plan that reads a parameter varying within a group or sums a parameter's gradient;
* **sample-wise loops** (:mod:`bnsym.codegen.numba_interleaved`, ``InterleavedLayout``): one sample at a time with
  its groups side by side, for groups that interleave on channel-last input (group and instance norm);
* **group-local loops over per-sample parameter rows** (:mod:`bnsym.codegen.numba_local` with ``sample_rows``,
  ``SampleLocalLayout``): the group-local loops, one parameter row (a sample's groups) per parallel iteration and
  its gradients summed per row, for parameters of one row per sample (adaptive layer norm); the only strategy
  such a layer gets.

:class:`NumbaPlanPrinter` chooses from the layer's declaration (``per_sample``, ``channel_axis``,
``parameter_per_value``, ``sample_parameters``) and the plan; a kernel whose groups lie within one sample gets the
group-local loops and, with a channel axis, the sample-wise ones too, and its wrapper tries them in that order
before the NumPy kernel.
The printers share :mod:`bnsym.codegen.numba_text` and :mod:`bnsym.codegen.numba_plan` and never import each
other; only this module knows all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from bnsym.codegen.numba_interleaved import InterleavedPrinter
from bnsym.codegen.numba_local import NESTS as LOCAL_NESTS
from bnsym.codegen.numba_local import GroupLocalPrinter
from bnsym.codegen.numba_plan import PlanNames
from bnsym.codegen.numba_stages import StageLoopPrinter
from bnsym.codegen.numba_text import CompiledLoops, module_prelude, python_tuple, reads_parameters, wrapper_head
from bnsym.codegen.plan import KernelPlan
from bnsym.symbolic.naming import REDUCER

__all__ = ["GROUP_LOCAL", "SAMPLE_LOCAL", "SAMPLE_WISE", "STAGES", "STRATEGIES", "NumbaPlanPrinter", "Strategy",
           "module_prelude"]


@dataclass(frozen=True)
class Strategy:
    """One way of compiling a kernel: its ``printer``, the runtime ``layout`` (a class of :mod:`bnsym.runtime.fused`)
    whose arrays its loops take, and what it ``covers``, in the words of the generated wrapper's docstring."""

    name: str
    printer: type
    layout: str
    covers: str


STAGES = Strategy("stage loops", StageLoopPrinter, "FusedLayout",
                  "one pass over memory per reduction stage and one for the field outputs")
GROUP_LOCAL = Strategy("group-local loops", GroupLocalPrinter, "GroupLocalLayout",
                       "each group's stages and outputs one after another while the group is in cache "
                       "(bnsym.codegen.numba_local)")
SAMPLE_WISE = Strategy("sample-wise loops", InterleavedPrinter, "InterleavedLayout",
                       "on channel-last input, one sample at a time with its groups side by side "
                       "(bnsym.codegen.numba_interleaved)")
SAMPLE_LOCAL = Strategy("group-local loops over the rows of per-sample parameters", GroupLocalPrinter,
                        "SampleLocalLayout",
                        "each group's stages and outputs one after another while the group is in cache, the groups "
                        "of one parameter row (a sample) in one parallel iteration (bnsym.codegen.numba_local)")
STRATEGIES = (STAGES, GROUP_LOCAL, SAMPLE_WISE, SAMPLE_LOCAL)


class NumbaPlanPrinter:
    """Renders a :class:`KernelPlan` as the Numba functions of its strategies and a wrapper with the NumPy
    kernel's signature (module docstring)."""

    def __init__(self, indent: str = "    ", per_sample: bool = False, channel_axis: bool = False,
                 parameter_per_value: bool = False, sample_parameters: bool = False):
        """``per_sample``: every group of the layer lies within one sample, so every plan that the group-local
        loops cover gets them (not only those that read a parameter varying within a group or sum a parameter);
        ``channel_axis``: the layer's groups interleave on channel-last input, so the sample-wise loops are added
        for that layout; ``parameter_per_value``: a parameter has one value per value of a group, so the
        group-local loops need their flat nest only; ``sample_parameters``: the parameters hold one row per sample
        (adaptive norms), so the group-local loops run over the parameter rows (``SAMPLE_LOCAL``: their parameter
        sums are per row, where the other loops' (blocks, P, Q) partials would grow with the square of the batch),
        and a kernel they do not cover runs its NumPy kernel (the other strategies would read one parameter row
        for every sample)."""
        self.indent = indent
        self.sample_parameters = sample_parameters
        self.per_sample = per_sample
        self.channel_axis = channel_axis
        self.parameter_per_value = parameter_per_value

    def strategies(self, plan: KernelPlan) -> tuple[Strategy, ...]:
        """The strategies that run ``plan``, in the order its wrapper tries them: the one place that chooses."""
        # Parameters that vary within a group and parameter sums: the group-local loops cover them for groups that
        # are contiguous runs. Groups within a sample: a group in cache is cheaper than a pass over memory per
        # stage, so they take every such plan.
        if self.sample_parameters:  # only loops that pick the row of the group's sample (docstring of __init__)
            return (SAMPLE_LOCAL,) if GroupLocalPrinter.unsupported(plan) is None else ()
        if (reads_parameters(plan) or self.per_sample) and GroupLocalPrinter.unsupported(plan) is None:
            return (GROUP_LOCAL, SAMPLE_WISE) if self.per_sample and self.channel_axis else (GROUP_LOCAL,)
        return (STAGES,)

    def render(self, plan: KernelPlan) -> str:
        """Source of the kernel's compiled functions and its wrapper (no trailing blank line)."""
        chosen = self.strategies(plan)
        if not chosen:
            return (f"# {plan.name}: the NumPy kernel, because the parameters hold one row per sample and the\n"
                    f"# group-local loops over their rows do not cover it ({GroupLocalPrinter.unsupported(plan)}).\n"
                    f"{plan.name} = numpy_kernels.{plan.name}")
        if chosen == (STAGES,):  # the stage loops write their own wrapper (one layout, FusedLayout)
            return STAGES.printer(self.indent).render(plan)
        loops = [self._printer(strategy).render(plan) for strategy in chosen]
        return "\n\n\n".join([loop.source for loop in loops] + [self._wrapper(plan, chosen, loops)])

    def _printer(self, strategy: Strategy):
        if strategy is GROUP_LOCAL:
            return GroupLocalPrinter(self.indent, nests=("flat",) if self.parameter_per_value else LOCAL_NESTS)
        if strategy is SAMPLE_LOCAL:
            return GroupLocalPrinter(self.indent, sample_rows=True)
        return strategy.printer(self.indent)

    def _wrapper(self, plan: KernelPlan, chosen: tuple[Strategy, ...], loops: list[CompiledLoops]) -> str:
        """The wrapper with the NumPy kernel's signature: each strategy's loops for its layout, in order, and the
        NumPy kernel for anything else."""
        i = self.indent
        names = PlanNames(plan)
        per_group = [n for n in names.inputs if n not in names.fields + names.parameters]
        covers = ", or, ".join(strategy.covers for strategy in chosen)
        lines = wrapper_head(plan, i, f"Compiled: {covers}; any other layout or reducer runs the NumPy kernel.")
        of = (f"{REDUCER}, fields={python_tuple(names.fields)}, per_group={python_tuple(per_group)}, "
              f"parameters={python_tuple(names.parameters)}")
        for strategy, loop in zip(chosen, loops):
            lines += [f"{i}layout = {strategy.layout}.of({of})", f"{i}if layout is not None{loop.condition}:"]
            lines += self._call(plan, names, loop.driver, loop.shape, loop.parameter_outputs)
        lines += [f"{i}return numpy_kernels.{plan.name}({', '.join(plan.parameters)})"]
        return "\n".join(lines)

    def _call(self, plan: KernelPlan, names: PlanNames, function: str, shape: list[str],
              parameter_outputs: bool = False) -> list[str]:
        """The wrapper's lines (inside its ``if``) that call ``function`` with the arrays arranged by the layout
        object ``layout`` of the generated code and ``shape`` (what the function takes after M), and return its
        results as the NumPy kernel does. ``parameter_outputs``: the function fills parameter results that the
        wrapper allocates (:class:`CompiledLoops`)."""
        i2 = self.indent * 2
        results = [s.name for s in plan.returns if s.name not in names.outputs]
        filled = [n for n in results if n not in names.group_results] if parameter_outputs else []
        lines = [f"{i2}{n} = layout.empty()" for n in names.outputs]
        lines += [f"{i2}{n} = layout.parameter_empty()" for n in filled]
        arguments = [f"layout.fields({n})" if n in names.fields else
                     f"layout.parameter({n})" if n in names.parameters else f"layout.per_group({n})"
                     for n in names.inputs]
        arguments += [f"{REDUCER}.count", *shape] + [f"layout.fields({n})" for n in names.outputs] + filled
        call = f"run_compiled({function}, {', '.join(arguments)})"
        lines.append(f"{i2}{', '.join(results)}{',' if len(results) == 1 else ''} = {call}" if results
                     else f"{i2}{call}")
        returned = [n if n in names.outputs else f"layout.grouped({n})" if n in names.group_results
                    else f"layout.parameter_result({n})" for n in (s.name for s in plan.returns)]
        return lines + [f"{i2}return {', '.join(returned)}"]
