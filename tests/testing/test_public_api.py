"""The public surface of bnsym.testing and bnsym.testing.strategies is pinned, alphabetised and documented."""

import bnsym.testing
import bnsym.testing.strategies
from bnsym.testing.adapters import SIGNATURES
from bnsym.testing.properties import REGISTRIES, REGISTRY
from bnsym.testing.protocols import PROTOCOLS
from bnsym.testing.sharded import shardable, signatures


def test_public_names():
    assert bnsym.testing.__all__ == ["DEFAULT_MAX_EXAMPLES", "LAYERS", "PROPERTIES", "CheckFailed", "CheckOptions",
                                     "Implementation", "NothingChecked", "Report", "TargetError", "check_batchnorm",
                                     "check_normalization", "properties_of", "selected_regimes"]
    assert bnsym.testing.strategies.__all__ == ["CONSTANT_REGIMES", "DTYPES", "LAYERS", "LONG_GROUP_LENGTHS", "MIN_EPS",
                                        "REGIMES", "Example", "batch_norm_examples", "channel_shapes", "dtypes",
                                        "entry_count", "epsilons", "layer_examples", "layer_regimes",
                                        "layer_shape_pool", "long_shapes", "regimes", "shape_pool"]
    for module in (bnsym.testing, bnsym.testing.strategies):
        assert module.__all__ == sorted(module.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n))


def test_bnsym_testing_does_not_export_its_own_imports():
    """`from bnsym.testing import <tab>` offers the checker, not the names its module imported for itself."""
    stray = {"Path", "annotations", "bst", "FAILED"} & set(dir(bnsym.testing))
    assert not stray, f"bnsym.testing exposes its imports {sorted(stray)}"


def test_every_property_is_named_grouped_and_described():
    groups = {"structure", "reference", "standardisation", "gradients", "identities", "invariances", "eval",
              "running statistics", "second order", "sharded"}
    assert set(bnsym.testing.PROPERTIES) == set(REGISTRY)
    assert set(REGISTRIES) == set(bnsym.testing.LAYERS) == set(PROTOCOLS)
    assert PROTOCOLS["batch_norm"].signatures is SIGNATURES  # batch norm's protocol is the one adapters documents
    for layer, registry in REGISTRIES.items():
        assert bnsym.testing.properties_of(layer) == tuple(registry)
        for prop in registry.values():
            assert prop.group in groups, prop.name
            # A property calls one protocol: the layer's, or (for a layer whose groups span samples) the sharded one.
            protocols = [set(PROTOCOLS[layer].signatures)] + ([set(signatures(layer))] if shardable(layer) else [])
            assert prop.needs and any(prop.needs <= methods for methods in protocols), \
                f"{prop.name} needs {prop.needs}"
            assert prop.description and prop.description != prop.name
            assert prop.selected_by, f"{prop.name} does not say which options select it"


def test_check_failed_is_an_assertion_error():
    assert issubclass(bnsym.testing.CheckFailed, AssertionError)
