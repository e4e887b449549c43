"""Optimizers: trajectories against NumPy references written here from the
published update rules, gradient clipping, schedules, errors.

Every optimizer configuration trains its own copy of a small linear model
(W, b) with an MSE loss; all of them live in ONE compiled step per target
(so a compiled target compiles once), and each test compares one
configuration's trajectory over several steps with its reference.
"""
import math

import numpy as np
import pytest

import bpc
from bpc import optim

STEPS = 6
LR_CHANGE_AT = 3          # the learning rate is halved before this step
N, D, K = 8, 3, 2         # batch, features, outputs


# ----- NumPy references (from the papers / standard definitions) ---------------------

def mse_grads(W, b, X, T):
    """Gradients of mean((X W + b - T)^2) with respect to W and b."""
    r = X @ W + b - T
    scale = 2.0 / r.size
    return [scale * X.T @ r, scale * r.sum(axis=0)]


class Ref:
    """Base: optional clipping, then `rule` per parameter."""

    def __init__(self, clip_value=None, clip_norm=None):
        self.clip_value, self.clip_norm, self.t, self.slots = clip_value, clip_norm, 0, {}

    def step(self, params, grads, lr):
        if self.clip_value is not None:
            grads = [np.clip(g, -self.clip_value, self.clip_value) for g in grads]
        if self.clip_norm is not None:
            norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
            grads = [g * (self.clip_norm / max(norm, self.clip_norm)) for g in grads]
        self.t += 1
        return [self.rule(i, p, g, lr) for i, (p, g) in enumerate(zip(params, grads))]

    def slot(self, i, name, like):
        return self.slots.setdefault((i, name), np.zeros_like(like))


class RefSGD(Ref):
    # PyTorch's SGD: g += wd p; v = mu v + g; p -= lr v  (Nesterov: p -= lr (g + mu v))
    def __init__(self, momentum=0.0, nesterov=False, weight_decay=0.0, **kw):
        super().__init__(**kw)
        self.mu, self.nesterov, self.wd = momentum, nesterov, weight_decay

    def rule(self, i, p, g, lr):
        g = g + self.wd * p
        if self.mu == 0:
            return p - lr * g
        v = self.slots[(i, "v")] = self.mu * self.slot(i, "v", p) + g
        return p - lr * (g + self.mu * v if self.nesterov else v)


class RefAdaGrad(Ref):
    # Duchi, Hazan & Singer 2011: G += g^2; p -= lr g / (sqrt(G) + eps)
    def __init__(self, eps, **kw):
        super().__init__(**kw)
        self.eps = eps

    def rule(self, i, p, g, lr):
        G = self.slots[(i, "G")] = self.slot(i, "G", p) + g * g
        return p - lr * g / (np.sqrt(G) + self.eps)


class RefRMSProp(Ref):
    # Hinton, lecture 6e: E = rho E + (1 - rho) g^2; p -= lr g / (sqrt(E) + eps)
    def __init__(self, rho, eps, **kw):
        super().__init__(**kw)
        self.rho, self.eps = rho, eps

    def rule(self, i, p, g, lr):
        E = self.slots[(i, "E")] = self.rho * self.slot(i, "E", p) + (1 - self.rho) * g * g
        return p - lr * g / (np.sqrt(E) + self.eps)


class RefAdam(Ref):
    # Kingma & Ba 2015, Algorithm 1; AdamW (Loshchilov & Hutter 2019) adds
    # the decoupled decay lr * wd * p.
    def __init__(self, beta1, beta2, eps, weight_decay=0.0, **kw):
        super().__init__(**kw)
        self.b1, self.b2, self.eps, self.wd = beta1, beta2, eps, weight_decay

    def rule(self, i, p, g, lr):
        m = self.slots[(i, "m")] = self.b1 * self.slot(i, "m", p) + (1 - self.b1) * g
        v = self.slots[(i, "v")] = self.b2 * self.slot(i, "v", p) + (1 - self.b2) * g * g
        m_hat = m / (1 - self.b1 ** self.t)
        v_hat = v / (1 - self.b2 ** self.t)
        return p - lr * (m_hat / (np.sqrt(v_hat) + self.eps) + self.wd * p)


CLIP_VALUE, CLIP_NORM = 0.05, 0.1

CONFIGS = {
    "sgd": (lambda: optim.SGD(lr=0.1), lambda: RefSGD()),
    "sgd_momentum": (lambda: optim.SGD(lr=0.1, momentum=0.9), lambda: RefSGD(momentum=0.9)),
    "sgd_nesterov": (lambda: optim.SGD(lr=0.1, momentum=0.9, nesterov=True),
                     lambda: RefSGD(momentum=0.9, nesterov=True)),
    "sgd_weight_decay": (lambda: optim.SGD(lr=0.1, momentum=0.5, weight_decay=0.05),
                         lambda: RefSGD(momentum=0.5, weight_decay=0.05)),
    "adagrad": (lambda: optim.AdaGrad(lr=0.1, eps=1e-10), lambda: RefAdaGrad(eps=1e-10)),
    "rmsprop": (lambda: optim.RMSProp(lr=0.01, rho=0.9, eps=1e-8), lambda: RefRMSProp(rho=0.9, eps=1e-8)),
    "adam": (lambda: optim.Adam(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8),
             lambda: RefAdam(0.9, 0.999, 1e-8)),
    "adamw": (lambda: optim.AdamW(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-8, weight_decay=0.1),
              lambda: RefAdam(0.8, 0.99, 1e-8, weight_decay=0.1)),
    "sgd_clip_value": (lambda: optim.SGD(lr=0.1, momentum=0.9, clip_value=CLIP_VALUE),
                       lambda: RefSGD(momentum=0.9, clip_value=CLIP_VALUE)),
    "adam_clip_norm": (lambda: optim.Adam(lr=0.01, clip_norm=CLIP_NORM), lambda: RefAdam(0.9, 0.999, 1e-8,
                                                                                         clip_norm=CLIP_NORM)),
}

_data_rng = np.random.default_rng(42)
W0 = _data_rng.normal(size=(D, K))
B0 = _data_rng.normal(size=(K,))
BATCHES = [(_data_rng.normal(size=(N, D)), _data_rng.normal(size=(N, K)) * 3.0) for _ in range(STEPS)]


def lr_schedule(base, step):
    return base * (0.5 if step >= LR_CHANGE_AT else 1.0)


_runs = {}


def trajectories(target):
    """Run every configuration for STEPS steps in one compiled step; cached
    per target. Returns {config: (optimizer, [(W, b) after each step], fn)}."""
    if target in _runs:
        return _runs[target]
    x = bpc.input("x", (None, D), dtype="float64")
    t = bpc.input("t", (None, K), dtype="float64")
    updates, losses, models = {}, [], {}
    for name, (make, _) in CONFIGS.items():
        W, b = bpc.param(f"{name}_W", W0.copy(), dtype="float64"), bpc.param(f"{name}_b", B0.copy(), dtype="float64")
        opt = make()
        loss = bpc.mse(x @ W + b, t)
        updates.update(opt.updates(loss, [W, b]))
        losses.append(loss)
        models[name] = (opt, W, b)
    step = bpc.function([x, t], losses, updates=updates, target=target)
    traj = {name: [] for name in CONFIGS}
    for k, (X, T) in enumerate(BATCHES):
        if k == LR_CHANGE_AT:   # a schedule's change: no recompiling, the same step reads it
            for opt, _, _ in models.values():
                opt.lr.value = lr_schedule(opt.base_lr, k)
        step(X, T)
        for name, (_, W, b) in models.items():
            traj[name].append((W.value.copy(), b.value.copy()))
    _runs[target] = {name: (models[name][0], traj[name], step) for name in CONFIGS}
    return _runs[target]


def reference_trajectory(name):
    ref = CONFIGS[name][1]()
    params, out, raw = [W0.copy(), B0.copy()], [], []
    base = CONFIGS[name][0]().base_lr
    for k, (X, T) in enumerate(BATCHES):
        grads = mse_grads(*params, X, T)
        raw.append(grads)
        params = ref.step(params, grads, lr_schedule(base, k))
        out.append([p.copy() for p in params])
    return out, raw


@pytest.mark.parametrize("name", list(CONFIGS))
def test_trajectory_matches_published_rule(target, name):
    opt, got, _ = trajectories(target)[name]
    want, _ = reference_trajectory(name)
    for k, ((W, b), (rW, rb)) in enumerate(zip(got, want)):
        np.testing.assert_allclose(W, rW, rtol=1e-9, atol=1e-12, err_msg=f"{name}: W after step {k + 1}")
        np.testing.assert_allclose(b, rb, rtol=1e-9, atol=1e-12, err_msg=f"{name}: b after step {k + 1}")
    assert int(opt.step_count.value) == STEPS
    assert float(opt.lr.value) == lr_schedule(opt.base_lr, STEPS - 1)


def test_clipping_was_active_in_the_reference_runs():
    """The clipping trajectories above only test clipping if it clipped."""
    _, raw = reference_trajectory("sgd_clip_value")
    assert all(np.max(np.abs(np.concatenate([g.ravel() for g in gs]))) > CLIP_VALUE for gs in raw)
    _, raw = reference_trajectory("adam_clip_norm")
    assert all(math.sqrt(sum(float(np.sum(g * g)) for g in gs)) > CLIP_NORM for gs in raw)
    # and clipping changes the trajectory
    assert not np.allclose(reference_trajectory("sgd_clip_value")[0][-1][0],
                           _ref_without_clip(RefSGD(momentum=0.9), "sgd_clip_value")[-1][0])


def _ref_without_clip(ref, name):
    params, out = [W0.copy(), B0.copy()], []
    base = CONFIGS[name][0]().base_lr
    for k, (X, T) in enumerate(BATCHES):
        params = ref.step(params, mse_grads(*params, X, T), lr_schedule(base, k))
        out.append(params)
    return out


def test_clipped_gradients_in_the_graph(target):
    """`clip` by value bounds every element; by global norm rescales all
    gradients together to the norm limit."""
    g1 = bpc.input("g1", (4,), dtype="float64")
    g2 = bpc.input("g2", (2, 2), dtype="float64")
    by_value = optim.SGD(lr=1.0, clip_value=0.5).clip([g1, g2])
    by_norm = optim.SGD(lr=1.0, clip_norm=1.0).clip([g1, g2])
    f = bpc.function([g1, g2], by_value + by_norm, target=target)
    a, b = np.array([3.0, -0.2, 0.4, -7.0]), np.array([[1.0, 0.0], [-2.0, 0.25]])
    va, vb, na, nb = f(a, b)
    np.testing.assert_allclose(va, np.clip(a, -0.5, 0.5))
    np.testing.assert_allclose(vb, np.clip(b, -0.5, 0.5))
    total = math.sqrt(np.sum(a * a) + np.sum(b * b))
    np.testing.assert_allclose(na, a / total, rtol=1e-12)
    np.testing.assert_allclose(nb, b / total, rtol=1e-12)
    np.testing.assert_allclose(math.sqrt(np.sum(na ** 2) + np.sum(nb ** 2)), 1.0)
    # below the limit, nothing changes
    _, _, na, nb = f(a * 1e-3, b * 1e-3)
    np.testing.assert_allclose(na, a * 1e-3, rtol=1e-12)


def test_updates_hold_params_and_state():
    W = bpc.param("W", np.ones((2, 2)))
    x = bpc.input("x", (None, 2))
    opt = optim.Adam(lr=0.1)
    ups = opt.updates(bpc.sum(x @ W), [W])
    m, v = opt.named_state()["m.0"], opt.named_state()["v.0"]
    assert set(ups) == {W, m, v, opt.step_count}
    assert {s.kind for s in opt.state} == {"state"}
    assert set(opt.named_state()) == {"lr", "step", "m.0", "v.0"}
    assert m.shape == W.shape and m.dtype == W.dtype and np.all(m.value == 0)
    assert opt.lr.kind == "state" and opt.lr.shape == () and float(opt.lr.value) == 0.1
    # updates for the same params again reuse the slots
    opt.updates(bpc.sum(x @ W), [W])
    assert len(opt.state) == 4
    sgd = optim.SGD(lr=0.1)
    assert set(sgd.updates(bpc.sum(x @ W), [W])) == {W, sgd.step_count}


@pytest.mark.parametrize("make, message", [
    (lambda: optim.SGD(lr=-1.0), "lr must be in"),
    (lambda: optim.SGD(lr="fast"), "lr must be a number"),
    (lambda: optim.SGD(lr=0.1, nesterov=True), "nesterov=True needs momentum"),
    (lambda: optim.SGD(lr=0.1, momentum=1.0), "momentum must be in"),
    (lambda: optim.Adam(beta1=1.0), "beta1 must be in"),
    (lambda: optim.RMSProp(rho=-0.1), "rho must be in"),
    (lambda: optim.AdamW(weight_decay=-1), "weight_decay must be in"),
    (lambda: optim.Adam(clip_norm=0.0), "clip_norm must be in"),
    (lambda: optim.SGD(clip_value=float("nan")), "clip_value must be in"),
    (lambda: optim.get("adamax"), "unknown optimizer 'adamax'"),
])
def test_bad_hyperparameters_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_params_and_gradients_raise():
    W = bpc.param("W", np.ones((2, 2)))
    x = bpc.input("x", (None, 2))
    opt = optim.SGD(lr=0.1)
    with pytest.raises(bpc.ShapeError, match="expected bpc.param"):
        opt.updates(bpc.sum(x), [x])
    with pytest.raises(ValueError, match="appears twice"):
        opt.updates(bpc.sum(x @ W), [W, W])
    with pytest.raises(bpc.ShapeError, match="gradient for 'W' must be a tensor of shape"):
        opt.apply_gradients([W], [bpc.param("g", np.ones(3))])
    with pytest.raises(ValueError, match="1 gradients for 2 params"):
        opt.apply_gradients([W, bpc.param("V", np.ones(2))], [W])
    assert isinstance(optim.get("AdamW"), optim.AdamW)


def test_schedules():
    step = optim.StepLR(step_size=2, gamma=0.5)
    assert [step(e, 1.0) for e in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    expo = optim.ExponentialLR(gamma=0.9)
    assert expo(3, 2.0) == pytest.approx(2.0 * 0.9 ** 3)
    cos = optim.CosineLR(t_max=4, min_lr=0.1)
    assert cos(0, 1.0) == pytest.approx(1.0)
    assert cos(2, 1.0) == pytest.approx(0.55)
    assert cos(4, 1.0) == pytest.approx(0.1) and cos(10, 1.0) == pytest.approx(0.1)
    opt = optim.SGD(lr=0.2)
    assert step.apply(opt, 4) == pytest.approx(0.05) and float(opt.lr.value) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="step_size must be a positive int"):
        optim.StepLR(0)
    with pytest.raises(ValueError, match="epoch must be a non-negative int"):
        step(-1, 1.0)
