"""The public surface of bnsym.testing and bnsym.strategies is pinned, alphabetised and documented."""

import bnsym.strategies
import bnsym.testing
from bnsym.testing.adapters import SIGNATURES
from bnsym.testing.properties import REGISTRY


def test_public_names():
    assert bnsym.testing.__all__ == ["DEFAULT_MAX_EXAMPLES", "PROPERTIES", "CheckFailed", "CheckOptions",
                                     "Implementation", "NothingChecked", "Report", "TargetError", "check_batchnorm",
                                     "selected_regimes"]
    assert bnsym.strategies.__all__ == ["DTYPES", "REGIMES", "Example", "batch_norm_examples", "channel_shapes",
                                        "dtypes", "epsilons", "regimes", "shape_pool"]
    for module in (bnsym.testing, bnsym.strategies):
        assert module.__all__ == sorted(module.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n))


def test_every_property_is_named_grouped_and_described():
    groups = {"structure", "reference", "standardisation", "gradients", "identities", "invariances", "eval",
              "running statistics", "second order"}
    assert set(bnsym.testing.PROPERTIES) == set(REGISTRY)
    for prop in REGISTRY.values():
        assert prop.group in groups, prop.name
        assert prop.needs and prop.needs <= set(SIGNATURES), f"{prop.name} needs {prop.needs}"
        assert prop.description and prop.description != prop.name
        assert prop.selected_by, f"{prop.name} does not say which options select it"


def test_check_failed_is_an_assertion_error():
    assert issubclass(bnsym.testing.CheckFailed, AssertionError)
