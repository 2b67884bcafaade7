"""Every bad input to layer, RMS, group and instance norm gets a clear ValueError or TypeError naming the argument
and the shapes, raised by bnsym's validation before any arithmetic (never from inside NumPy)."""

import numpy as np
import pytest

import bnsym

RNG = np.random.default_rng(0)

# Layer norm and RMS norm: x (4, 3, 5) normalised over the last axis; rows (4, 3).
LX = RNG.normal(size=(4, 3, 5))
LGAMMA, LBETA, LROW = np.ones(5), np.zeros(5), np.ones((4, 3))
# Group norm: x (2, 6, 3), 3 groups of 2 channels; statistics (2, 3). Instance norm: x (2, 3, 4); statistics (2, 3).
GX, GGAMMA, GBETA, GSTAT = RNG.normal(size=(2, 6, 3)), np.ones(6), np.zeros(6), np.ones((2, 3))
IX, IGAMMA, IBETA, ISTAT = RNG.normal(size=(2, 3, 4)), np.ones(3), np.zeros(3), np.ones((2, 3))


def call(function, **arguments):
    def run():
        return function(**arguments)

    run.target = function  # for the coverage test below
    return run


def layer(verb, **changes):
    defaults = {
        "forward": dict(x=LX, gamma=LGAMMA, beta=LBETA, eps=1e-5, axis=-1),
        "backward": dict(dy=LX, x=LX, gamma=LGAMMA, mean=LROW, invstd=LROW, axis=-1),
        "double_backward": dict(ggx=LX, gggamma=LGAMMA, ggbeta=LBETA, dy=LX, x=LX, gamma=LGAMMA, mean=LROW,
                                invstd=LROW),
        "jvp": dict(x=LX, gamma=LGAMMA, beta=LBETA, tx=LX, tgamma=LGAMMA, tbeta=LBETA),
    }
    return call(getattr(bnsym.layer_norm, verb), **(defaults[verb] | changes))


def rms(verb, **changes):
    defaults = {
        "forward": dict(x=LX, gamma=LGAMMA, eps=1e-6, axis=-1),
        "backward": dict(dy=LX, x=LX, gamma=LGAMMA, invrms=LROW),
        "double_backward": dict(ggx=LX, gggamma=LGAMMA, dy=LX, x=LX, gamma=LGAMMA, invrms=LROW),
        "jvp": dict(x=LX, gamma=LGAMMA, tx=LX, tgamma=LGAMMA),
    }
    return call(getattr(bnsym.rms_norm, verb), **(defaults[verb] | changes))


def group(verb, **changes):
    defaults = {
        "forward": dict(x=GX, gamma=GGAMMA, beta=GBETA, num_groups=3, eps=1e-5, axis=1),
        "backward": dict(dy=GX, x=GX, gamma=GGAMMA, mean=GSTAT, invstd=GSTAT, num_groups=3),
        "double_backward": dict(ggx=GX, gggamma=GGAMMA, ggbeta=GBETA, dy=GX, x=GX, gamma=GGAMMA, mean=GSTAT,
                                invstd=GSTAT, num_groups=3),
        "jvp": dict(x=GX, gamma=GGAMMA, beta=GBETA, tx=GX, tgamma=GGAMMA, tbeta=GBETA, num_groups=3),
    }
    return call(getattr(bnsym.group_norm, verb), **(defaults[verb] | changes))


def instance(verb, **changes):
    defaults = {
        "forward": dict(x=IX, gamma=IGAMMA, beta=IBETA, eps=1e-5, axis=1),
        "backward": dict(dy=IX, x=IX, gamma=IGAMMA, mean=ISTAT, invstd=ISTAT),
        "double_backward": dict(ggx=IX, gggamma=IGAMMA, ggbeta=IBETA, dy=IX, x=IX, gamma=IGAMMA, mean=ISTAT,
                                invstd=ISTAT),
        "jvp": dict(x=IX, gamma=IGAMMA, beta=IBETA, tx=IX, tgamma=IGAMMA, tbeta=IBETA),
    }
    return call(getattr(bnsym.instance_norm, verb), **(defaults[verb] | changes))


CASES = [
    # (id, call, error type, words the message must contain)
    # layer norm: parameters and axes
    ("layer-gamma-wrong-shape", layer("forward", gamma=np.ones(4)), ValueError,
     ["gamma", "(5,)", "(4,)", "normalised shape", "(4, 3, 5)"]),
    ("layer-gamma-for-two-axes", layer("forward", axis=(-2, -1)), ValueError, ["gamma", "(3, 5)", "(5,)"]),
    ("layer-gamma-2d-for-one-axis", layer("forward", gamma=np.ones((3, 5))), ValueError, ["gamma", "(3, 5)"]),
    ("layer-beta-wrong-shape", layer("forward", beta=np.zeros(2)), ValueError, ["beta", "(5,)", "(2,)"]),
    ("layer-gamma-integer", layer("forward", gamma=np.ones(5, dtype=np.int32)), TypeError, ["gamma", "int32"]),
    ("layer-axis-not-trailing", layer("forward", axis=1, gamma=np.ones(3)), ValueError,
     ["axis 1", "trailing", "(4, 3, 5)", "(2,)"]),
    ("layer-axes-not-trailing", layer("forward", axis=(0, 2)), ValueError, ["axis (0, 2)", "trailing", "(1, 2)"]),
    ("layer-axis-out-of-range", layer("forward", axis=3), ValueError, ["axis 3", "out of range", "(4, 3, 5)"]),
    ("layer-axis-negative-out-of-range", layer("forward", axis=(-4, -1)), ValueError, ["axis -4", "(4, 3, 5)"]),
    ("layer-axis-twice", layer("forward", axis=(-1, 2)), ValueError, ["axis (-1, 2)", "twice"]),
    ("layer-axis-empty", layer("forward", axis=()), ValueError, ["axis", "at least one axis"]),
    ("layer-axis-float", layer("forward", axis=-1.0), TypeError, ["axis", "float"]),
    ("layer-axis-string-in-tuple", layer("forward", axis=(-1, "0")), TypeError, ["axis", "str"]),
    # layer norm: eps, x, empty groups
    ("layer-eps-zero", layer("forward", eps=0.0), ValueError, ["eps", "0"]),
    ("layer-eps-negative", layer("forward", eps=-1e-5), ValueError, ["eps", "-1e-05"]),
    ("layer-eps-nan", layer("forward", eps=float("nan")), ValueError, ["eps", "nan"]),
    ("layer-eps-string", layer("forward", eps="1e-5"), TypeError, ["eps", "str"]),
    ("layer-eps-zero-in-float32", layer("forward", x=LX.astype(np.float32), eps=1e-50), ValueError,
     ["eps", "float32"]),
    ("layer-x-integer", layer("forward", x=LX.astype(np.int64)), TypeError, ["x", "int64", "(4, 3, 5)"]),
    ("layer-x-complex", layer("forward", x=LX.astype(np.complex128)), TypeError, ["x", "complex128"]),
    ("layer-x-longdouble", layer("forward", x=LX.astype(np.longdouble)), TypeError,
     ["x", "float16, float32 or float64"]),
    ("layer-x-0d", layer("forward", x=np.float64(1.0)), ValueError, ["x", "at least 1 dimension", "()"]),
    ("layer-x-ragged", layer("forward", x=[[1.0, 2.0], [3.0]]), TypeError, ["x", "converting it failed"]),
    ("layer-no-values-per-row", layer("forward", x=np.ones((3, 0)), gamma=np.ones(0), beta=np.zeros(0)),
     ValueError, ["no values", "(3, 0)"]),
    # layer norm: backward, double backward, jvp
    ("layer-backward-dy-wrong-shape", layer("backward", dy=LX[:2]), ValueError,
     ["dy", "(4, 3, 5)", "(2, 3, 5)"]),
    ("layer-backward-dy-integer", layer("backward", dy=LX.astype(np.int16)), TypeError, ["dy", "int16"]),
    ("layer-backward-mean-wrong-shape", layer("backward", mean=np.ones(4)), ValueError,
     ["mean", "(4, 3)", "(4,)", "one value per row"]),
    ("layer-backward-invstd-keepdims", layer("backward", invstd=np.ones((4, 3, 1))), ValueError,
     ["invstd", "(4, 3)", "(4, 3, 1)"]),
    ("layer-backward-gamma-wrong-shape", layer("backward", gamma=np.ones(3)), ValueError, ["gamma", "(3,)"]),
    ("layer-backward-axis-not-trailing", layer("backward", axis=0), ValueError, ["axis 0", "trailing"]),
    ("layer-double-backward-ggx-shape", layer("double_backward", ggx=LX[:1]), ValueError, ["ggx", "(1, 3, 5)"]),
    ("layer-double-backward-gggamma-shape", layer("double_backward", gggamma=np.ones(2)), ValueError,
     ["gggamma", "(5,)", "(2,)"]),
    ("layer-double-backward-gggamma-without-gamma", layer("double_backward", gamma=None), ValueError,
     ["gggamma", "gamma is None"]),
    ("layer-jvp-tx-shape", layer("jvp", tx=LX[..., :1]), ValueError, ["tx", "(4, 3, 1)"]),
    ("layer-jvp-tbeta-shape", layer("jvp", tbeta=np.ones(6)), ValueError, ["tbeta", "(6,)"]),
    ("layer-jvp-tgamma-without-gamma", layer("jvp", gamma=None), ValueError, ["tgamma", "gamma is None"]),
    ("layer-jvp-tbeta-without-beta", layer("jvp", beta=None), ValueError, ["tbeta", "beta is None"]),
    ("layer-jvp-eps-zero", layer("jvp", eps=0), ValueError, ["eps"]),
    # RMS norm
    ("rms-gamma-wrong-shape", rms("forward", gamma=np.ones(4)), ValueError, ["gamma", "(5,)", "(4,)"]),
    ("rms-axis-not-trailing", rms("forward", axis=(0, 1)), ValueError, ["axis (0, 1)", "trailing"]),
    ("rms-axis-out-of-range", rms("forward", axis=-4), ValueError, ["axis -4", "(4, 3, 5)"]),
    ("rms-eps-none", rms("forward", eps=None), TypeError, ["eps", "None"]),
    ("rms-eps-negative", rms("forward", eps=-1.0), ValueError, ["eps", "-1.0"]),
    ("rms-x-boolean", rms("forward", x=LX > 0), TypeError, ["x", "bool"]),
    ("rms-backward-invrms-wrong-shape", rms("backward", invrms=np.ones((3, 4))), ValueError,
     ["invrms", "(4, 3)", "(3, 4)"]),
    ("rms-backward-dy-wrong-shape", rms("backward", dy=LX[:, :1]), ValueError, ["dy", "(4, 1, 5)"]),
    ("rms-double-backward-ggx-shape", rms("double_backward", ggx=np.ones(5)), ValueError, ["ggx", "(5,)"]),
    ("rms-double-backward-gggamma-without-gamma", rms("double_backward", gamma=None), ValueError,
     ["gggamma", "gamma is None"]),
    ("rms-jvp-tgamma-shape", rms("jvp", tgamma=np.ones((1, 5))), ValueError, ["tgamma", "(5,)", "(1, 5)"]),
    # group norm: num_groups
    ("group-num-groups-not-dividing", group("forward", num_groups=4), ValueError,
     ["num_groups = 4", "6 channels", "(2, 6, 3)"]),
    ("group-num-groups-more-than-channels", group("forward", num_groups=12), ValueError,
     ["num_groups = 12", "6 channels"]),
    ("group-num-groups-zero", group("forward", num_groups=0), ValueError, ["num_groups", "at least 1", "0"]),
    ("group-num-groups-negative", group("forward", num_groups=-3), ValueError, ["num_groups", "-3"]),
    ("group-num-groups-float", group("forward", num_groups=3.0), TypeError, ["num_groups", "float"]),
    ("group-num-groups-bool", group("forward", num_groups=True), TypeError, ["num_groups", "bool"]),
    ("group-num-groups-none", group("forward", num_groups=None), TypeError, ["num_groups", "None"]),
    ("group-backward-num-groups-not-dividing", group("backward", num_groups=5), ValueError,
     ["num_groups = 5", "6 channels"]),
    # group norm: parameters, statistics, axes, x
    ("group-gamma-wrong-shape", group("forward", gamma=np.ones(3)), ValueError,
     ["gamma", "(6,)", "(3,)", "one value per channel", "channel axis 1"]),
    ("group-beta-per-group", group("forward", beta=np.zeros((3, 2))), ValueError, ["beta", "(6,)", "(3, 2)"]),
    ("group-gamma-channel-last", group("forward", axis=-1), ValueError, ["gamma", "(3,)", "(6,)", "channel axis 2"]),
    ("group-axis-batch", group("forward", axis=0), ValueError, ["axis 0", "batch axis", "(2, 6, 3)"]),
    ("group-axis-out-of-range", group("forward", axis=3), ValueError, ["axis 3", "(2, 6, 3)"]),
    ("group-axis-tuple", group("forward", axis=(1,)), TypeError, ["axis", "tuple"]),
    ("group-x-1d", group("forward", x=np.ones(6)), ValueError, ["x", "at least 2 dimensions", "(6,)"]),
    ("group-x-float16-eps-zero", group("forward", x=GX.astype(np.float16), eps=1e-50), ValueError,
     ["eps", "float32"]),
    ("group-no-channels", group("forward", x=np.ones((2, 0, 3)), gamma=np.ones(0), beta=np.zeros(0)), ValueError,
     ["no values", "(2, 0, 3)"]),
    ("group-backward-mean-per-channel", group("backward", mean=np.ones((2, 6))), ValueError,
     ["mean", "(2, 3)", "(2, 6)", "one value per sample and group"]),
    ("group-backward-statistics-for-other-groups", group("backward", num_groups=2), ValueError,
     ["mean", "(2, 2)", "(2, 3)"]),
    ("group-backward-dy-wrong-shape", group("backward", dy=GX[:, :3]), ValueError, ["dy", "(2, 3, 3)"]),
    ("group-double-backward-ggbeta-shape", group("double_backward", ggbeta=np.ones(3)), ValueError,
     ["ggbeta", "(6,)", "(3,)"]),
    ("group-jvp-tx-shape", group("jvp", tx=GX[..., :2]), ValueError, ["tx", "(2, 6, 2)"]),
    ("group-jvp-num-groups-zero", group("jvp", num_groups=0), ValueError, ["num_groups", "at least 1"]),
    # instance norm
    ("instance-spatial-size-one", instance("forward", x=np.ones((2, 3, 1))), ValueError,
     ["more than 1 spatial element", "(2, 3, 1)"]),
    ("instance-spatial-size-one-4d", instance("forward", x=np.ones((2, 3, 1, 1))), ValueError,
     ["more than 1 spatial element", "(2, 3, 1, 1)"]),
    ("instance-no-spatial-axes", instance("forward", x=np.ones((2, 3))), ValueError,
     ["more than 1 spatial element", "(2, 3)"]),
    ("instance-backward-spatial-size-one", instance("backward", dy=np.ones((2, 3, 1)), x=np.ones((2, 3, 1))),
     ValueError, ["more than 1 spatial element"]),
    ("instance-jvp-spatial-size-one", instance("jvp", x=np.ones((2, 3, 1)), tx=None), ValueError,
     ["more than 1 spatial element"]),
    ("instance-no-spatial-values", instance("forward", x=np.ones((2, 3, 0))), ValueError, ["no values"]),
    ("instance-gamma-wrong-shape", instance("forward", gamma=np.ones(4)), ValueError,
     ["gamma", "(3,)", "(4,)", "one value per channel"]),
    ("instance-gamma-channel-last", instance("forward", axis=-1), ValueError,
     ["gamma", "(4,)", "(3,)", "channel axis 2"]),
    ("instance-axis-batch", instance("forward", axis=-3), ValueError, ["axis -3", "batch axis"]),
    ("instance-axis-out-of-range", instance("forward", axis=5), ValueError, ["axis 5", "(2, 3, 4)"]),
    ("instance-eps-inf", instance("forward", eps=float("inf")), ValueError, ["eps", "inf"]),
    ("instance-x-object", instance("forward", x=IX.astype(object)), TypeError, ["x", "object"]),
    ("instance-backward-mean-per-channel-only", instance("backward", mean=np.ones(3)), ValueError,
     ["mean", "(2, 3)", "(3,)", "one value per sample and channel"]),
    ("instance-backward-invstd-integer", instance("backward", invstd=np.ones((2, 3), dtype=int)), TypeError,
     ["invstd", "int"]),
    ("instance-double-backward-gggamma-shape", instance("double_backward", gggamma=np.ones(2)), ValueError,
     ["gggamma", "(3,)", "(2,)"]),
]


@pytest.mark.parametrize("call, error, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(call, error, words):
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    missing = [w for w in words if w not in message]
    assert not missing, f"the error message {message!r} does not mention {missing}"
    traceback_files = {entry.path.name for entry in raised.traceback}
    assert not any("numpy" in str(entry.path) for entry in raised.traceback[1:]), (
        f"the error came from inside NumPy ({traceback_files}), not from bnsym's validation")


def test_every_layer_and_verb_has_a_case():
    """The table covers each public function of each layer at least once."""
    covered = {(c[1].target.__module__, c[1].target.__name__) for c in CASES}
    for module in (bnsym.layer_norm, bnsym.rms_norm, bnsym.group_norm, bnsym.instance_norm):
        for verb in module.__all__:
            assert (module.__name__, verb) in covered, f"no bad-input case for {module.__name__}.{verb}"
