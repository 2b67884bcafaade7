"""The running-statistics conventions as choices: data without SymPy, presets with independent choices, and the
generated updates of Chainer's and Haiku's conventions against step-by-step simulations of what those frameworks
do."""

import inspect
import subprocess
import sys

import numpy as np
import pytest

import bnsym
from bnsym.conventions import CONVENTIONS, Convention, matching


def test_import_bnsym_needs_no_sympy():
    code = "import sys, bnsym, bnsym.conventions; sys.exit('sympy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, "import bnsym imported SymPy" + result.stderr


def test_presets_and_their_choices():
    assert set(CONVENTIONS) == {"torch", "keras", "flax", "cumulative", "chainer", "haiku"}
    assert CONVENTIONS["chainer"].choices() == ("old", True, False)
    assert CONVENTIONS["haiku"].choices() == ("old", False, True)
    assert matching(CONVENTIONS["keras"]) == ["keras", "flax"]
    assert matching(Convention("mine", "new", False)) == []
    with pytest.raises(ValueError, match="momentum_weighs"):
        Convention("bad", "both", False)


def test_momentum_default_reads_well():
    assert "momentum='default'" in str(inspect.signature(bnsym.update_running_stats))


def _batch(rng, channels=3, count=5):
    x = rng.normal(2.0, 3.0, (count, channels))
    return x.mean(axis=0), x.var(axis=0), count


def test_chainer_weighs_the_old_value_by_decay_and_stores_the_unbiased_variance():
    rng = np.random.default_rng(0)
    running_mean, running_var = rng.normal(size=3), rng.uniform(1, 2, 3)
    mean, var, count = _batch(rng)
    decay = 0.7
    new_mean, new_var = bnsym.update_running_stats(running_mean, running_var, mean, var, count, momentum=decay,
                                                   convention="chainer")
    np.testing.assert_allclose(new_mean, decay * running_mean + (1 - decay) * mean, rtol=1e-14)
    np.testing.assert_allclose(new_var, decay * running_var + (1 - decay) * var * count / (count - 1), rtol=1e-14)


def test_haiku_is_the_zero_debiased_moving_average_of_its_hidden_state():
    """Haiku keeps hidden = decay hidden + (1 - decay) b from hidden = 0 and reports hidden / (1 - decay^n); bnsym
    updates the reported averages directly. Four batches of both must agree."""
    rng = np.random.default_rng(1)
    decay = 0.8
    hidden = np.zeros((2, 3))
    running = None
    for n in range(1, 5):
        mean, var, count = _batch(rng)
        hidden = decay * hidden + (1 - decay) * np.stack([mean, var])
        expected = hidden / (1 - decay**n)
        start = running if running is not None else (rng.normal(size=3), rng.uniform(size=3))  # ignored at n = 1
        running = bnsym.update_running_stats(*start, mean, var, count, momentum=decay, convention="haiku",
                                             num_batches_tracked=n)
        np.testing.assert_allclose(np.stack(running), expected, rtol=1e-13)


@pytest.mark.parametrize("kwargs, message", [
    ({"convention": "haiku", "momentum": 0.9}, "num_batches_tracked"),
    ({"convention": "haiku", "momentum": 1.0, "num_batches_tracked": 1}, "< 1"),
], ids=["haiku-no-counter", "haiku-momentum-1"])
def test_haiku_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bnsym.update_running_stats(np.zeros(2), np.ones(2), np.zeros(2), np.ones(2), 4, **kwargs)
