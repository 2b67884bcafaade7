"""What a layer is, in data: :class:`LayerSpec`, the one specification every part of bnsym reads.

A :class:`LayerSpec` says, with no SymPy, everything about a layer that is not its arithmetic:

* ``name`` (``bnsym.<name>``, ``bnsym/_generated/<name>.py``, ``derivations/<name>.md``, ``--layer <name>``),
  ``title`` (its name in a heading) and ``short`` (in a sentence);
* ``statistic``: ``"centred"`` (a mean and a biased variance: y = gamma * (x - mean) * invstd + beta) or ``"rms"``
  (a mean square, nothing centred, no beta: y = gamma * x * invrms). This names the parameters
  (:attr:`LayerSpec.parameters`) and the statistics the forward pass saves for the backward
  (:attr:`LayerSpec.saved`), and, unless ``forward`` says otherwise, the forward pass itself (the two standard ones
  are written in :mod:`bnsym.symbolic.layers`);
* ``forward``: None for the standard forward pass of ``statistic``; otherwise the layer's own, a function of the
  layer's symbols (:class:`bnsym.symbolic.layers.LayerSymbols`) returning its
  :class:`~bnsym.symbolic.program.Program` (inputs ``(x, *parameters, eps)``, outputs ``(y, *saved)``), or the
  text ``"package.module:function"`` naming one. The function imports SymPy and the engine inside its body, so that
  a declaration file imports with NumPy only; it is checked when the layer is derived
  (:mod:`bnsym.symbolic.checks`);
* ``neutral``: the value of each parameter that means "no parameter", which a public function uses when that
  parameter is None: by default gamma = 1 and beta = 0 (y is then the normalised input), but a layer that scales
  by ``1 + gamma`` (Gemma's RMS norm) says ``neutral={"gamma": 0}``. The derivation proves that y is the normalised
  input at these values;
* ``grouping`` (:mod:`bnsym.spec.groupings`): which values form a group, the options (``axis``, ``num_groups``),
  the parameters' placement and shape;
* ``eps``: the default eps of its public functions;
* ``running_statistics``: it keeps running statistics, so it has an eval mode and a running-statistics update;
* ``running``: which running statistics it keeps and which step of the forward pass each one averages (a running
  statistic's update is ``(1 - f) * running + f * step``, f the convention's weight of the batch): by default
  ``{"running_mean": "mean", "running_var": "var"}``; batch renormalisation keeps a running standard deviation,
  ``{"running_mean": "mean", "running_std": "sigma"}``;
* ``reads_running``: its training forward pass also *reads* the running statistics (before they are updated), as
  inputs that are not differentiated (batch renormalisation's r and d); without it they are only updated;
* ``scalars``: scalar options beyond eps, with their defaults (``{"r_max": 3.0, "d_max": 5.0}``): constants of the
  forward pass, one value for the whole call, never differentiated, passed by name to every function;
* ``inference``: eval mode, a function of the layer's symbols returning ``{step: value}``, the steps of the training
  forward pass that eval mode replaces (or its ``"package.module:function"``); None freezes each step of
  ``running`` to its running statistic (batch norm: mean to running_mean, var to running_var);
* ``single_value_error``: the message for a group of one value, which the layer refuses in training (as PyTorch
  does for batch and instance norm), or None;
* ``regimes``: the input regimes the checker draws from for it (:mod:`bnsym.testing.strategies` defines them);
* ``group``, ``statistics_over``, ``parameters_are``, ``conventions``: prose for its derivation document;
* ``field_inputs``: the names of inputs besides x that hold one value per element, shaped like x (fused residual
  add + RMS norm's ``residual``); they come after x: forward pass inputs ``(x, *field_inputs, *parameters, eps)``;
* ``field_outputs``: the names of outputs besides y that hold one value per element, shaped like x (fused residual
  add + RMS norm's ``h = x + residual``, the new residual stream); they come after y: outputs ``(y,
  *field_outputs, *saved)``. The backward pass takes one upstream gradient for each (``dy``, ``dh``) and returns
  one gradient for x and for each field input (``dx``, ``dresidual``) before the parameters';
* ``normalises``: the field whose groups are normalised (x_hat is that field's values normalised): ``"x"``, or one
  of ``field_outputs`` (``"h"``: the statistics are those of x + residual). The backward kernels read this field,
  not x, with the saved statistics;
* ``kernels_package``: the package of its generated modules (``<package>.<name>``, ``<name>_numba``,
  ``<name>_array_api``): ``bnsym._generated`` for the built-in layers, the user's own package for theirs.

The built-in layers are declared one per file in :mod:`bnsym.layers`; :mod:`bnsym.spec.layers` holds the table.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bnsym.spec.groupings import Grouping

__all__ = ["CENTRED_REGIMES", "CHANNEL_REGIMES", "RMS_REGIMES", "LayerSpec"]

#: The checker's input regimes (described in :mod:`bnsym.testing.strategies`), in the words of a layer whose group
#: is a channel (batch norm), of one whose group is a group, and of one that takes no mean (RMS norm).
CHANNEL_REGIMES = ("well-conditioned", "large offset", "variance near eps", "constant channel", "tiny batch",
                   "wide dynamic range")
CENTRED_REGIMES = ("well-conditioned", "large offset", "variance near eps", "constant group", "tiny group",
                   "wide dynamic range")
RMS_REGIMES = ("well-conditioned", "large offset", "mean square near eps", "constant group", "tiny group",
               "wide dynamic range")

#: For each kind of statistic: the parameters, the statistics the forward pass saves, and the value of each
#: parameter that means "no parameter" unless the specification says otherwise.
_STATISTICS = {"centred": (("gamma", "beta"), ("mean", "invstd"), {"gamma": 1, "beta": 0}),
               "rms": (("gamma",), ("invrms",), {"gamma": 1})}


@dataclass(frozen=True)
class LayerSpec:
    """One layer (module docstring)."""

    name: str
    title: str
    short: str
    statistic: str
    grouping: Grouping
    eps: float
    regimes: tuple[str, ...]
    group: str
    statistics_over: str
    parameters_are: str
    running_statistics: bool = False
    single_value_error: str | None = None
    conventions: tuple[str, ...] = ()
    kernels_package: str = "bnsym._generated"
    forward: Callable | str | None = None
    neutral: Mapping[str, float] | tuple[tuple[str, float], ...] = ()
    running: Mapping[str, str] | tuple[tuple[str, str], ...] = ()
    reads_running: bool = False
    scalars: Mapping[str, float] | tuple[tuple[str, float], ...] = ()
    inference: Callable | str | None = None
    field_inputs: tuple[str, ...] = ()
    field_outputs: tuple[str, ...] = ()
    normalises: str = "x"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"LayerSpec name must be a Python identifier (it names a module), got {self.name!r}")
        if self.statistic not in _STATISTICS:
            raise ValueError(f"LayerSpec {self.name!r}: statistic must be one of {sorted(_STATISTICS)}, got "
                             f"{self.statistic!r}")
        if not isinstance(self.grouping, Grouping):
            raise TypeError(f"LayerSpec {self.name!r}: grouping must be a bnsym.spec.Grouping (TrailingAxes, "
                            f"Channels, ChannelGroups, SampleChannels), got {type(self.grouping).__name__}")
        if self.running_statistics and not self.centred:
            raise ValueError(f"LayerSpec {self.name!r}: running statistics are a running mean and variance, which a "
                             f"{self.statistic!r} layer does not compute (running_statistics needs statistic "
                             "'centred')")
        self._check_function("forward", "a function of the layer's symbols returning its Program")
        self._check_function("inference", "a function of the layer's symbols returning {step: value} for eval mode")
        self._check_fields()
        if not self.plain and (self.running_statistics or self.scalars):
            # The protocols, eval mode and running statistics of a layer with field inputs or outputs are not
            # written yet: refuse the combination instead of checking or running it half.
            raise ValueError(f"LayerSpec {self.name!r}: a layer with field inputs or outputs "
                             f"({', '.join((*self.field_inputs, *self.field_outputs))}) cannot yet keep running "
                             "statistics or take scalar options")
        # Stored as sorted (name, value) pairs: a specification is a value, compared and hashed by its fields.
        object.__setattr__(self, "neutral", self._checked_neutral())
        object.__setattr__(self, "running", self._checked_running())
        object.__setattr__(self, "scalars", self._checked_scalars())

    def _check_function(self, field: str, what: str) -> None:
        function = getattr(self, field)
        if function is None or callable(function):
            return
        if isinstance(function, str):
            module, colon, name = function.partition(":")
            if colon and all(part.isidentifier() for part in module.split(".")) and name.isidentifier():
                return
        raise TypeError(f"LayerSpec {self.name!r}: {field} must be None (the standard one of a {self.statistic!r} "
                        f"layer), {what}, or \"package.module:function\" naming one; got {function!r}")

    def _checked_running(self) -> tuple[tuple[str, str], ...]:
        given = tuple(dict(self.running).items())
        if not self.running_statistics:
            if given or self.reads_running or self.inference is not None:
                raise ValueError(f"LayerSpec {self.name!r}: running, reads_running and inference describe running "
                                 "statistics, which the layer does not keep (running_statistics=False)")
            return ()
        if not given:
            return (("running_mean", "mean"), ("running_var", "var"))
        for name, step in given:
            if not (isinstance(name, str) and name.startswith("running_") and name.isidentifier()
                    and isinstance(step, str) and step.isidentifier()):
                raise ValueError(f"LayerSpec {self.name!r}: running maps a running statistic's name (running_...) "
                                 f"to the step of the forward pass it averages, got {name!r}: {step!r}")
        # The runtime, the checker and update_running_stats know a running mean and one running spread (a variance,
        # or batch renormalisation's standard deviation): refuse another shape here rather than deep inside them.
        if len(given) != 2 or given[0] != ("running_mean", "mean") or given[1][1] == "mean":
            raise ValueError(f"LayerSpec {self.name!r}: running must name two running statistics, "
                             f"running_mean (averaging the step mean) first and then one spread (running_var "
                             f"averaging var, or another name averaging another step), got {dict(given)}")
        return given

    def _checked_scalars(self) -> tuple[tuple[str, float], ...]:
        given = dict(self.scalars)
        taken = {"x", "eps", "backend", "training", *self.parameters, *self.grouping.option_names,
                 *(name for name, _ in self.running), *self.field_inputs, *self.field_outputs}
        for name, value in given.items():
            if not isinstance(name, str) or not name.isidentifier() or name in taken:
                raise ValueError(f"LayerSpec {self.name!r}: a scalar option's name must be an identifier that no "
                                 f"argument of the layer's functions already has, got {name!r}")
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"LayerSpec {self.name!r}: scalars[{name!r}] must be a real number (the option's "
                                f"default), got {value!r}")
        return tuple(given.items())

    def _check_fields(self) -> None:
        for what in ("field_inputs", "field_outputs"):
            names = getattr(self, what)
            if isinstance(names, str) or not isinstance(names, tuple) or not all(
                    isinstance(n, str) and n.isidentifier() for n in names):
                raise TypeError(f"LayerSpec {self.name!r}: {what} must be a tuple of names (Python identifiers), got "
                                f"{names!r}")
        taken = {"x", "y", "eps", *self.parameters, *self.saved, *self.options}
        declared = (*self.field_inputs, *self.field_outputs)
        clashing = sorted({n for n in declared if n in taken or declared.count(n) > 1})
        if clashing:
            raise ValueError(f"LayerSpec {self.name!r}: the field names {', '.join(clashing)} are taken (by x, y, eps, "
                             f"a parameter, a saved statistic, an option, or another field); name each field once")
        if self.normalises not in ("x", *self.field_outputs):
            raise ValueError(f"LayerSpec {self.name!r}: normalises must be 'x' or one of field_outputs "
                             f"{self.field_outputs}: the backward reads the normalised field, so the forward pass "
                             f"must return it; got {self.normalises!r}")

    def _checked_neutral(self) -> tuple[tuple[str, float], ...]:
        given = dict(self.neutral)
        undeclared = sorted(set(given) - set(self.parameters))
        if undeclared:
            raise ValueError(f"LayerSpec {self.name!r}: neutral gives a value for {', '.join(undeclared)}, which "
                             f"is not a parameter of a layer of statistic {self.statistic!r} (its parameters: "
                             f"{', '.join(self.parameters)})")
        for parameter, value in given.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"LayerSpec {self.name!r}: neutral[{parameter!r}] must be a real number (the value "
                                f"that {parameter}=None stands for), got {value!r}")
        return tuple(sorted(given.items()))

    @property
    def centred(self) -> bool:
        """The layer subtracts a mean (its y is unchanged when a constant is added to a group)."""
        return self.statistic == "centred"

    @property
    def parameters(self) -> tuple[str, ...]:
        """The trainable parameters: ("gamma", "beta"), or ("gamma",) for a layer with no shift."""
        return _STATISTICS[self.statistic][0]

    @property
    def saved(self) -> tuple[str, ...]:
        """The statistics the forward pass returns after y, for the backward: ("mean", "invstd") or ("invrms",)."""
        return _STATISTICS[self.statistic][1]

    @property
    def inputs(self) -> tuple[str, ...]:
        """The per-element inputs: ``("x", *field_inputs)``."""
        return ("x", *self.field_inputs)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The per-element outputs: ``("y", *field_outputs)``."""
        return ("y", *self.field_outputs)

    @property
    def plain(self) -> bool:
        """x in, y out: no field inputs or outputs besides them (every textbook layer)."""
        return not self.field_inputs and not self.field_outputs

    @property
    def neutral_values(self) -> dict[str, float]:
        """Each parameter's value that means "no parameter" (what None stands for): the standard ones of the
        statistic (gamma = 1, beta = 0), with the specification's ``neutral`` over them."""
        return {**_STATISTICS[self.statistic][2], **dict(self.neutral)}

    @property
    def running_names(self) -> tuple[str, ...]:
        """The running statistics it keeps, in the order its functions take them (() without running statistics)."""
        return tuple(name for name, _ in self.running)

    @property
    def scalar_defaults(self) -> dict[str, float]:
        """Its scalar options beyond eps and their defaults, in the order its functions take them."""
        return dict(self.scalars)

    @property
    def constant_names(self) -> tuple[str, ...]:
        """The arguments of its training functions that are never differentiated, in order: the running statistics
        its training forward reads (``reads_running``), then its scalar options (``scalars``)."""
        return (*(self.running_names if self.reads_running else ()), *self.scalar_defaults)

    @property
    def options(self) -> tuple[str, ...]:
        """The names of the layer's options (``axis``, ``num_groups``), in the order its functions take them."""
        return self.grouping.option_names

    @property
    def kernels_module(self) -> str:
        """The module of its generated NumPy kernels (the compiled and array-API ones add ``_numba``,
        ``_array_api``)."""
        return f"{self.kernels_package}.{self.name}"

    @property
    def min_ndim(self) -> int:
        return self.grouping.min_ndim

    def layout(self, shape: tuple[int, ...], **options):
        """The :class:`~bnsym.spec.layout.GroupLayout` of x of ``shape`` under the layer's ``options``."""
        return self.grouping.layout(tuple(shape), **options)
