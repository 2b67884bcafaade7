"""How many examples the suite's property checks draw: every budget the suite's cost depends on, in one place.

A budget is the ``max_examples`` of a check (examples per property, :func:`bnsym.testing.check_normalization`) or
of ``bnsym check --max-examples``. Each is as small as its test allows, no smaller:

* a planted bug must still be caught, by name, by every property listed for it: the zoo tests
  (tests/testing/test_zoo*.py) fail and name the property that missed the bug when a budget is too small for it;
* a correct implementation must still meet every property on enough examples of every regime for a false alarm
  to show (the runner adds one example of each regime the draws missed, whatever the budget).

The cost of the suite is about proportional to these numbers (a whole-library check of a correct implementation
runs every property on every example; a planted bug stops at its first failure and is then shrunk). Tests of the
checker's plumbing (options, reports, exit codes), whose subject is not what the examples find, use ``PLUMBING``.
Budgets written into files that are not listed here: the Hypothesis tests of the strategies, whose budgets are
part of what they assert (how often a regime is drawn).

The budgets are sized for the suite to run in minutes (README); a check draws the same examples on every run (those
of its seed, 0 unless the test passes one). ``HYPOTHESIS_PROFILE=thorough`` (tests/conftest.py) multiplies every
budget here by :data:`SCALE`, for a change to the checker, a strategy or a layer, where more of the input space is
worth the time.
"""

import os

#: The factor on every budget below but PLUMBING: 1, or 4 under ``HYPOTHESIS_PROFILE=thorough``.
SCALE = 4 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 1

#: A correct training forward and backward against the whole library (tests/testing/test_zoo.py), float32 and
#: float64; float16 draws fewer (its examples are the costliest: float64 references of float16 arithmetic).
CORRECT = 15 * SCALE
CORRECT_FLOAT16 = 10 * SCALE

#: A correct layer's eval mode, running statistics and double backward, with every property of them
#: (tests/testing/test_zoo_layer.py), and `bnsym check torch` with each option.
CORRECT_LAYER = 8 * SCALE

#: The family's correct implementations (tests/testing/test_zoo_family.py): the NumPy two-pass and bnsym's default
#: backend, bnsym through each backend named, and torch and jax on the run's three smallest shapes.
CORRECT_FAMILY = 8 * SCALE
CORRECT_FAMILY_BACKEND = 6 * SCALE
CORRECT_FRAMEWORK = 5 * SCALE

#: A correct sharded implementation against the sharded properties (tests/testing/test_zoo_sharded.py).
CORRECT_SHARDED = 20 * SCALE
#: The same with the shards in processes of their own (bnsym-torch's gloo workers, JAX's host devices), where
#: every example is a round of collectives between processes (tests/testing/test_sharded_adapters.py).
CORRECT_SHARDED_PROCESSES = 8 * SCALE

#: bnsym's own compiled backend against the whole library, both layouts, three dtypes; the other backends with
#: fewer (they run the same derivation; tests/test_backends.py compares them with the NumPy kernels element by
#: element).
COMPILED = 10 * SCALE
OTHER_BACKENDS = 5 * SCALE

#: A planted bug of the rest of the layer (eval mode, running statistics, double backward) or of a sharded
#: implementation, through the Python API; the planted training bugs run at the checker's default (50).
LAYER_BUG = 30 * SCALE
SHARDED_BUG = 40 * SCALE

#: A planted bug through `bnsym check` (the command line), one property each.
COMMAND_LINE = 20 * SCALE

#: The same planted bug checked in a child process and in the caller's (tests/testing/test_isolation.py).
ISOLATED = 20 * SCALE

#: Tests of the checker's plumbing: options, reports, exit codes.
PLUMBING = 5  # not scaled: what these tests assert does not depend on the examples

#: A planted bug of a variant (Gemma's RMS norm, adaptive layer norm, ...: tests/testing/test_zoo_variants.py),
#: its named properties only, and a variant's correct implementations against every property of their layer.
VARIANT_BUG = 20 * SCALE
CORRECT_VARIANT = 8 * SCALE
