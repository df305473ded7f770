"""Learning-rate schedule and optimizers (training/optimization.py) against closed forms and
float64 numpy re-implementations of the reference LAMB / AdamW updates."""

import numpy as np
import pytest

import keras

from training.optimization import WarmupPolynomialDecay, create_optimizer

B1, B2, EPS, WD = 0.9, 0.999, 1e-6, 0.01


# ------------------------------------------------------------------------------------------
# WarmupPolynomialDecay
# ------------------------------------------------------------------------------------------

def _lr(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def _closed_form(step, peak, warmup, total, power, end=0.0):
    """Update number k = step + 1 (Keras passes the 0-based iteration): warm up as
    peak * (k / warmup) ** power, then decay linearly from the peak at `warmup` to `end`
    at `total`."""
    if step < warmup:
        return peak * ((step + 1) / warmup) ** power
    progress = min((step - warmup) / (total - warmup), 1.0)
    return (peak - end) * (1.0 - progress) + end


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_schedule_matches_closed_form(power):
    peak, warmup, total, end = 0.012, 100, 1000, 1e-4
    schedule = WarmupPolynomialDecay(peak, warmup, total, warmup_power=power,
                                     end_learning_rate=end)
    for step in [0, 1, 9, 24, 49, 98, 99, 100, 101, 250, 550, 999, 1000, 5000]:
        np.testing.assert_allclose(_lr(schedule, step),
                                   _closed_form(step, peak, warmup, total, power, end),
                                   rtol=1e-5, err_msg=f"step {step}")


def test_schedule_shapes():
    peak, warmup, total = 1.0, 100, 300
    linear = WarmupPolynomialDecay(peak, warmup, total, warmup_power=1.0)
    sqrt = WarmupPolynomialDecay(peak, warmup, total, warmup_power=0.5)
    # A quarter of the way through warmup: linear is at 1/4 of the peak, sqrt at 1/2.
    np.testing.assert_allclose(_lr(linear, 24), 0.25, rtol=1e-6)
    np.testing.assert_allclose(_lr(sqrt, 24), 0.5, rtol=1e-6)
    # Peak at the end of warmup (update number `warmup`, and the step after it).
    for schedule in (linear, sqrt):
        np.testing.assert_allclose(_lr(schedule, warmup - 1), peak, rtol=1e-6)
        np.testing.assert_allclose(_lr(schedule, warmup), peak, rtol=1e-6)
        rates = [_lr(schedule, s) for s in range(total + 1)]
        assert max(rates) == pytest.approx(peak)
        assert all(a <= b + 1e-7 for a, b in zip(rates[:warmup], rates[1:warmup]))
        assert all(a >= b - 1e-7 for a, b in zip(rates[warmup:], rates[warmup + 1:]))
        # Linear decay: halfway through the decay, half the peak; zero at total_steps.
        np.testing.assert_allclose(_lr(schedule, warmup + (total - warmup) // 2), 0.5,
                                   rtol=1e-6)
        assert _lr(schedule, total) == pytest.approx(0.0, abs=1e-9)
        assert _lr(schedule, total + 50) == pytest.approx(0.0, abs=1e-9)


def test_schedule_decays_to_end_learning_rate():
    schedule = WarmupPolynomialDecay(1e-3, 10, 110, end_learning_rate=1e-5)
    np.testing.assert_allclose(_lr(schedule, 110), 1e-5, rtol=1e-5)
    np.testing.assert_allclose(_lr(schedule, 60), (1e-3 + 1e-5) / 2, rtol=1e-5)
    np.testing.assert_allclose(_lr(schedule, 10**6), 1e-5, rtol=1e-5)


def test_schedule_without_warmup_starts_at_peak():
    schedule = WarmupPolynomialDecay(2.0, 0, 10)
    np.testing.assert_allclose([_lr(schedule, s) for s in (0, 5, 10)], [2.0, 1.0, 0.0],
                               atol=1e-6)


def test_schedule_round_trips_through_config():
    schedule = WarmupPolynomialDecay(0.01, 7, 70, warmup_power=0.5, end_learning_rate=1e-4)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    for step in (0, 3, 7, 30, 70):
        assert _lr(clone, step) == pytest.approx(_lr(schedule, step))


@pytest.mark.parametrize("kwargs, match", [
    (dict(warmup_steps=10, total_steps=0), "total_steps"),
    (dict(warmup_steps=0, total_steps=-5), "total_steps"),
    (dict(warmup_steps=11, total_steps=10), "warmup_steps"),
    (dict(warmup_steps=-1, total_steps=10), "warmup_steps"),
])
def test_schedule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WarmupPolynomialDecay(0.01, **kwargs)


# ------------------------------------------------------------------------------------------
# Numpy references
# ------------------------------------------------------------------------------------------

def _excluded(name):
    return any(key in name for key in ("bias", "gamma", "beta"))


def _clip(grads, clipnorm):
    if not clipnorm:
        return grads
    norm = np.sqrt(sum(np.sum(g ** 2) for g in grads))
    return [g * clipnorm / max(norm, clipnorm) for g in grads]


def _adam(weights, names, gradient_steps, clipnorm, update):
    """Float64 Adam moments m, v of every weight over `gradient_steps` (clipped to a global
    norm `clipnorm`); `update(t, w, m, v, name)` is the optimizer's new weight at step t.
    Returns the weights and moments after the last step."""
    w = [np.array(x, np.float64) for x in weights]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    for t, grads in enumerate(gradient_steps, start=1):
        grads = _clip([np.array(g, np.float64) for g in grads], clipnorm)
        for i, (g, name) in enumerate(zip(grads, names)):
            m[i] = B1 * m[i] + (1 - B1) * g
            v[i] = B2 * v[i] + (1 - B2) * g * g
            w[i] = update(t, w[i], m[i], v[i], name)
    return w, m, v


def numpy_lamb(weights, names, gradient_steps, lr, wd=WD, clipnorm=None):
    """Reference LAMB (Google BERT / Graphcore): Adam moments with bias correction,
    update = m_hat / (sqrt(v_hat) + eps) + wd * w, scaled by ||w|| / ||update||;
    biases and LayerNorm parameters get neither the decay nor the trust ratio."""
    def lamb(t, w, m, v, name):
        m_hat = m / (1 - B1 ** t)
        v_hat = v / (1 - B2 ** t)
        update = m_hat / (np.sqrt(v_hat) + EPS)
        if not _excluded(name):
            update = update + wd * w
            w_norm, u_norm = np.linalg.norm(w), np.linalg.norm(update)
            update = update * (w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0)
        return w - lr * update
    return _adam(weights, names, gradient_steps, clipnorm, lamb)


def numpy_adamw(weights, names, gradient_steps, lr, wd=WD, clipnorm=None):
    """Decoupled weight decay (w -= lr * wd * w, not for biases and norms), then Adam."""
    def adamw(t, w, m, v, name):
        if not _excluded(name):
            w = w - lr * wd * w
        alpha = lr * np.sqrt(1 - B2 ** t) / (1 - B1 ** t)
        return w - alpha * m / (np.sqrt(v) + EPS)
    return _adam(weights, names, gradient_steps, clipnorm, adamw)


NAMES = ("kernel", "bias", "gamma", "beta")


def _setup(seed=0, shapes=((6, 4), (4,), (4,), (4,))):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
    return weights, rng


def _grads(rng, weights, scale):
    return [(scale * rng.normal(size=w.shape)).astype(np.float32) for w in weights]


def _run(optimizer, weights, gradient_steps, names=NAMES):
    variables = [keras.Variable(w, name=n) for w, n in zip(weights, names)]
    optimizer.build(variables)
    for grads in gradient_steps:
        optimizer.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in grads],
                                      variables))
    return [keras.ops.convert_to_numpy(v) for v in variables], optimizer


# ------------------------------------------------------------------------------------------
# LAMB
# ------------------------------------------------------------------------------------------

def test_lamb_matches_numpy_reference():
    weights, rng = _setup()
    # Gradients of norm ~0.2: below the clip threshold of 1.0.
    steps = [_grads(rng, weights, 0.05) for _ in range(3)]
    lr = 0.01
    got, _ = _run(create_optimizer("lamb", lr), weights, steps)
    want, _, _ = numpy_lamb(weights, NAMES, steps, lr)
    for g, w, name in zip(got, want, NAMES):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6, err_msg=name)


def test_lamb_one_step_kernel_and_excluded_variables():
    """The first step in closed form: m_hat = g, v_hat = g^2, so the Adam direction is
    g / (|g| + eps). The kernel's update (with decay) is rescaled to length lr * ||w||;
    bias / gamma / beta move by exactly lr * g / (|g| + eps)."""
    weights, rng = _setup(seed=1)
    grads = _grads(rng, weights, 0.1)
    lr = 0.02
    got, _ = _run(create_optimizer("lamb", lr), weights, [grads])
    w64 = [w.astype(np.float64) for w in weights]
    g64 = [g.astype(np.float64) for g in grads]
    direction = [g / (np.abs(g) + EPS) for g in g64]
    kernel_update = direction[0] + WD * w64[0]
    expected_kernel = (w64[0] - lr * np.linalg.norm(w64[0]) / np.linalg.norm(kernel_update)
                       * kernel_update)
    np.testing.assert_allclose(got[0], expected_kernel, rtol=1e-5, atol=1e-6)
    # The kernel moved by exactly lr * ||w|| (layer adaptation).
    np.testing.assert_allclose(np.linalg.norm(got[0] - w64[0]), lr * np.linalg.norm(w64[0]),
                               rtol=1e-4)
    for i in (1, 2, 3):
        np.testing.assert_allclose(got[i], w64[i] - lr * direction[i], rtol=1e-5, atol=1e-6,
                                   err_msg=NAMES[i])


def test_lamb_zero_gradient_decays_kernel_only():
    weights, _ = _setup(seed=2)
    zero = [np.zeros_like(w) for w in weights]
    lr = 0.05
    got, _ = _run(create_optimizer("lamb", lr), weights, [zero])
    # update = wd * w, trust ratio ||w|| / (wd ||w||) = 1 / wd: w -> w - lr * w.
    np.testing.assert_allclose(got[0], weights[0] * (1 - lr), rtol=1e-5)
    for i in (1, 2, 3):
        np.testing.assert_array_equal(got[i], weights[i])


def test_lamb_clips_global_norm_to_one():
    weights, rng = _setup(seed=3)
    huge = _grads(rng, weights, 1e4)
    small = _grads(rng, weights, 0.01)
    lr = 0.01
    got, optimizer = _run(create_optimizer("lamb", lr), weights, [huge, small])
    want, _, _ = numpy_lamb(weights, NAMES, [huge, small], lr, clipnorm=1.0)
    unclipped, _, _ = numpy_lamb(weights, NAMES, [huge, small], lr, clipnorm=None)
    for g, w, u, name in zip(got, want, unclipped, NAMES):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6, err_msg=name)
    # The test can tell: without clipping the second step would be much smaller.
    assert np.abs(want[1] - unclipped[1]).max() > 1e-3
    # The first moment after one huge step is (1 - beta_1) * clipped gradient.
    _, m1, _ = numpy_lamb(weights, NAMES, [huge], lr, clipnorm=1.0)
    total = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in huge))
    np.testing.assert_allclose(m1[0], (1 - B1) * huge[0] / total, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# AdamW
# ------------------------------------------------------------------------------------------

def test_adamw_excludes_bias_and_layernorm_from_decay():
    weights, _ = _setup(seed=4)
    zero = [np.zeros_like(w) for w in weights]
    lr = 0.1
    got, _ = _run(create_optimizer("adamw", lr, weight_decay=WD), weights, [zero])
    np.testing.assert_allclose(got[0], weights[0] * (1 - lr * WD), rtol=1e-6)
    for i in (1, 2, 3):
        np.testing.assert_array_equal(got[i], weights[i], err_msg=NAMES[i])


def test_adamw_matches_numpy_reference_with_clipping():
    weights, rng = _setup(seed=5)
    steps = [_grads(rng, weights, 1e3), _grads(rng, weights, 0.02),
             _grads(rng, weights, 0.05)]
    lr = 0.003
    got, _ = _run(create_optimizer("adamw", lr), weights, steps)
    want, _, _ = numpy_adamw(weights, NAMES, steps, lr, clipnorm=1.0)
    unclipped, _, _ = numpy_adamw(weights, NAMES, steps, lr, clipnorm=None)
    for g, w, name in zip(got, want, NAMES):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6, err_msg=name)
    assert np.abs(want[0] - unclipped[0]).max() > 1e-4


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="lamb.*adamw"):
        create_optimizer("sgd", 0.1)


def test_model_variables_excluded_are_exactly_biases_and_layernorms(tiny_config):
    """The name-based exclusion must catch every LayerNorm and bias of the real model,
    and nothing else (no kernels or embeddings)."""
    from groupbert_tf.models import GroupBertPretrainer

    model = GroupBertPretrainer(config=tiny_config())
    assert model.trainable_variables
    optimizer = create_optimizer("adamw", 0.1)
    optimizer.build(model.trainable_variables)
    lamb = create_optimizer("lamb", 0.1)
    seen = set()
    for variable in model.trainable_variables:
        excluded = not optimizer._use_weight_decay(variable)
        assert excluded == (not lamb._adapts(variable)), variable.path
        is_norm = variable.name in ("gamma", "beta")
        is_bias = variable.name.endswith("bias")
        assert excluded == (is_norm or is_bias), (variable.path, excluded)
        seen.add((excluded, variable.name))
    assert (True, "gamma") in seen and (True, "bias") in seen and (False, "kernel") in seen
