"""Every bad input to the public functions gets a clear ValueError or TypeError naming the argument and shapes."""

import numpy as np
import pytest

import bnsym

C = 3
X = np.random.default_rng(0).normal(size=(4, C, 2, 2))
GAMMA, BETA = np.ones(C), np.zeros(C)
Y, MEAN, INVSTD = bnsym.batch_norm_forward(X, GAMMA, BETA)
DY = np.random.default_rng(1).normal(size=X.shape)


def forward(**changes):
    args = dict(x=X, gamma=GAMMA, beta=BETA, eps=1e-5, axis=1) | changes
    return lambda: bnsym.batch_norm_forward(**args)


def backward(**changes):
    args = dict(dy=DY, x=X, gamma=GAMMA, mean=MEAN, invstd=INVSTD, axis=1) | changes
    return lambda: bnsym.batch_norm_backward(**args)


def inference(**changes):
    args = dict(x=X, gamma=GAMMA, beta=BETA, running_mean=MEAN, running_var=INVSTD, eps=1e-5, axis=1) | changes
    return lambda: bnsym.batch_norm_inference(**args)


def double_backward(**changes):
    args = dict(ggx=DY, gggamma=GAMMA, ggbeta=BETA, dy=DY, x=X, gamma=GAMMA, mean=MEAN, invstd=INVSTD) | changes
    return lambda: bnsym.batch_norm_double_backward(**args)


def jvp(**changes):
    args = dict(x=X, gamma=GAMMA, beta=BETA, tx=DY, tgamma=GAMMA, tbeta=BETA) | changes
    return lambda: bnsym.batch_norm_jvp(**args)


def running(**changes):
    args = dict(running_mean=MEAN, running_var=INVSTD, mean=MEAN, var=INVSTD, count=16) | changes
    return lambda: bnsym.update_running_stats(**args)


CASES = [
    # (id, call, error type, words the message must contain)
    ("gamma-wrong-shape", forward(gamma=np.ones(4)), ValueError, ["gamma", "(3,)", "(4,)"]),
    ("gamma-2d", forward(gamma=np.ones((3, 1))), ValueError, ["gamma", "(3, 1)"]),
    ("beta-wrong-shape", forward(beta=np.zeros(2)), ValueError, ["beta", "(3,)", "(2,)"]),
    ("gamma-wrong-shape-nhwc", forward(axis=-1), ValueError, ["gamma", "(2,)", "(3,)"]),
    ("one-value-per-channel-2d", forward(x=np.ones((1, C))), ValueError, ["more than 1 value per channel", "(1, 3)"]),
    ("one-value-per-channel-4d", forward(x=np.ones((1, C, 1, 1))), ValueError,
     ["more than 1 value per channel", "(1, 3, 1, 1)"]),
    ("eps-zero", forward(eps=0.0), ValueError, ["eps", "0"]),
    ("eps-negative", forward(eps=-1e-5), ValueError, ["eps", "-1e-05"]),
    ("eps-nan", forward(eps=float("nan")), ValueError, ["eps", "nan"]),
    ("eps-inf", forward(eps=float("inf")), ValueError, ["eps", "inf"]),
    ("eps-string", forward(eps="1e-5"), TypeError, ["eps", "str"]),
    ("eps-zero-in-float32", forward(x=X.astype(np.float32), eps=1e-50), ValueError, ["eps", "float32"]),
    ("eps-inf-in-float32", forward(x=X.astype(np.float32), eps=1e300), ValueError, ["eps", "float32"]),
    ("eps-overflows-a-float", forward(eps=10**400), ValueError, ["eps", "overflows"]),
    ("x-longdouble", forward(x=X.astype(np.longdouble)), TypeError, ["x", "float16, float32 or float64"]),
    ("axis-out-of-range", forward(axis=4), ValueError, ["axis 4", "(4, 3, 2, 2)"]),
    ("axis-negative-out-of-range", forward(axis=-5), ValueError, ["axis -5", "(4, 3, 2, 2)"]),
    ("axis-float", forward(axis=1.0), TypeError, ["axis", "float"]),
    ("x-1d", forward(x=np.ones(5)), ValueError, ["x", "at least 2 dimensions", "(5,)"]),
    ("x-0d", forward(x=np.float64(1.0)), ValueError, ["x", "at least 2 dimensions", "()"]),
    ("x-integer", forward(x=X.astype(np.int64)), TypeError, ["x", "int64", "(4, 3, 2, 2)"]),
    ("x-boolean", forward(x=X > 0), TypeError, ["x", "bool"]),
    ("x-complex", forward(x=X.astype(np.complex128)), TypeError, ["x", "complex128"]),
    ("x-object", forward(x=X.astype(object)), TypeError, ["x", "object"]),
    ("gamma-integer", forward(gamma=np.ones(C, dtype=np.int32)), TypeError, ["gamma", "int32"]),
    ("dy-wrong-shape", backward(dy=DY[:2]), ValueError, ["dy", "(4, 3, 2, 2)", "(2, 3, 2, 2)"]),
    ("dy-integer", backward(dy=DY.astype(np.int16)), TypeError, ["dy", "int16"]),
    ("mean-wrong-shape", backward(mean=MEAN[:2]), ValueError, ["mean", "(3,)", "(2,)"]),
    ("invstd-wrong-shape", backward(invstd=np.ones((1, 3))), ValueError, ["invstd", "(3,)", "(1, 3)"]),
    ("backward-gamma-wrong-shape", backward(gamma=np.ones(5)), ValueError, ["gamma", "(5,)"]),
    ("backward-one-value-per-channel", backward(x=np.ones((1, C)), dy=np.ones((1, C))), ValueError,
     ["more than 1 value per channel"]),
    ("backward-axis-out-of-range", backward(axis=7), ValueError, ["axis 7"]),
    ("backward-x-1d", backward(x=np.ones(4), dy=np.ones(4)), ValueError, ["x", "at least 2 dimensions"]),
    ("inference-running-mean-shape", inference(running_mean=np.zeros(4)), ValueError, ["running_mean", "(4,)"]),
    ("inference-running-var-negative", inference(running_var=-INVSTD), ValueError, ["running_var", ">= 0"]),
    ("inference-eps-zero", inference(eps=0), ValueError, ["eps"]),
    ("inference-running-var-nan", inference(running_var=np.full(C, np.nan)), ValueError, ["running_var", "NaN"]),
    ("inference-backward-eps-zero-in-float32",
     lambda: bnsym.batch_norm_inference_backward(DY.astype(np.float16), X.astype(np.float16), GAMMA, MEAN, INVSTD,
                                                 eps=1e-50),
     ValueError, ["eps", "float32"]),
    ("inference-x-integer", inference(x=X.astype(int)), TypeError, ["x", "int"]),
    ("double-backward-ggx-shape", double_backward(ggx=DY[:1]), ValueError, ["ggx", "(1, 3, 2, 2)"]),
    ("double-backward-gggamma-shape", double_backward(gggamma=np.ones(2)), ValueError, ["gggamma", "(2,)"]),
    ("double-backward-training-not-bool", double_backward(training="yes"), TypeError, ["training"]),
    ("double-backward-one-value", double_backward(x=np.ones((1, C)), dy=np.ones((1, C)), ggx=np.ones((1, C))),
     ValueError, ["more than 1 value per channel"]),
    ("jvp-tx-shape", jvp(tx=DY[..., :1]), ValueError, ["tx", "(4, 3, 2, 1)"]),
    ("jvp-tbeta-shape", jvp(tbeta=np.ones(5)), ValueError, ["tbeta", "(5,)"]),
    ("running-convention", running(convention="caffe"), ValueError, ["convention", "caffe", "torch"]),
    ("running-convention-not-a-string", running(convention=[]), ValueError, ["convention", "[]"]),
    ("running-var-negative", running(var=-INVSTD), ValueError, ["var", ">= 0"]),
    ("running-momentum-out-of-range", running(momentum=1.5), ValueError, ["momentum", "1.5"]),
    ("running-count-zero", running(count=0), ValueError, ["count", "0"]),
    ("running-count-one-unbiased", running(count=1), ValueError, ["count >= 2", "count=1"]),
    ("running-var-shape", running(var=np.ones(4)), ValueError, ["var", "(3,)", "(4,)"]),
    ("running-cumulative-no-counter", running(convention="cumulative"), ValueError, ["num_batches_tracked"]),
    ("running-cumulative-with-momentum", running(convention="cumulative", momentum=0.1, num_batches_tracked=2),
     ValueError, ["momentum"]),
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
