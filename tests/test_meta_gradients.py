"""Meta-gradients of GRAM (eqs. 7-10) checked against independent computations.

* central finite differences of the meta-objective in float64 (every regulator kind, 1 and 2
  inner steps, derivatives with respect to theta *and* phi);
* plain second-order MAML and FO-MAML written here with torch.autograd (not torch.func);
* the vmapped meta-batch against the Python loop;
* double backward through an nn.TransformerEncoderLayer under ``math_attention()``.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gramlib.gram.meta import (
    MetaConfig,
    init_meta_state,
    inner_step,
    math_attention,
    meta_gradients,
    meta_objective,
    meta_step,
    stack_tasks,
)
from gramlib.gram.regulator import RegulatorConfig, init_regulator

K, FEAT = 3, 5  # classes per task, feature width


class ToyPrompt:
    """A tiny CLIP-like prompt learner on fixed random features.

    theta = {"text": (2, 3) context tokens, "visual": (2, 4) visual prompts}: the text context
    goes with a class token through a tanh layer and a projection to class weights; the visual
    prompts shift the (cached) image features.  Nonlinear in theta, so second-order terms matter.
    """

    def __init__(self, dtype: torch.dtype = torch.float64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
        self.U, self.P, self.cls, self.V = r(3, 4), r(4, FEAT) * 0.7, r(K, 3), r(4, FEAT) * 0.7
        self.pos = torch.tensor([0.5, 0.3, 0.6], dtype=dtype)
        self.dtype = dtype
        self.gen = g

    def init_theta(self) -> dict[str, torch.Tensor]:
        return {
            "text": torch.randn(2, 3, generator=self.gen, dtype=self.dtype) * 0.5,
            "visual": torch.randn(2, 4, generator=self.gen, dtype=self.dtype) * 0.5,
        }

    def loss(self, theta: dict, batch: tuple) -> torch.Tensor:
        x, y = batch
        tokens = torch.cat([theta["text"].unsqueeze(0).expand(K, -1, -1), self.cls.unsqueeze(1)], 1)
        mixed = torch.einsum("kmd,m->kd", tokens, self.pos)  # position-weighted: tokens are not symmetric
        w = torch.tanh(mixed @ self.U) @ self.P  # (K, FEAT): context and class token interact in tanh
        shift = torch.tanh(theta["visual"] @ self.V).mean(0)  # (FEAT,)
        return F.cross_entropy((x + shift) @ w.T * 2.0, y)

    def task(self, n_support: int = 4, n_query: int = 6) -> tuple:
        def batch(n: int) -> tuple:
            y = torch.arange(n) % K
            x = torch.randn(n, FEAT, generator=self.gen, dtype=self.dtype) + 0.5 * torch.randn(
                K, FEAT, generator=self.gen, dtype=self.dtype
            )[y]
            return x, y

        return batch(n_support), batch(n_query)


def random_phi(theta: dict, kind: str, seed: int = 1) -> dict:
    """phi away from its (W = 0) initialisation, so every term of eqs. 5-6 is exercised."""
    phi = init_regulator(theta, RegulatorConfig(kind=kind))
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.4 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in phi.items()}


def central_fd(fn, params: dict, eps: float = 1e-6) -> dict:
    """Coordinate-wise central differences of a scalar function of a parameter dict."""
    out = {}
    for k, v in params.items():
        gk = torch.zeros_like(v)
        for i in range(v.numel()):
            plus = {kk: vv.clone() for kk, vv in params.items()}
            minus = {kk: vv.clone() for kk, vv in params.items()}
            plus[k].view(-1)[i] += eps
            minus[k].view(-1)[i] -= eps
            gk.view(-1)[i] = (fn(plus) - fn(minus)) / (2 * eps)
        out[k] = gk
    return out


def directional_fd(fn, params: dict, grads: dict, n_dirs: int = 8, eps: float = 1e-6, seed: int = 0) -> tuple:
    """Central differences along random directions v: (f(x + eps v) - f(x - eps v)) / 2 eps vs <grad, v>.

    Used for phi (up to a few hundred scalars) where coordinate-wise differences would be slow;
    a random direction has a component along every coordinate, so a wrong entry anywhere shows up.
    """
    g = torch.Generator().manual_seed(seed)
    fd, an = [], []
    for _ in range(n_dirs):
        v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}
        plus = {k: p + eps * v[k] for k, p in params.items()}
        minus = {k: p - eps * v[k] for k, p in params.items()}
        fd.append(float((fn(plus) - fn(minus)) / (2 * eps)))
        an.append(float(sum((grads[k] * v[k]).sum() for k in params)))
    return torch.tensor(fd, dtype=torch.float64), torch.tensor(an, dtype=torch.float64)


def rel_err(a: dict, b: dict) -> float:
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in a)
    den = sum(float(b[k].pow(2).sum()) for k in b)
    return (num / max(den, 1e-300)) ** 0.5


def flat(d: dict) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in d.values()])


KIND_NORMS = [("token_shared", "rms"), ("token_shared", "none"), ("elementwise", "rms"), ("elementwise", "none"),
              ("full", "rms"), ("identity", "rms")]


@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize(("kind", "input_norm"), KIND_NORMS)
def test_meta_gradients_match_finite_differences(kind: str, inner_steps: int, input_norm: str) -> None:
    model = ToyPrompt(seed=3)
    theta = model.init_theta()
    phi = random_phi(theta, kind)
    tasks = [model.task(), model.task()]
    cfg = MetaConfig(
        alpha=0.3, inner_steps=inner_steps, regulator=RegulatorConfig(kind=kind, input_norm=input_norm, beta_scale=input_norm), track_metrics=False
    )
    mg = meta_gradients(theta, phi, tasks, model.loss, cfg)
    fd_theta = central_fd(lambda th: meta_objective(th, phi, tasks, model.loss, cfg), theta)
    assert rel_err(mg.theta, fd_theta) < 1e-3
    if phi:
        fd, an = directional_fd(lambda ph: meta_objective(theta, ph, tasks, model.loss, cfg), phi, mg.phi)
        assert float((fd - an).norm() / an.norm()) < 1e-3
        # and coordinate-wise for the smallest blocks (the text entry's biases)
        small = {k: v for k, v in phi.items() if k.startswith("text.b_")}
        fd_small = central_fd(lambda ph: meta_objective(theta, {**phi, **ph}, tasks, model.loss, cfg), small)
        assert rel_err({k: mg.phi[k] for k in small}, fd_small) < 1e-3
        assert flat(mg.phi).abs().max() > 0  # phi really receives a meta-gradient
    # value of eq. 10 is the sum of the per-task query losses after adaptation
    assert torch.allclose(mg.meta_loss, meta_objective(theta, phi, tasks, model.loss, cfg))


def test_phi_gradient_nonzero_at_initialisation() -> None:
    """W starts at zero, but dL/dW must not vanish there, or the regulator could never learn."""
    model = ToyPrompt(seed=4)
    theta = model.init_theta()
    cfg = MetaConfig(alpha=0.3, track_metrics=False)
    phi = init_regulator(theta, cfg.regulator)
    mg = meta_gradients(theta, phi, [model.task()], model.loss, cfg)
    for name in ("text.W_gamma", "text.W_beta", "visual.W_gamma", "visual.b_beta"):
        assert mg.phi[name].abs().max() > 1e-8, name


def _maml_reference(model: ToyPrompt, theta: dict, tasks: list, alpha: float, first_order: bool) -> dict:
    """MAML written independently with torch.autograd (one inner step, no regulator)."""
    names = list(theta)
    params = [theta[k].detach().clone().requires_grad_(True) for k in names]
    total = 0.0
    for support, query in tasks:
        loss_s = model.loss(dict(zip(names, params)), support)
        grads = torch.autograd.grad(loss_s, params, create_graph=not first_order)
        adapted = [p - alpha * g for p, g in zip(params, grads)]
        total = total + model.loss(dict(zip(names, adapted)), query)
    return dict(zip(names, torch.autograd.grad(total, params)))


def test_unregulated_one_step_equals_second_order_maml() -> None:
    model = ToyPrompt(seed=5)
    theta = model.init_theta()
    tasks = [model.task() for _ in range(3)]
    cfg = MetaConfig(alpha=0.5, regulate=False, inner_steps=1)
    phi = init_regulator(theta, cfg.regulator)  # present but unused
    mg = meta_gradients(theta, phi, tasks, model.loss, cfg)
    ref = _maml_reference(model, theta, tasks, cfg.alpha, first_order=False)
    for k in theta:
        torch.testing.assert_close(mg.theta[k], ref[k], rtol=1e-10, atol=1e-12)
    assert all(float(g.abs().max()) == 0.0 for g in mg.phi.values())


def test_first_order_equals_fomaml_formula_and_differs_from_second_order() -> None:
    model = ToyPrompt(seed=6)
    theta = model.init_theta()
    tasks = [model.task() for _ in range(3)]
    fo = MetaConfig(alpha=0.5, regulate=False, first_order=True)
    so = dataclasses.replace(fo, first_order=False)
    g_fo = meta_gradients(theta, {}, tasks, model.loss, fo).theta
    g_so = meta_gradients(theta, {}, tasks, model.loss, so).theta
    # FO-MAML: sum_t grad L_query(theta'_t), theta'_t = theta - alpha grad L_support(theta)
    ref = _maml_reference(model, theta, tasks, fo.alpha, first_order=True)
    for k in theta:
        torch.testing.assert_close(g_fo[k], ref[k], rtol=1e-10, atol=1e-12)
    assert rel_err(g_fo, g_so) > 1e-3


def test_first_order_with_regulator_keeps_phi_path() -> None:
    """First order drops d g/d theta only: for one inner step phi's gradient is still exact."""
    model = ToyPrompt(seed=7)
    theta = model.init_theta()
    phi = random_phi(theta, "token_shared")
    tasks = [model.task() for _ in range(2)]
    so = MetaConfig(alpha=0.3, track_metrics=False)
    fo = dataclasses.replace(so, first_order=True)
    mg_fo = meta_gradients(theta, phi, tasks, model.loss, fo)
    mg_so = meta_gradients(theta, phi, tasks, model.loss, so)
    for k in phi:
        torch.testing.assert_close(mg_fo.phi[k], mg_so.phi[k], rtol=1e-10, atol=1e-12)
    # theta: sum_t grad L_query(theta'_t) with theta'_t from the regulated step (dtheta'/dtheta = I)
    ref = {k: torch.zeros_like(v) for k, v in theta.items()}
    for support, query in tasks:
        adapted = inner_step(theta, phi, support, model.loss, so)
        a = {k: v.detach().requires_grad_(True) for k, v in adapted.items()}
        gq = torch.autograd.grad(model.loss(a, query), list(a.values()))
        for k, g in zip(a, gq):
            ref[k] += g
    for k in theta:
        torch.testing.assert_close(mg_fo.theta[k], ref[k], rtol=1e-10, atol=1e-12)
    assert rel_err(mg_fo.theta, mg_so.theta) > 1e-3


@pytest.mark.parametrize(
    "overrides",
    [{}, {"inner_steps": 2}, {"first_order": True, "inner_steps": 2}, {"regulate": False}, {"vectorize": True}],
)
def test_outer_autograd_equals_outer_func_grad(overrides: dict) -> None:
    """The two ways of taking the outer derivative (torch.autograd vs nested torch.func.grad) agree."""
    model = ToyPrompt(seed=13)
    theta = model.init_theta()
    phi = random_phi(theta, "token_shared")
    tasks = [model.task() for _ in range(3)]
    a_cfg = dataclasses.replace(MetaConfig(alpha=0.3), **overrides)
    f_cfg = dataclasses.replace(a_cfg, outer_grad="func")
    a = meta_gradients(theta, phi, tasks, model.loss, a_cfg)
    f = meta_gradients(theta, phi, tasks, model.loss, f_cfg)
    for k in theta:
        torch.testing.assert_close(a.theta[k], f.theta[k], rtol=1e-10, atol=1e-12)
    for k in phi:
        torch.testing.assert_close(a.phi[k], f.phi[k], rtol=1e-10, atol=1e-12)
    for k in f.aux:
        torch.testing.assert_close(a.aux[k], f.aux[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["token_shared", "full"])
def test_vectorized_equals_loop(kind: str) -> None:
    model = ToyPrompt(seed=8)
    theta = model.init_theta()
    phi = random_phi(theta, kind)
    tasks = [model.task() for _ in range(4)]
    loop = MetaConfig(alpha=0.3, inner_steps=2, regulator=RegulatorConfig(kind=kind))
    vec = dataclasses.replace(loop, vectorize=True)
    a = meta_gradients(theta, phi, tasks, model.loss, loop)
    b = meta_gradients(theta, phi, tasks, model.loss, vec)
    c = meta_gradients(theta, phi, stack_tasks(tasks), model.loss, loop)  # pre-stacked tasks vectorize too
    for other in (b, c):
        for k in theta:
            torch.testing.assert_close(other.theta[k], a.theta[k], rtol=1e-10, atol=1e-12)
        for k in phi:
            torch.testing.assert_close(other.phi[k], a.phi[k], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(other.meta_loss, a.meta_loss)
        for k in a.aux:
            torch.testing.assert_close(other.aux[k], a.aux[k], rtol=1e-9, atol=1e-12)


def test_meta_step_metrics_match_independent_computation() -> None:
    """grad_cosine (Figure 3b) = cos(R^phi(g_support), g_query) at theta, averaged over tasks."""
    from gramlib.gram.regulator import regulate_gradient

    model = ToyPrompt(seed=9)
    theta = model.init_theta()
    phi = random_phi(theta, "token_shared")
    tasks = [model.task() for _ in range(3)]
    cfg = MetaConfig(alpha=0.3, lr_theta=0.1, lr_phi=0.1)
    cos_reg, cos_raw, q_before, s_after = [], [], [], []
    for support, query in tasks:
        th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        gs = dict(zip(th, torch.autograd.grad(model.loss(th, support), list(th.values()))))
        lq = model.loss(th, query)
        gq = dict(zip(th, torch.autograd.grad(lq, list(th.values()))))
        gh = regulate_gradient(phi, gs, cfg.regulator)
        cos_reg.append(float(F.cosine_similarity(flat(gh), flat(gq), dim=0)))
        cos_raw.append(float(F.cosine_similarity(flat(gs), flat(gq), dim=0)))
        q_before.append(float(lq.detach()))
        adapted = {k: theta[k] - cfg.alpha * gh[k] for k in theta}
        s_after.append(float(model.loss(adapted, support)))
    state = init_meta_state(theta, phi, cfg)
    state, metrics = meta_step(state, tasks, model.loss, cfg)
    assert metrics["grad_cosine"] == pytest.approx(sum(cos_reg) / 3, rel=1e-9)
    assert metrics["grad_cosine_raw"] == pytest.approx(sum(cos_raw) / 3, rel=1e-9)
    assert metrics["query_loss_before"] == pytest.approx(sum(q_before) / 3, rel=1e-9)
    assert metrics["support_loss_after"] == pytest.approx(sum(s_after) / 3, rel=1e-9)
    assert metrics["support_loss_after"] < metrics["support_loss_before"]
    assert metrics["meta_loss"] == pytest.approx(3 * metrics["query_loss_after"], rel=1e-9)
    assert state.step == 1


def test_meta_step_sgd_is_eqs_8_and_9() -> None:
    model = ToyPrompt(seed=10)
    theta = model.init_theta()
    phi = random_phi(theta, "elementwise")
    tasks = [model.task() for _ in range(2)]
    cfg = MetaConfig(alpha=0.3, lr_theta=0.05, lr_phi=0.2, regulator=RegulatorConfig(kind="elementwise"), track_metrics=False)
    mg = meta_gradients(theta, phi, tasks, model.loss, cfg)
    state, _ = meta_step(init_meta_state(theta, phi, cfg), tasks, model.loss, cfg)
    for k in theta:
        torch.testing.assert_close(state.theta[k], theta[k] - cfg.lr_theta * mg.theta[k])  # eq. 8
    for k in phi:
        torch.testing.assert_close(state.phi[k], phi[k] - cfg.lr_phi * mg.phi[k])  # eq. 9


def test_meta_training_reduces_query_loss() -> None:
    model = ToyPrompt(dtype=torch.float32, seed=11)
    theta = model.init_theta()
    cfg = MetaConfig(alpha=0.3, lr_theta=0.05, lr_phi=0.05, optimizer="adam", vectorize=True, track_metrics=False)
    state = init_meta_state(theta, init_regulator(theta, cfg.regulator), cfg)
    fixed = [model.task() for _ in range(4)]
    before = float(meta_objective(state.theta, state.phi, fixed, model.loss, cfg))
    for _ in range(30):
        state, _ = meta_step(state, fixed, model.loss, cfg)
    after = float(meta_objective(state.theta, state.phi, fixed, model.loss, cfg))
    assert after < 0.8 * before


def test_double_backward_through_transformer_under_math_attention() -> None:
    """Second-order meta-gradients through nn.TransformerEncoderLayer (MultiheadAttention + SDPA).

    Fused SDPA kernels have no double backward; math_attention() must make this work, and the
    result must agree with finite differences.
    """
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double().eval()
    params = {k: v.detach() for k, v in layer.named_parameters()}
    head = torch.randn(8, K, dtype=torch.double)

    def loss(theta: dict, batch: tuple) -> torch.Tensor:
        x, y = batch  # x: (n, L, 8) token features; theta["ctx"]: (2, 8) prompt tokens prepended
        seq = torch.cat([theta["ctx"].expand(x.shape[0], -1, -1), x], 1)
        out = torch.func.functional_call(layer, params, (seq,))
        return F.cross_entropy(out[:, 0] @ head, y)

    def batch(n: int) -> tuple:
        return torch.randn(n, 3, 8, dtype=torch.double), torch.arange(n) % K

    theta = {"ctx": torch.randn(2, 8, dtype=torch.double) * 0.3}
    cfg = MetaConfig(alpha=0.5, track_metrics=False)
    phi = random_phi(theta, "token_shared")
    tasks = [(batch(3), batch(4))]
    mg = meta_gradients(theta, phi, tasks, loss, cfg)
    fd = central_fd(lambda th: meta_objective(th, phi, tasks, loss, cfg), theta)
    assert rel_err(mg.theta, fd) < 1e-3
    # the vmapped meta-batch goes through MultiheadAttention too
    two = [(batch(3), batch(4)), (batch(3), batch(4))]
    a = meta_gradients(theta, phi, two, loss, cfg)
    b = meta_gradients(theta, phi, two, loss, dataclasses.replace(cfg, vectorize=True))
    torch.testing.assert_close(b.theta["ctx"], a.theta["ctx"], rtol=1e-9, atol=1e-12)
    # and the plain-autograd route works inside the context manager too
    with math_attention():
        ctx = theta["ctx"].clone().requires_grad_(True)
        g, = torch.autograd.grad(loss({"ctx": ctx}, tasks[0][0]), ctx, create_graph=True)
        g.pow(2).sum().backward()
    assert ctx.grad is not None and torch.isfinite(ctx.grad).all()


def test_vectorized_meta_step_is_faster_than_loop() -> None:
    """The vmapped meta-batch must beat the per-task Python loop clearly (target >= 3x at B=16)."""
    model = ToyPrompt(dtype=torch.float32, seed=12)
    theta = model.init_theta()
    tasks = [model.task(10, 15) for _ in range(16)]
    loop = MetaConfig(alpha=0.1)
    vec = dataclasses.replace(loop, vectorize=True)
    phi = init_regulator(theta, loop.regulator)

    def best(cfg: MetaConfig, reps: int = 3) -> float:
        state = init_meta_state(theta, phi, cfg)
        meta_step(state, tasks, model.loss, cfg)  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            meta_step(state, tasks, model.loss, cfg)
            times.append(time.perf_counter() - t0)
        return min(times)

    t_loop, t_vec = best(loop), best(vec)
    # the shared 2-core CI machine is noisy: assert a conservative 2x here; benchmarks measure 3x+
    assert t_loop / t_vec > 2.0, f"loop {t_loop * 1e3:.1f} ms vs vectorized {t_vec * 1e3:.1f} ms"
