"""The public surface of bnsym.testing and bnsym.strategies is pinned, alphabetised and documented."""

import bnsym.strategies
import bnsym.testing
from bnsym.testing.properties import REGISTRY


def test_public_names():
    assert bnsym.testing.__all__ == ["DEFAULT_MAX_EXAMPLES", "PROPERTIES", "CheckFailed", "Implementation", "Report",
                                     "TargetError", "check_batchnorm"]
    assert bnsym.strategies.__all__ == ["DTYPES", "REGIMES", "Example", "batch_norm_examples", "channel_shapes",
                                        "dtypes", "epsilons", "regimes"]
    for module in (bnsym.testing, bnsym.strategies):
        assert module.__all__ == sorted(module.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n))


def test_every_property_is_named_grouped_and_described():
    groups = {"structure", "reference", "standardisation", "gradients", "identities", "invariances"}
    assert set(bnsym.testing.PROPERTIES) == set(REGISTRY)
    for prop in REGISTRY.values():
        assert prop.group in groups, prop.name
        assert prop.needs <= {"forward", "backward"} and "forward" in prop.needs
        assert prop.description and prop.description != prop.name


def test_check_failed_is_an_assertion_error():
    assert issubclass(bnsym.testing.CheckFailed, AssertionError)
