"""The public surface of bnsym.testing and bnsym.testing.strategies is pinned, alphabetised and documented."""

import ast
from pathlib import Path

import bnsym.testing
import bnsym.testing.strategies
from bnsym.testing.adapters import SIGNATURES
from bnsym.testing.properties import PROPERTIES, registry
from bnsym.testing.protocols import protocol
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
    assert set(bnsym.testing.PROPERTIES) == set(registry("batch_norm"))
    assert protocol("batch_norm").signatures == SIGNATURES  # batch norm's protocol is the one adapters documents
    for layer in bnsym.testing.LAYERS:
        assert bnsym.testing.properties_of(layer) == tuple(registry(layer))
        for prop in registry(layer).values():
            assert prop.group in groups, prop.name
            # A property calls one protocol: the layer's, or (for a layer whose groups span samples) the sharded one.
            protocols = [set(protocol(layer).signatures)] + ([set(signatures(layer))] if shardable(layer) else [])
            assert prop.needs and any(prop.needs <= methods for methods in protocols), \
                f"{prop.name} needs {prop.needs}"
            assert prop.description and prop.description != prop.name
            assert prop.selected_by, f"{prop.name} does not say which options select it"


def test_check_failed_is_an_assertion_error():
    assert issubclass(bnsym.testing.CheckFailed, AssertionError)


def _registered_checks() -> list[str]:
    """The functions of bnsym/testing that a ``register(...)`` call decorates: the property implementations."""
    found = []
    for path in sorted(Path(bnsym.testing.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                for decorator in node.decorator_list:
                    if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "").endswith("register"):
                        found.append(f"{path.name}:{node.name}")
    return found


def test_each_property_is_written_once_for_every_layer():
    """One property library: as many property implementations in bnsym/testing as distinct property names (none
    written twice, for two kinds of layers; the sharded mode's are names of the same library), and every layer's
    properties are those implementations."""
    implementations = _registered_checks()
    assert len(implementations) == len(PROPERTIES), (len(implementations), len(PROPERTIES), implementations)
    assert len({prop.check for prop in PROPERTIES.values()}) == len(PROPERTIES), "a check serves two names"
    for layer in bnsym.testing.LAYERS:
        assert all(registry(layer)[name] is PROPERTIES[name] for name in registry(layer)), layer


def test_no_module_of_the_checker_compares_a_layer_name():
    """Behaviour comes from the layer's spec: bnsym/testing names a layer only as the default (and the sharded
    check, a data-parallel batch norm, and the table of framework calls, which are data)."""
    allowed = {"protocols.py": 1, "adapters.py": 5, "sharded.py": None, "sharded_adapters.py": None}
    names = ("batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm")
    for path in sorted(Path(bnsym.testing.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        literals = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in names]
        limit = allowed.get(path.name, 0)
        if limit is not None:
            assert len(literals) <= limit, f"{path.name} names layers {literals}"
