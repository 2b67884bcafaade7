"""Every regime in every run: each property that draws from the input regimes sees each of them at least once per
run (stratified, not left to the seed), and its margins show each regime's worst case.

The guarantee must not depend on the number of examples, so the runs here are short (two examples per property:
at most two regimes drawn by chance, the others by the stratification); each seed from 0 to 9 runs one layer's
correct implementation, so that every layer is seen at two seeds."""

import json

import numpy as np
import pytest

from bnsym.testing import CheckOptions
from bnsym.testing.adapters import Implementation
from bnsym.testing.definition_target import DefinitionTarget
from bnsym.testing.runner import run_properties
from bnsym.testing.strategies import LAYERS, layer_regimes
from bnsym.tools.cli import main
from tests.testing import zoo, zoo_family
from tests.testing.test_zoo_family import ZOO as FAMILY_ZOO

#: Properties that draw from fixed regimes, whatever the run's: float64_arithmetic (well-conditioned float64) and
#: batch norm's one_value_per_channel (well-conditioned and large offset, declared).
FIXED = {"float64_arithmetic": ("well-conditioned",), "one_value_per_channel": ("well-conditioned", "large offset")}


def _correct(layer):
    """The layer's two-pass NumPy implementation in the zoo, or for a layer the zoo has none of (Gemma's RMS norm,
    adaptive layer norm) its definition evaluated with torch."""
    if layer == "batch_norm":
        return zoo.TwoPass()
    if layer in zoo_family.TWO_PASS:
        return zoo_family.TWO_PASS[layer]()
    return DefinitionTarget(layer)


@pytest.mark.parametrize("seed", range(10))
def test_every_regime_is_in_every_propertys_margins(seed):
    layer = LAYERS[seed % len(LAYERS)]
    report = run_properties(Implementation.wrap(_correct(layer), layer=layer), dtype=np.dtype("float32"),
                            max_examples=2, seed=seed, options=CheckOptions(layer=layer))
    assert report.ok, str(report)
    for result in report.results:
        if not result.margins:
            continue  # compares no number (shapes, dtypes, inputs not modified)
        expected = set(FIXED.get(result.name, layer_regimes(layer)))
        missing = expected - set(result.margins)
        assert not missing, (f"{layer} seed {seed}: {result.name} ({result.examples} examples) has no margin for "
                             f"{sorted(missing)}: {result.margins}")


def test_the_json_margins_name_every_regime_with_the_drawn_ones_only_when_regimes_are_chosen(tmp_path, capsys):
    """`--shards`-free analogue of the issue's case: a short run still shows every regime's worst case in the JSON,
    and a run restricted to two regimes shows those two only."""
    path = tmp_path / "result.json"
    status = main(["check", f"{FAMILY_ZOO}:LayerNorm", "--layer", "layer_norm", "--max-examples", "2", "--seed", "2",
                   "--property", "forward_reference", "--json", str(path)])
    assert status == 0, capsys.readouterr().out
    (forward,) = json.loads(path.read_text())["properties"]
    assert set(forward["margin"]["per_regime"]) == set(layer_regimes("layer_norm")), forward["margin"]
    status = main(["check", f"{FAMILY_ZOO}:LayerNorm", "--layer", "layer_norm", "--max-examples", "2",
                   "--property", "forward_reference", "--regime", "large offset", "--regime", "constant group",
                   "--json", str(path)])
    assert status == 0, capsys.readouterr().out
    (forward,) = json.loads(path.read_text())["properties"]
    assert set(forward["margin"]["per_regime"]) == {"large offset", "constant group"}, forward["margin"]


def test_every_sharded_property_sees_every_regime_at_every_seed():
    """`--shards 3 --seed 2` once drew no large-offset example in 50; five examples per property now see all seven
    regimes (batch norm's and shards with different means) at every seed."""
    from bnsym.testing.sharded import ShardedImplementation, sharded_regimes
    from tests.testing.zoo_sharded import TwoRounds

    regimes = sharded_regimes("batch_norm")
    for seed in range(10):
        report = run_properties(ShardedImplementation.wrap(TwoRounds()), dtype=np.dtype("float64"), seed=seed,
                                max_examples=5, options=CheckOptions(shards=3))
        assert report.passed and not report.failed, str(report)
        assert sum(bool(r.margins) for r in report.results) >= 3, str(report)  # forward, backward, gradients
        for result in report.results:
            if result.status == "passed" and result.margins:  # none: compares no number (shapes, inputs)
                missing = set(regimes) - set(result.margins)
                assert not missing, f"seed {seed}: {result.name} never drew {sorted(missing)}"
