"""The gradient regulating function R^phi (eqs. 5-6) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from gramlib.gram.regulator import (
    RegulatorConfig,
    init_regulator,
    modulation,
    regulate_gradient,
    regulator_num_params,
)


def test_identity_returns_the_gradient_unchanged() -> None:
    cfg = RegulatorConfig(kind="identity")
    g = {"ctx": torch.randn(4, 8), "vpt": torch.randn(2, 6)}
    phi = init_regulator({k: v.shape for k, v in g.items()}, cfg)
    assert phi == {}
    out = regulate_gradient(phi, g, cfg)
    assert set(out) == set(g)
    for k in g:
        assert torch.equal(out[k], g[k])


@pytest.mark.parametrize("kind", ["token_shared", "elementwise", "full"])
def test_initialisation_is_near_plain_gradient(kind: str) -> None:
    """W = 0, gamma = tanh(b^gamma) = gamma_init (< 1 since tanh never reaches 1), beta = 0."""
    cfg = RegulatorConfig(kind=kind)
    g = {"ctx": torch.randn(4, 8) * 1e-3, "vpt": torch.randn(2, 6) * 1e-3}
    phi = init_regulator(g, cfg)
    gammas, betas = modulation(phi, g, cfg)
    for k in g:
        torch.testing.assert_close(gammas[k], torch.full_like(g[k], 0.95))
        assert torch.equal(betas[k], torch.zeros_like(g[k]))
    out = regulate_gradient(phi, g, cfg)
    for k in g:
        torch.testing.assert_close(out[k], 0.95 * g[k])
    for name, p in phi.items():
        if ".W_" in name:
            assert torch.equal(p, torch.zeros_like(p))


def test_parameter_shapes_follow_eq6_for_unigram_sized_prompts() -> None:
    """UNIGRAM: text context (2, 512) and visual prompts (2, 768), each with its own regulator."""
    shapes = {"text_ctx": (2, 512), "visual_ctx": (2, 768)}
    phi = init_regulator(shapes, RegulatorConfig(kind="token_shared"))
    assert phi["text_ctx.W_gamma"].shape == (512, 512) and phi["visual_ctx.W_beta"].shape == (768, 768)
    assert phi["text_ctx.b_gamma"].shape == (2, 512) and phi["visual_ctx.b_beta"].shape == (2, 768)
    assert regulator_num_params(phi) == 2 * (512 * 512 + 2 * 512) + 2 * (768 * 768 + 2 * 768)
    g = {k: torch.randn(*s) for k, s in shapes.items()}
    phi = {k: v + 0.01 * torch.randn_like(v) for k, v in phi.items()}
    gammas, betas = modulation(phi, g, RegulatorConfig())
    out = regulate_gradient(phi, g, RegulatorConfig())
    for k, s in shapes.items():
        assert gammas[k].shape == betas[k].shape == out[k].shape == s  # gamma_t, beta_t in R^{d x M}
    elem = init_regulator(shapes, RegulatorConfig(kind="elementwise"))
    assert elem["text_ctx.W_gamma"].shape == (2, 512)
    full = init_regulator({"ctx": (2, 3)}, RegulatorConfig(kind="full"))
    assert full["ctx.W_gamma"].shape == (6, 6) and full["ctx.b_gamma"].shape == (2, 3)


def test_hand_computed_token_shared_example() -> None:
    """Two tokens of width 2; W acts on each token's width vector (W g_m), shared by the tokens."""
    cfg = RegulatorConfig(kind="token_shared", input_norm="none", beta_scale="none")
    g = {"p": torch.tensor([[0.1, -0.2], [0.3, 0.0]], dtype=torch.float64)}  # rows: tokens g_1, g_2
    phi = {
        "p.W_gamma": torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=torch.float64),
        "p.b_gamma": torch.tensor([[0.1, 0.2], [0.3, 0.4]], dtype=torch.float64),
        "p.W_beta": torch.tensor([[0.5, 0.0], [1.0, 1.0]], dtype=torch.float64),
        "p.b_beta": torch.zeros(2, 2, dtype=torch.float64),
    }
    # token 1: W^g g_1 = (0.1 - 0.4, 0.2) = (-0.3, 0.2);  + b = (-0.2, 0.4);  W^b g_1 = (0.05, -0.1)
    # token 2: W^g g_2 = (0.3, 0.0);                     + b = (0.6, 0.4);   W^b g_2 = (0.15, 0.3)
    gamma = [[math.tanh(-0.2), math.tanh(0.4)], [math.tanh(0.6), math.tanh(0.4)]]
    beta = [[math.tanh(0.05), math.tanh(-0.1)], [math.tanh(0.15), math.tanh(0.3)]]
    gv = [[0.1, -0.2], [0.3, 0.0]]
    expected = torch.tensor(
        [[gamma[m][i] * gv[m][i] + beta[m][i] for i in range(2)] for m in range(2)], dtype=torch.float64
    )
    gammas, betas = modulation(phi, g, cfg)
    torch.testing.assert_close(gammas["p"], torch.tensor(gamma, dtype=torch.float64))
    torch.testing.assert_close(betas["p"], torch.tensor(beta, dtype=torch.float64))
    torch.testing.assert_close(regulate_gradient(phi, g, cfg)["p"], expected)


def test_hand_computed_elementwise_and_full_examples() -> None:
    g = {"p": torch.tensor([[0.5, -1.0]], dtype=torch.float64)}  # one token of width 2
    elem = {
        "p.W_gamma": torch.tensor([[2.0, 3.0]], dtype=torch.float64),
        "p.b_gamma": torch.tensor([[0.0, 1.0]], dtype=torch.float64),
        "p.W_beta": torch.tensor([[1.0, 0.0]], dtype=torch.float64),
        "p.b_beta": torch.tensor([[0.0, 0.2]], dtype=torch.float64),
    }
    cfg = RegulatorConfig(kind="elementwise", input_norm="none", beta_scale="none")
    # gamma = tanh(2*0.5 + 0, 3*(-1) + 1) = tanh(1, -2);  beta = tanh(0.5, 0.2)
    exp = [math.tanh(1.0) * 0.5 + math.tanh(0.5), math.tanh(-2.0) * -1.0 + math.tanh(0.2)]
    torch.testing.assert_close(regulate_gradient(elem, g, cfg)["p"], torch.tensor([exp], dtype=torch.float64))

    full = {
        "p.W_gamma": torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64),  # swaps the entries
        "p.b_gamma": torch.zeros(1, 2, dtype=torch.float64),
        "p.W_beta": torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64),
        "p.b_beta": torch.zeros(1, 2, dtype=torch.float64),
    }
    cfg = RegulatorConfig(kind="full", input_norm="none", beta_scale="none")
    # gamma = tanh(-1, 0.5);  beta = tanh(-0.5, 0)
    exp = [math.tanh(-1.0) * 0.5 + math.tanh(-0.5), math.tanh(0.5) * -1.0]
    torch.testing.assert_close(regulate_gradient(full, g, cfg)["p"], torch.tensor([exp], dtype=torch.float64))


def test_kinds_are_nested_special_cases_of_full() -> None:
    """token_shared is full with W = I_M (x) W_d; elementwise is full with a diagonal W."""
    torch.manual_seed(0)
    m, d = 3, 4
    g = {"p": torch.randn(m, d, dtype=torch.float64)}
    ts = {k: torch.randn_like(v) for k, v in init_regulator({"p": (m, d)}, RegulatorConfig(), dtype=torch.float64).items()}
    as_full = dict(ts)
    for w in ("W_gamma", "W_beta"):
        as_full[f"p.{w}"] = torch.kron(torch.eye(m, dtype=torch.float64), ts[f"p.{w}"])
    for norm in ("none", "rms"):
        a = regulate_gradient(ts, g, RegulatorConfig(kind="token_shared", input_norm=norm))["p"]
        b = regulate_gradient(as_full, g, RegulatorConfig(kind="full", input_norm=norm))["p"]
        torch.testing.assert_close(a, b)
    el = {k: torch.randn_like(v) for k, v in init_regulator({"p": (m, d)}, RegulatorConfig(kind="elementwise"), dtype=torch.float64).items()}
    el_full = dict(el)
    for w in ("W_gamma", "W_beta"):
        el_full[f"p.{w}"] = torch.diag(el[f"p.{w}"].reshape(-1))
    a = regulate_gradient(el, g, RegulatorConfig(kind="elementwise"))["p"]
    b = regulate_gradient(el_full, g, RegulatorConfig(kind="full"))["p"]
    torch.testing.assert_close(a, b)


def test_rms_input_makes_modulation_scale_free() -> None:
    """With input_norm='rms' gamma and beta see g / rms(g): the same for g and 1000 g."""
    torch.manual_seed(1)
    g = {"p": torch.randn(2, 5, dtype=torch.float64) * 1e-3}
    phi = {k: v + torch.randn_like(v) for k, v in init_regulator(g, RegulatorConfig()).items()}
    big = {"p": g["p"] * 1000}
    cfg = RegulatorConfig(input_norm="rms")
    for a, b in zip(modulation(phi, g, cfg), modulation(phi, big, cfg)):
        torch.testing.assert_close(a["p"], b["p"])
    # the literal eq. 5 on a ~1e-3 gradient: W g is negligible, gamma ~ tanh(b^gamma)
    lit = RegulatorConfig(input_norm="none")
    gam, _ = modulation(phi, g, lit)
    torch.testing.assert_close(gam["p"], torch.tanh(phi["p.b_gamma"]), atol=1e-2, rtol=0)
    # a zero gradient stays finite under rms normalisation
    zero = {"p": torch.zeros(2, 5, dtype=torch.float64)}
    assert torch.isfinite(regulate_gradient(phi, zero, cfg)["p"]).all()


def test_dtype_device_follow_theta_tensors_and_config_is_validated() -> None:
    theta = {"ctx": torch.zeros(2, 3, dtype=torch.float64)}
    phi = init_regulator(theta, RegulatorConfig())
    assert all(v.dtype == torch.float64 for v in phi.values())
    with pytest.raises(ValueError, match="gamma_init"):
        RegulatorConfig(gamma_init=1.0)
    with pytest.raises(ValueError, match="kind"):
        RegulatorConfig(kind="diagonal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(M, d\)"):
        init_regulator({"ctx": (1, 2, 3)}, RegulatorConfig())
    with pytest.raises(KeyError, match="vpt"):
        regulate_gradient(phi, {"vpt": torch.zeros(2, 3)}, RegulatorConfig())


def test_beta_scaled_by_gradient_rms_by_hand() -> None:
    """beta_scale='rms': g_hat = gamma * g + rms(g) * beta (eq. 6 in normalised units)."""
    g = {"p": torch.tensor([[3.0, -4.0]], dtype=torch.float64)}  # rms = sqrt((9 + 16) / 2)
    phi = {"p.W_gamma": torch.zeros(1, 2, dtype=torch.float64), "p.b_gamma": torch.tensor([[0.5, 0.5]], dtype=torch.float64),
           "p.W_beta": torch.zeros(1, 2, dtype=torch.float64), "p.b_beta": torch.tensor([[0.2, -0.1]], dtype=torch.float64)}
    rms = math.sqrt(12.5)
    exp = [[math.tanh(0.5) * 3.0 + rms * math.tanh(0.2), math.tanh(0.5) * -4.0 + rms * math.tanh(-0.1)]]
    out = regulate_gradient(phi, g, RegulatorConfig(kind="elementwise", beta_scale="rms", norm_eps=0.0))["p"]
    torch.testing.assert_close(out, torch.tensor(exp, dtype=torch.float64))
    # scaling g scales the whole regulated gradient: beta no longer dominates a small gradient
    small = regulate_gradient(phi, {"p": g["p"] * 1e-3}, RegulatorConfig(kind="elementwise", beta_scale="rms", norm_eps=0.0))["p"]
    torch.testing.assert_close(small, out * 1e-3)
