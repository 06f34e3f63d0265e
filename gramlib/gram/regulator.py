"""The gradient regulating function R^phi of GRAM (paper §3.3, eqs. 5-6).

R^phi maps the raw support gradient g of the prompt parameters to a regulated gradient

    gamma = tanh(W^gamma g + b^gamma),   beta = tanh(W^beta g + b^beta)        (eq. 5)
    g_hat = gamma ⊙ g + beta                                                  (eq. 6)

which replaces g in the inner-loop update theta' = theta - alpha R^phi(g) (eq. 7).

Everything here is a pure function over parameter dicts (torch.func style): theta, its gradient
and phi are ``dict[str, Tensor]``; each theta entry is shaped (M, d) -- M prompt tokens of width d
-- and gets its own regulator parameters, so prompts of different widths (UNIGRAM: text context
(2, 512) and visual prompts (2, 768)) are regulated side by side.  The functions are
``torch.func.vmap``/``grad`` friendly (no in-place ops, no data-dependent Python control flow).

Reproduction notes (choices the paper leaves open, made explicit here):

* **Shape of W.**  The paper writes g in R^{d x M} and W^gamma g without giving W's shape.  The
  default ``kind="token_shared"`` reads it literally as a d x d matrix acting on the width axis and
  shared by the M tokens (one (W^gamma, W^beta) pair per theta entry; d^2 parameters, i.e. 0.26 M
  per 512-wide entry -- "lightweight").  ``"elementwise"`` uses a diagonal W (an (M, d) scale),
  ``"full"`` a (M d) x (M d) matrix over the flattened prompt, and ``"identity"`` turns the
  regulator off (R(g) = g, an empty phi), which is plain MAML on prompts (eq. 4).
* **Shape of b.**  Biases are per element, (M, d): with W = 0 the regulator is then still a
  learnable per-token, per-channel scale gamma and shift beta.
* **Initialisation.**  W = 0 and b^gamma = atanh(gamma_init), b^beta = atanh(beta_init), so at
  initialisation R(g) = gamma_init * g + beta_init: meta-training starts from (almost) plain MAML.
  gamma_init defaults to 0.95 because tanh never reaches 1 (atanh(1) is infinite).  The gradient
  with respect to W is non-zero at W = 0, so W still learns.
* **Input normalisation.**  Raw prompt gradients are ~1e-3, so with the literal eq. 5 the term
  W g is negligible next to b and gamma/beta collapse to the constants tanh(b): the regulator
  could never react to the gradient.  ``input_norm="rms"`` (the default) feeds g / rms(g) (one
  RMS per theta entry and per task) to the two W maps; eq. 6 still multiplies the *raw* g.
  ``input_norm="none"`` is the literal formula, kept for ablations.
* **beta's scale.**  beta lies in (-1, 1) while g is ~1e-3, so with the literal eq. 6 a learned
  beta soon dominates the update: the regulated gradient becomes a task-independent drift that
  lowers the meta-loss but *decreases* the support/query gradient alignment eq. 12 says GRAM
  maximises (measured on the mini profile: cosine 0.30 -> 0.10).  ``beta_scale="rms"`` (the
  default) applies eq. 6 in the same normalised units as eq. 5's input,
  g_hat = rms(g) * (gamma ⊙ g / rms(g) + beta) = gamma ⊙ g + rms(g) * beta, so beta is a shift
  relative to the gradient's own size.  ``beta_scale="none"`` with ``input_norm="none"`` is the
  paper's formula to the letter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch
from torch import Tensor

Kind = Literal["token_shared", "elementwise", "full", "identity"]
InputNorm = Literal["none", "rms"]
BetaScale = Literal["none", "rms"]
KINDS: tuple[str, ...] = ("token_shared", "elementwise", "full", "identity")


@dataclass(frozen=True)
class RegulatorConfig:
    """How R^phi is parameterised (see the module's reproduction notes for why each default)."""

    kind: Kind = "token_shared"
    gamma_init: float = 0.95
    beta_init: float = 0.0
    input_norm: InputNorm = "rms"
    beta_scale: BetaScale = "rms"
    norm_eps: float = 1e-20  # added to mean(g^2) before the square root; keeps g = 0 finite

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"RegulatorConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.input_norm not in ("none", "rms"):
            raise ValueError(f"RegulatorConfig.input_norm must be 'none' or 'rms', got {self.input_norm!r}")
        if self.beta_scale not in ("none", "rms"):
            raise ValueError(f"RegulatorConfig.beta_scale must be 'none' or 'rms', got {self.beta_scale!r}")
        for name in ("gamma_init", "beta_init"):
            value = getattr(self, name)
            if not -1.0 < value < 1.0:
                raise ValueError(f"RegulatorConfig.{name} must lie in (-1, 1) (it is a tanh output), got {value}")


PHI_FIELDS = ("W_gamma", "b_gamma", "W_beta", "b_beta")


def phi_key(entry: str, field: str) -> str:
    """Name of one regulator parameter of theta entry ``entry`` (e.g. ``"ctx.W_gamma"``)."""
    return f"{entry}.{field}"


def _w_shape(kind: str, m: int, d: int) -> tuple[int, ...]:
    if kind == "token_shared":
        return (d, d)
    if kind == "elementwise":
        return (m, d)
    if kind == "full":
        return (m * d, m * d)
    raise ValueError(f"no W for regulator kind {kind!r}")


def init_regulator(
    theta_shapes: Mapping[str, Sequence[int] | torch.Size | Tensor],
    cfg: RegulatorConfig = RegulatorConfig(),
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Initial phi for prompts of the given shapes: W = 0, b set so that R(g) = gamma_init g + beta_init.

    ``theta_shapes`` maps each theta entry to its (M, d) shape, or to the tensor itself (then its
    dtype and device are used unless given).  Returns an empty dict for ``kind="identity"``.
    """
    phi: dict[str, Tensor] = {}
    if cfg.kind == "identity":
        return phi
    for name, spec in theta_shapes.items():
        if isinstance(spec, Tensor):
            shape = tuple(spec.shape)
            dt = dtype or spec.dtype
            dev = device if device is not None else spec.device
        else:
            shape = tuple(int(s) for s in spec)
            dt = dtype or torch.get_default_dtype()
            dev = device
        if len(shape) != 2:
            raise ValueError(f"theta[{name!r}] must be shaped (M, d) (prompt tokens x width), got {shape}")
        m, d = shape
        w_shape = _w_shape(cfg.kind, m, d)
        phi[phi_key(name, "W_gamma")] = torch.zeros(w_shape, dtype=dt, device=dev)
        phi[phi_key(name, "b_gamma")] = torch.full((m, d), math.atanh(cfg.gamma_init), dtype=dt, device=dev)
        phi[phi_key(name, "W_beta")] = torch.zeros(w_shape, dtype=dt, device=dev)
        phi[phi_key(name, "b_beta")] = torch.full((m, d), math.atanh(cfg.beta_init), dtype=dt, device=dev)
    return phi


def _rms(g: Tensor, cfg: RegulatorConfig) -> Tensor:
    return torch.sqrt(g.pow(2).mean() + cfg.norm_eps)


def _regulator_input(g: Tensor, cfg: RegulatorConfig) -> Tensor:
    """What the W maps see: g itself (paper) or g / rms(g) (see reproduction notes)."""
    if cfg.input_norm == "none":
        return g
    return g / _rms(g, cfg)


def _affine(w: Tensor, x: Tensor, b: Tensor, kind: str) -> Tensor:
    """W x + b for one (M, d) gradient, with W's action depending on the regulator kind."""
    if kind == "token_shared":
        return x @ w.transpose(0, 1) + b  # each token column g_m -> W g_m (W acts on the width axis)
    if kind == "elementwise":
        return w * x + b
    if kind == "full":
        return (w @ x.reshape(-1)).reshape(x.shape) + b
    raise ValueError(f"unknown regulator kind {kind!r}")


def modulation(phi: Mapping[str, Tensor], grads: Mapping[str, Tensor], cfg: RegulatorConfig) -> tuple[dict, dict]:
    """The modulation vectors (gamma_t, beta_t) of eq. 5, one (M, d) pair per theta entry.

    For ``kind="identity"`` gamma = 1 and beta = 0 (so eq. 6 returns g unchanged).
    """
    gammas: dict[str, Tensor] = {}
    betas: dict[str, Tensor] = {}
    for name, g in grads.items():
        if cfg.kind == "identity":
            gammas[name] = torch.ones_like(g)
            betas[name] = torch.zeros_like(g)
            continue
        try:
            w_g, b_g = phi[phi_key(name, "W_gamma")], phi[phi_key(name, "b_gamma")]
            w_b, b_b = phi[phi_key(name, "W_beta")], phi[phi_key(name, "b_beta")]
        except KeyError as exc:
            raise KeyError(f"phi has no regulator parameters for theta entry {name!r} (missing {exc})") from None
        x = _regulator_input(g, cfg)
        gammas[name] = torch.tanh(_affine(w_g, x, b_g, cfg.kind))  # eq. 5
        betas[name] = torch.tanh(_affine(w_b, x, b_b, cfg.kind))  # eq. 5
    return gammas, betas


def regulate_gradient(phi: Mapping[str, Tensor], grads: Mapping[str, Tensor], cfg: RegulatorConfig) -> dict[str, Tensor]:
    """R^phi(g): the regulated gradient g_hat = gamma ⊙ g + beta of eqs. 5-6, entry by entry.

    ``kind="identity"`` returns the input gradients unchanged (the same tensors).
    """
    if cfg.kind == "identity":
        return dict(grads)
    gammas, betas = modulation(phi, grads, cfg)
    if cfg.beta_scale == "rms":  # eq. 6 in the gradient's own units (reproduction notes)
        return {name: gammas[name] * g + _rms(g, cfg) * betas[name] for name, g in grads.items()}
    return {name: gammas[name] * g + betas[name] for name, g in grads.items()}  # eq. 6


def regulator_num_params(phi: Mapping[str, Tensor]) -> int:
    """Number of scalars in phi (the paper calls R^phi lightweight; this says how light)."""
    return int(sum(p.numel() for p in phi.values()))
