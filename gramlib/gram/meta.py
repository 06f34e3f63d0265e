"""GRAM's bi-level meta-learning loop (paper §3.3, eqs. 4 and 7-10, Algorithm 1) as pure functions.

theta (the prompt parameters of any prompt learner) and phi (the regulator R^phi, see
:mod:`gramlib.gram.regulator`) are ``dict[str, Tensor]``.  A task loss is a pure callable
``loss_fn(theta, batch) -> scalar`` supplied by the caller (a learner's forward on cached
features plus cross-entropy); batches are opaque here.  A task is a ``(support, query)`` pair (or
any object with ``.support`` and ``.query``).

    inner_step        theta'_t = theta - alpha R^phi(grad_theta L(theta, D_support))    eqs. 4 / 7
    meta_objective    sum_t L(theta'_t, D_query)                                      eq. 10
    meta_gradients    d(eq. 10)/d theta and d(eq. 10)/d phi                            eqs. 8-9
    meta_step         one outer update of theta (lr lambda_1) and phi (lr lambda_2)    eqs. 8-9

The meta-gradient is exact second order by default (the inner torch.func.grad is differentiated
again by the outer derivative: torch.autograd.grad, or torch.func.grad with outer_grad="func");
``first_order=True`` treats the support gradients as constants (FO-MAML) but keeps phi's path
through R^phi, so phi still learns.  All of it runs under :func:`math_attention`: PyTorch has no
double backward for the fused scaled-dot-product-attention kernels.

``vectorize=True`` evaluates a meta-batch of equally shaped tasks with one ``torch.func.vmap``
instead of a Python loop (the loop is kept as the readable reference; tests check they agree).

Reproduction notes (choices the paper leaves open):

* Several inner steps (``inner_steps > 1``) apply the same R^phi at every step, each to the
  gradient at the current adapted parameters; the paper describes one step.
* ``first_order=True`` detaches every support gradient g (no Hessian-vector products), so theta's
  meta-gradient is FO-MAML's sum_t grad L_query(theta'_t); phi's gradient through R^phi(g) is kept
  (for one inner step it is then still exact).
* Eq. 10 and Algorithm 1 *sum* the query losses over the meta-batch (``reduction="sum"``), so the
  effective outer step grows with the meta-batch size; ``reduction="mean"`` is offered for
  sweeps over B.
* Figure 3b's gradient alignment is measured at the meta-parameters theta (eq. 12 expands around
  x0 = theta): cos(R^phi(grad L_support(theta)), grad L_query(theta)), averaged over the tasks of
  a step; ``grad_cosine_raw`` is the same without R^phi.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator, Literal, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap
from torch.utils import _pytree as pytree

from gramlib.gram.regulator import RegulatorConfig, modulation, regulate_gradient

Params = dict[str, Tensor]
LossFn = Callable[[Mapping[str, Tensor], Any], Tensor]


@dataclass(frozen=True)
class MetaConfig:
    """Hyper-parameters of Algorithm 1 (names follow the paper's symbols)."""

    alpha: float = 0.01  # inner-loop learning rate (eqs. 4, 7)
    inner_steps: int = 1  # gradient steps on the support set; the paper uses 1
    lr_theta: float = 1e-3  # lambda_1, outer learning rate of theta (eq. 8)
    lr_phi: float = 1e-3  # lambda_2, outer learning rate of phi (eq. 9)
    first_order: bool = False  # FO-MAML: support gradients as constants (phi keeps its path)
    regulate: bool = True  # False: plain MAML on prompts (eq. 4 instead of eq. 7)
    optimizer: Literal["sgd", "adam"] = "sgd"  # "sgd" is eqs. 8-9 literally
    momentum: float = 0.0  # SGD momentum (ignored by Adam)
    meta_batch: int = 4  # tasks per outer step (B in Algorithm 1; used by the task sampler)
    reduction: Literal["sum", "mean"] = "sum"  # eq. 10 / Alg. 1 sum over tasks; "mean" decouples lr from B
    vectorize: bool = False  # vmap over the meta-batch (tasks must be equally shaped)
    vmap_chunk_size: int | None = None  # bound memory of the vmapped path
    track_metrics: bool = True  # Figure 3b alignment + before/after losses (costs ~1 extra fwd/bwd per task)
    outer_grad: Literal["autograd", "func"] = "autograd"  # how the outer (meta) derivative is taken
    regulator: RegulatorConfig = field(default_factory=RegulatorConfig)

    def __post_init__(self) -> None:
        if self.inner_steps < 1:
            raise ValueError(f"MetaConfig.inner_steps must be >= 1, got {self.inner_steps}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"MetaConfig.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.outer_grad not in ("autograd", "func"):
            raise ValueError(f"MetaConfig.outer_grad must be 'autograd' or 'func', got {self.outer_grad!r}")
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"MetaConfig.reduction must be 'sum' or 'mean', got {self.reduction!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Attention that can be differentiated twice (and vmapped) on the meta-gradient path.

    Forces the math SDPA backend (the fused flash / memory-efficient / CPU-flash kernels have no
    double backward) and switches off the nn.MultiheadAttention / TransformerEncoderLayer
    "fast path": under ``vmap`` the wrapped inputs do not report ``requires_grad``, so an eval-mode
    layer would otherwise take ``_transformer_encoder_layer_fwd``, which has no derivative at all.
    Both settings are restored on exit.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _detach(params: Mapping[str, Tensor]) -> Params:
    return {k: v.detach() for k, v in params.items()}


def _split_task(task: Any) -> tuple[Any, Any]:
    if hasattr(task, "support") and hasattr(task, "query"):
        return task.support, task.query
    support, query = task
    return support, query


def _cosine(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """Cosine between two parameter dicts seen as one flat vector (eq. 12's inner product, normalised)."""
    dot = sum((a[k] * b[k]).sum() for k in a)
    na = sum(a[k].pow(2).sum() for k in a)
    nb = sum(b[k].pow(2).sum() for k in b)
    return dot / torch.clamp_min(torch.sqrt(na) * torch.sqrt(nb), 1e-30)


@dataclass(frozen=True)
class StackedTasks:
    """A meta-batch whose support (and query) batches are stacked along a new leading task axis.

    Build it once with :func:`stack_tasks` (e.g. in the task sampler) to skip re-stacking per step;
    passing one to the meta functions selects the vectorized path.
    """

    support: Any
    query: Any

    def __len__(self) -> int:  # number of tasks
        return int(pytree.tree_leaves(self.support)[0].shape[0])


def stack_tasks(tasks: Sequence[Any]) -> StackedTasks:
    """Stack equally shaped tasks (pytrees of tensors) for the vectorized path."""
    if isinstance(tasks, StackedTasks):
        return tasks
    if len(tasks) == 0:
        raise ValueError("empty meta-batch")
    pairs = [_split_task(t) for t in tasks]

    def stack(batches: list[Any], which: str) -> Any:
        flat0, spec0 = pytree.tree_flatten(batches[0])
        columns: list[list[Tensor]] = [[] for _ in flat0]
        for i, b in enumerate(batches):
            flat, spec = pytree.tree_flatten(b)
            if spec != spec0:
                raise ValueError(f"task {i}: {which} batch structure differs from task 0; cannot vectorize")
            for j, leaf in enumerate(flat):
                if not isinstance(leaf, Tensor):
                    raise TypeError(f"task {i}: {which} batch has a non-tensor leaf ({type(leaf).__name__}); cannot vectorize")
                if leaf.shape != flat0[j].shape:
                    raise ValueError(
                        f"task {i}: {which} tensor {j} has shape {tuple(leaf.shape)} but task 0 has "
                        f"{tuple(flat0[j].shape)}; vectorize=True needs equally shaped tasks"
                    )
                columns[j].append(leaf)
        return pytree.tree_unflatten([torch.stack(c) for c in columns], spec0)

    return StackedTasks(stack([p[0] for p in pairs], "support"), stack([p[1] for p in pairs], "query"))


# ----------------------------------------------------------------------------------------------
# inner loop (eqs. 4 and 7)


class _InnerTrace(NamedTuple):
    theta_prime: Params
    support_grad: Params  # raw g at the initial theta (Alg. 1 line 5)
    regulated_grad: Params  # R^phi(g) at the initial theta (Alg. 1 line 6)
    support_loss: Tensor  # L(theta, D_support) before adaptation


def _inner_loop(
    theta: Mapping[str, Tensor], phi: Mapping[str, Tensor], support: Any, loss_fn: LossFn, cfg: MetaConfig
) -> _InnerTrace:
    theta = dict(theta)
    first: tuple[Params, Params, Tensor] | None = None
    for _ in range(cfg.inner_steps):
        g, loss = grad_and_value(loss_fn)(theta, support)  # Alg. 1 line 5
        if cfg.first_order:
            g = _detach(g)  # FO-MAML: no second derivatives of L; phi's path through R^phi remains
        g_hat = regulate_gradient(phi, g, cfg.regulator) if cfg.regulate else g  # eqs. 5-6 (line 6)
        if first is None:
            first = (g, g_hat, loss)
        theta = {k: theta[k] - cfg.alpha * g_hat[k] for k in theta}  # eq. 7 (eq. 4 when unregulated)
    assert first is not None
    return _InnerTrace(theta, *first)


def inner_step(
    theta: Mapping[str, Tensor], phi: Mapping[str, Tensor], support: Any, loss_fn: LossFn, cfg: MetaConfig
) -> Params:
    """Adapt theta to one task: ``cfg.inner_steps`` steps of theta <- theta - alpha R^phi(g) (eq. 7).

    With ``cfg.regulate=False`` this is eq. 4.  Differentiable with respect to theta and phi
    (through torch.autograd or torch.func transforms); it is also the test-time adaptation rule of
    §3.3 (pass detached theta there).
    """
    return _inner_loop(theta, phi, support, loss_fn, cfg).theta_prime


# ----------------------------------------------------------------------------------------------
# outer loop (eqs. 8-10)


def _task_objective(
    theta: Params, phi: Params, support: Any, query: Any, loss_fn: LossFn, cfg: MetaConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """L(theta'_t, D_query) for one task, plus detached diagnostics (Figure 3b)."""
    trace = _inner_loop(theta, phi, support, loss_fn, cfg)
    query_loss = loss_fn(trace.theta_prime, query)
    aux: dict[str, Tensor] = {"query_loss_after": query_loss.detach()}
    if cfg.track_metrics:
        theta0 = _detach(theta)
        g_query, query_before = grad_and_value(loss_fn)(theta0, query)
        g_sup, g_hat = _detach(trace.support_grad), _detach(trace.regulated_grad)
        aux["query_loss_before"] = query_before.detach()
        aux["support_loss_before"] = trace.support_loss.detach()
        aux["support_loss_after"] = loss_fn(_detach(trace.theta_prime), support).detach()
        aux["grad_cosine"] = _cosine(g_hat, g_query).detach()  # eq. 12: <R(g_support), g_query>, normalised
        aux["grad_cosine_raw"] = _cosine(g_sup, g_query).detach()
        if cfg.regulate and cfg.regulator.kind != "identity":
            gammas, betas = modulation(_detach(phi), g_sup, cfg.regulator)
            n = sum(v.numel() for v in gammas.values())
            aux["gamma_mean"] = sum(v.sum() for v in gammas.values()) / n
            aux["beta_abs_mean"] = sum(v.abs().sum() for v in betas.values()) / n
    return query_loss, aux


def _objective_with_aux(
    theta: Params, phi: Params, tasks: Sequence[Any] | StackedTasks, loss_fn: LossFn, cfg: MetaConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. 10 over a meta-batch, with per-task diagnostics stacked into (B,) tensors."""
    task_fn = partial(_task_objective, loss_fn=loss_fn, cfg=cfg)
    if cfg.vectorize or isinstance(tasks, StackedTasks):
        stacked = stack_tasks(tasks)
        batched = vmap(task_fn, in_dims=(None, None, 0, 0), chunk_size=cfg.vmap_chunk_size, randomness="different")
        losses, aux = batched(theta, phi, stacked.support, stacked.query)
    else:  # the readable reference: Algorithm 1, lines 4-8, one task at a time
        if len(tasks) == 0:
            raise ValueError("empty meta-batch")
        per_task = []
        for task in tasks:
            support, query = _split_task(task)
            per_task.append(task_fn(theta, phi, support, query))
        losses = torch.stack([loss for loss, _ in per_task])
        aux = {k: torch.stack([a[k] for _, a in per_task]) for k in per_task[0][1]}
    total = losses.sum() if cfg.reduction == "sum" else losses.mean()
    return total, aux


def meta_objective(
    theta: Mapping[str, Tensor], phi: Mapping[str, Tensor], tasks: Sequence[Any], loss_fn: LossFn, cfg: MetaConfig
) -> Tensor:
    """Eq. 10: sum over the meta-batch of L(theta - alpha R^phi(grad L(theta, D_support)), D_query)."""
    with math_attention():
        return _objective_with_aux(dict(theta), dict(phi), tasks, loss_fn, cfg)[0]


class MetaGradients(NamedTuple):
    theta: Params  # d(eq. 10)/d theta, used by eq. 8
    phi: Params  # d(eq. 10)/d phi, used by eq. 9 (zeros when cfg.regulate is False)
    meta_loss: Tensor  # value of eq. 10
    aux: dict[str, Tensor]  # per-task diagnostics, each (B,)


def meta_gradients(
    theta: Mapping[str, Tensor], phi: Mapping[str, Tensor], tasks: Sequence[Any], loss_fn: LossFn, cfg: MetaConfig
) -> MetaGradients:
    """Gradients of eq. 10 with respect to theta and phi (second order unless ``cfg.first_order``).

    The inner gradients are always ``torch.func.grad``; the outer derivative is taken by
    ``torch.autograd.grad`` over the same pure objective (``cfg.outer_grad="autograd"``, measured
    ~1.5x faster on CPU: one functorch level less per op) or by a nested ``torch.func.grad``
    (``"func"``).  Both are exact and agree to rounding (tested).  With the autograd outer, keep the
    frozen backbone's parameters at ``requires_grad=False`` so no graph is built for them.
    """
    wrt_phi = cfg.regulate and len(phi) > 0  # phi plays no part in eq. 4: skip differentiating it
    with math_attention():
        if cfg.outer_grad == "func":
            theta_d, phi_d = _detach(theta), _detach(phi)
            if wrt_phi:
                fn = grad_and_value(partial(_objective_with_aux, tasks=tasks, loss_fn=loss_fn, cfg=cfg), argnums=(0, 1), has_aux=True)
                (g_theta, g_phi), (value, aux) = fn(theta_d, phi_d)
            else:
                fn = grad_and_value(lambda th: _objective_with_aux(th, phi_d, tasks, loss_fn, cfg), argnums=0, has_aux=True)
                g_theta, (value, aux) = fn(theta_d)
                g_phi = {}
        else:
            theta_d = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
            phi_d = {k: v.detach().requires_grad_(wrt_phi) for k, v in phi.items()}
            value, aux = _objective_with_aux(theta_d, phi_d, tasks, loss_fn, cfg)
            inputs = list(theta_d.values()) + (list(phi_d.values()) if wrt_phi else [])
            grads = torch.autograd.grad(value, inputs)
            g_theta = dict(zip(theta_d, grads[: len(theta_d)]))
            g_phi = dict(zip(phi_d, grads[len(theta_d) :])) if wrt_phi else {}
        if not wrt_phi:
            g_phi = {k: torch.zeros_like(v) for k, v in phi.items()}
    aux = {k: v.detach() for k, v in aux.items()}
    return MetaGradients(dict(g_theta), dict(g_phi), value.detach(), aux)


# ----------------------------------------------------------------------------------------------
# state and the outer update


@dataclass
class MetaState:
    """What changes during meta-training: theta, phi, their optimizers and the step counter."""

    theta: Params
    phi: Params
    opt_theta: torch.optim.Optimizer
    opt_phi: torch.optim.Optimizer | None  # None when phi is empty or not trained (regulate=False)
    step: int = 0


def _make_optimizer(params: list[Tensor], lr: float, cfg: MetaConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum)


def init_meta_state(
    theta: Mapping[str, Tensor], phi: Mapping[str, Tensor], cfg: MetaConfig, *, copy: bool = True
) -> MetaState:
    """Wrap theta and phi with their outer optimizers (lr lambda_1 and lambda_2 of eqs. 8-9).

    With ``copy=True`` the state owns fresh tensors; with ``copy=False`` it updates the given
    tensors' storage in place (e.g. a prompt learner's parameters).
    """
    conv = (lambda v: v.detach().clone()) if copy else (lambda v: v.detach())
    theta_s = {k: conv(v) for k, v in theta.items()}
    phi_s = {k: conv(v) for k, v in phi.items()}
    opt_theta = _make_optimizer(list(theta_s.values()), cfg.lr_theta, cfg)
    opt_phi = _make_optimizer(list(phi_s.values()), cfg.lr_phi, cfg) if (phi_s and cfg.regulate) else None
    return MetaState(theta_s, phi_s, opt_theta, opt_phi, 0)


def _apply(opt: torch.optim.Optimizer, params: Params, grads: Params) -> None:
    for k, p in params.items():
        p.grad = grads[k].to(p.dtype)
    opt.step()
    for p in params.values():
        p.grad = None


def meta_step(
    state: MetaState, tasks: Sequence[Any], loss_fn: LossFn, cfg: MetaConfig
) -> tuple[MetaState, dict[str, float]]:
    """One iteration of Algorithm 1: meta-gradients of eq. 10, then eq. 8 (theta) and eq. 9 (phi).

    Updates ``state`` in place (its optimizers hold its tensors) and returns it with a metrics
    dict: meta_loss, mean support/query losses before and after adaptation, and ``grad_cosine``,
    the cosine between R^phi(grad L_support(theta)) and grad L_query(theta) (eq. 12, Figure 3b),
    with ``grad_cosine_raw`` for the unregulated support gradient, both averaged over tasks.
    """
    mg = meta_gradients(state.theta, state.phi, tasks, loss_fn, cfg)
    with torch.no_grad():
        _apply(state.opt_theta, state.theta, mg.theta)  # eq. 8
        if state.opt_phi is not None:
            _apply(state.opt_phi, state.phi, mg.phi)  # eq. 9
    state.step += 1
    metrics: dict[str, float] = {"step": float(state.step), "meta_loss": float(mg.meta_loss)}
    metrics.update({k: float(v.double().mean()) for k, v in mg.aux.items()})
    metrics["grad_norm_theta"] = math.sqrt(sum(float(g.pow(2).sum()) for g in mg.theta.values()))
    metrics["grad_norm_phi"] = math.sqrt(sum(float(g.pow(2).sum()) for g in mg.phi.values()))
    metrics["num_tasks"] = float(len(tasks))
    return state, metrics


# ----------------------------------------------------------------------------------------------
# looking inside one step (notebook 03 walks through Algorithm 1 with these)


def task_gradient(theta: Mapping[str, Tensor], batch: Any, loss_fn: LossFn) -> tuple[Params, Tensor]:
    """``(grad_theta L(theta, batch), L(theta, batch))``, detached: Algorithm 1 line 5 for one batch.

    The same ``torch.func`` gradient the inner loop takes (under :func:`math_attention`), evaluated
    once for inspection: the raw support gradient g fed to R^phi, or the query gradient of eq. 12.
    """
    with math_attention():
        g, loss = grad_and_value(loss_fn)(_detach(theta), batch)
    return _detach(g), loss.detach()


def params_norm(a: Mapping[str, Tensor], b: Mapping[str, Tensor] | None = None) -> float:
    """Euclidean norm of a parameter dict seen as one flat vector; with ``b``, the norm of ``a - b``
    (e.g. how far one meta-step moved theta or phi)."""
    total = 0.0
    for k, v in a.items():
        d = v.detach() - b[k].detach() if b is not None else v.detach()
        total += float(d.double().pow(2).sum())
    return math.sqrt(total)


def params_cosine(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Cosine between two parameter dicts seen as flat vectors (eq. 12's inner product, normalised;
    the ``grad_cosine`` metric of :func:`meta_step`)."""
    return float(_cosine(_detach(a), _detach(b)))


__all__ = [
    "MetaConfig",
    "MetaGradients",
    "MetaState",
    "StackedTasks",
    "inner_step",
    "init_meta_state",
    "math_attention",
    "meta_gradients",
    "meta_objective",
    "meta_step",
    "params_cosine",
    "params_norm",
    "stack_tasks",
    "task_gradient",
]
