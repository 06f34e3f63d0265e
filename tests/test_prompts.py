"""Prompt learners (gramlib.prompts): one interface, exact reproduction of CLIP, second order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gramlib.learners import LEARNERS, build_learner
from gramlib.prompts import CoOp, PromptLearner
from gramlib.prompts.base import encode_image_with_prompts
from tiny_openclip import build_tiny_clip  # tests/ is on sys.path (rootdir, no __init__)

CLASSES = ["dog", "cat", "fire_hydrant", "sports car"]
TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_clip(seed=0)


@pytest.fixture(scope="module")
def tiny_stem():
    """Mini-profile-like: ``visual.conv1`` replaced by a convolutional stem with BatchNorm."""
    return build_tiny_clip(seed=1, conv_stem=True)


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _perturbed(theta: dict[str, torch.Tensor], scale: float = 0.5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {k: v.detach() + scale * torch.randn(v.shape, generator=g) for k, v in theta.items()}


@pytest.mark.parametrize("stem", [False, True])
@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_forward_shapes_finite(name, stem, tiny, tiny_stem, images):
    model, tok = tiny_stem if stem else tiny
    learner = build_learner(name, model, tok)
    assert isinstance(learner, PromptLearner)
    out = learner(images, CLASSES)
    assert out.shape == (3, len(CLASSES)) and torch.isfinite(out).all()
    for k, p in learner.prompt_params().items():
        assert p.requires_grad and p.dim() == 2, k
    assert not any(p.requires_grad for p in model.parameters())
    learner.train()
    assert not model.training and learner.training  # backbone (BatchNorm) stays in eval mode


def test_zeroshot_equals_open_clip(tiny, images):
    model, tok = tiny
    zs = build_learner("zeroshot", model, tok, template=TEMPLATE)
    assert zs.prompt_params() == {}
    with torch.no_grad():
        txt = F.normalize(model.encode_text(tok([TEMPLATE.format(c.replace("_", " ")) for c in CLASSES])), dim=-1)
        img = F.normalize(model.encode_image(images), dim=-1)
        torch.testing.assert_close(zs.encode_text({}, CLASSES), txt)
        torch.testing.assert_close(zs.encode_image({}, images), img)
        torch.testing.assert_close(zs(images, CLASSES), model.logit_scale.exp() * img @ txt.t())
    # ... computed over the positions the prompts use, not the whole context
    seen = []
    hook = model.transformer.resblocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    try:
        with torch.no_grad():
            zs.encode_text({}, CLASSES)
    finally:
        hook.remove()
    used = int(tok([TEMPLATE.format(c.replace("_", " ")) for c in CLASSES]).argmax(-1).max()) + 1
    assert seen and all(used in s[:2] and model.context_length not in s[:2] for s in seen)


def test_coop_init_reproduces_sentence(tiny):
    model, tok = tiny
    coop = build_learner("coop", model, tok, ctx_init="a photo of a")
    assert coop.prompt_params()["ctx"].shape[0] == 4
    with torch.no_grad():
        ref = F.normalize(model.encode_text(tok([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])), dim=-1)
        got = coop.encode_text(coop.prompt_params(), CLASSES)
    assert (got - ref).abs().max().item() < 1e-5


def test_context_plans(tiny):
    model, tok = tiny
    part = build_learner("coop", model, tok, n_ctx=2, ctx_init="a photo of a")  # IVLP convention
    assert part.prompt_texts(["dog"]) == ["X X of a dog."]
    with torch.no_grad():
        ref = F.normalize(model.encode_text(tok(["a photo of a dog."])), dim=-1)
        assert (part.encode_text(part.prompt_params(), ["dog"]) - ref).abs().max().item() < 1e-5
    rand = build_learner("coop", model, tok, n_ctx=16, ctx_init=None)
    ctx = rand.prompt_params()["ctx"]
    assert ctx.shape == (16, 64) and 0.01 < ctx.std().item() < 0.03
    for bad in ({"n_ctx": 5}, {"n_ctx": 0}, {"ctx_init": None}, {"class_token_position": "middle"}):
        with pytest.raises(ValueError):
            build_learner("coop", model, tok, **bad)


def test_which_tower_theta_touches(tiny, images):
    model, tok = tiny
    with torch.no_grad():
        for name, text_changes, image_changes in [
            ("coop", True, False),
            ("vpt", False, True),
            ("vpt_deep", False, True),
            ("joint", True, True),
        ]:
            lr = build_learner(name, model, tok)
            t0, t1 = lr.prompt_params(), _perturbed(lr.prompt_params())
            dt = (lr.encode_text(t0, CLASSES) - lr.encode_text(t1, CLASSES)).abs().max().item()
            di = (lr.encode_image(t0, images) - lr.encode_image(t1, images)).abs().max().item()
            assert (dt > 1e-4) == text_changes and (di > 1e-4) == image_changes, (name, dt, di)
            assert lr.caches_text_features == (not text_changes)
            assert lr.caches_image_features == (not image_changes)
        cocoop = build_learner("cocoop", model, tok)
        t0, t1 = cocoop.prompt_params(), _perturbed(cocoop.prompt_params())
        assert not torch.allclose(cocoop.logits(t0, images, CLASSES), cocoop.logits(t1, images, CLASSES))
        torch.testing.assert_close(cocoop.encode_image(t0, images), cocoop.encode_image(t1, images))


def test_deep_prompts_matter_and_empty_prompts_are_identity(tiny, images):
    model, tok = tiny
    deep = build_learner("vpt_deep", model, tok)
    with torch.no_grad():
        torch.testing.assert_close(encode_image_with_prompts(model.visual, images, []), model.visual(images))
        t0 = deep.prompt_params()
        # only the layer-2 prompts change (randomly: a constant shift would vanish in LayerNorm)
        t1 = dict(t0, vis_ctx_1=t0["vis_ctx_1"] + torch.randn(t0["vis_ctx_1"].shape))
        assert not torch.allclose(deep.encode_image(t0, images), deep.encode_image(t1, images))


def test_vpt_invalid_sizes(tiny):
    model, tok = tiny
    for bad in ({"n_tokens": 0}, {"depth": 0}, {"depth": 3}):
        with pytest.raises(ValueError):
            build_learner("vpt", model, tok, **bad)
    with pytest.raises(ValueError):
        build_learner("joint", model, tok, n_vis=0)


def test_cached_features_equal_recompute(tiny, images):
    model, tok = tiny
    with torch.no_grad():
        for name in LEARNERS:
            lr = build_learner(name, model, tok)
            theta = _perturbed(lr.prompt_params(), 0.1)
            full = lr.logits(theta, images, CLASSES)
            if lr.caches_image_features:
                feats = lr.frozen_image_features(images)
                torch.testing.assert_close(lr.logits(theta, feats, CLASSES), full)
            else:
                with pytest.raises(ValueError):
                    lr.logits(theta, torch.randn(3, 64), CLASSES)
            if lr.caches_text_features:
                txt = lr.frozen_text_features(CLASSES)
                torch.testing.assert_close(lr.logits(theta, images, CLASSES, text_features=txt), full)
            else:
                with pytest.raises(ValueError):
                    lr.logits(theta, images, CLASSES, text_features=torch.randn(4, 64))


@pytest.mark.parametrize("name", ["coop", "vpt", "vpt_deep", "cocoop", "joint"])
def test_double_backward(name, tiny, images):
    """MAML-style: θ' = θ - α∇L_s(θ) (eq. 4/7), then ∇_θ L_q(θ') and a grad of a grad."""
    model, tok = tiny
    lr = build_learner(name, model, tok)
    theta = lr.prompt_params()
    y = torch.tensor([0, 1, 2])
    with sdpa_kernel(SDPBackend.MATH):
        loss_s = F.cross_entropy(lr.logits(theta, images, CLASSES), y)
        grads = torch.autograd.grad(loss_s, list(theta.values()), create_graph=True)
        adapted = {k: v - 0.1 * g for (k, v), g in zip(theta.items(), grads)}
        loss_q = F.cross_entropy(lr.logits(adapted, images, CLASSES), y.flip(0))
        meta = torch.autograd.grad(loss_q, list(theta.values()), create_graph=True)
        gg = torch.autograd.grad(sum((g * g).sum() for g in grads), list(theta.values()))
    for g in (*meta, *gg):
        assert torch.isfinite(g).all()
    assert any(g.abs().sum() > 0 for g in gg)  # a genuine second-order term
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["coop", "vpt", "joint"])
def test_torch_func_second_order_and_vmap(name, tiny_stem):
    """The meta-learner's path: torch.func.grad nested in grad, vmapped over tasks, equals autograd."""
    from torch.func import grad, vmap

    model, tok = tiny_stem
    lr = build_learner(name, model, tok)
    theta = {k: v.detach() for k, v in lr.prompt_params().items()}
    g = torch.Generator().manual_seed(2)
    xs, ys = torch.randn(2, 4, 3, 32, 32, generator=g), torch.randint(0, 3, (2, 4), generator=g)
    cls = CLASSES[:3]

    def loss(th, x, y):
        return F.cross_entropy(lr.logits(th, x, cls), y)

    def task(th, x, y):  # inner step on half the batch, query loss on the other half
        gs = grad(loss)(th, x[:2], y[:2])
        return loss({k: th[k] - 0.1 * gs[k] for k in th}, x[2:], y[2:])

    def task_autograd(x, y):
        th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        gs = torch.autograd.grad(loss(th, x[:2], y[:2]), list(th.values()), create_graph=True)
        q = loss({k: th[k] - 0.1 * gk for k, gk in zip(th, gs)}, x[2:], y[2:])
        return dict(zip(th, torch.autograd.grad(q, list(th.values()))))

    with sdpa_kernel(SDPBackend.MATH):
        batched = grad(lambda th: vmap(task, in_dims=(None, 0, 0))(th, xs, ys).mean())(theta)
        loop = [task_autograd(xs[i], ys[i]) for i in range(2)]
    for k in theta:  # float32 summation order differs between vmap and the loop
        ref = (loop[0][k] + loop[1][k]) / 2
        assert (batched[k] - ref).abs().max() <= 1e-4 * ref.abs().max(), k


def test_cocoop_without_meta_bias_is_coop(tiny, images):
    model, tok = tiny
    cocoop, coop = build_learner("cocoop", model, tok), build_learner("coop", model, tok)
    theta = {k: v.detach() for k, v in cocoop.prompt_params().items()}
    theta["meta_w2"], theta["meta_b2"] = torch.zeros_like(theta["meta_w2"]), torch.zeros_like(theta["meta_b2"])
    with torch.no_grad():
        torch.testing.assert_close(cocoop.logits(theta, images, CLASSES), coop(images, CLASSES))
    with pytest.raises(ValueError):
        cocoop.encode_text(theta, CLASSES)  # CoCoOp's class features need the image


@pytest.mark.slow
def test_vit_b16_geometry():
    """The paper backbone's architecture (random weights, no download): shapes and exactness."""
    import open_clip

    model, tok = open_clip.create_model("ViT-B-16", pretrained=None).eval(), open_clip.get_tokenizer("ViT-B-16")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for name in LEARNERS:
            assert torch.isfinite(build_learner(name, model, tok)(x, CLASSES[:2])).all()
        coop = build_learner("coop", model, tok)
        ref = F.normalize(model.encode_text(tok([f"a photo of a {c}." for c in CLASSES[:2]])), dim=-1)
        assert (coop.encode_text(coop.prompt_params(), CLASSES[:2]) - ref).abs().max().item() < 1e-5
    assert len(build_learner("vpt_deep", model, tok).prompt_params()) == 12


def test_bf16_autocast_cpu(tiny, images):
    model, tok = tiny
    for name in LEARNERS:
        lr = build_learner(name, model, tok)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lr(images, CLASSES)
        assert out.shape == (3, 4) and torch.isfinite(out.float()).all(), name


def test_registry_errors(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="coop.*vpt_deep|known"):
        build_learner("no_such_learner", model, tok)
    with pytest.raises(ValueError, match="n_ctxx"):
        build_learner("coop", model, tok, n_ctxx=4)


def test_overlong_class_name_and_memo(tiny):
    model, tok = tiny
    coop = build_learner("coop", model, tok)
    long_name = "very " * 20 + "long class"
    with pytest.raises(ValueError, match=r"very.*long class.*context length is 24"):
        coop.encode_text(coop.prompt_params(), ["dog", long_name])
    with pytest.raises(ValueError, match="long class"):
        build_learner("zeroshot", model, tok).encode_text({}, [long_name])
    assert coop.tokenize(CLASSES).data_ptr() == coop.tokenize(list(CLASSES)).data_ptr()  # memoised


def test_load_prompt_params(tiny):
    model, tok = tiny
    a, b = CoOp(model, tok), build_learner("coop", model, tok, ctx_init=None, n_ctx=4)
    b.load_prompt_params(a.prompt_params())
    torch.testing.assert_close(b.prompt_params()["ctx"], a.prompt_params()["ctx"])
    with pytest.raises(ValueError):
        b.load_prompt_params({"ctx": torch.zeros(3, 64)})


@pytest.mark.parametrize("name", ["coop", "ivlp", "maple"])
def test_text_tower_runs_only_the_used_positions_and_computes_the_same(name, monkeypatch):
    """text_forward drops the positions after the last end token (causal tower, end-token pooling):
    features, gradients and per-block feature-shift norms equal the full-context computation."""
    from gramlib.clip import towers
    from gramlib.restore import feature_shift_norms

    model, tok = build_tiny_clip(seed=0)
    model = model.double()  # float64: both shapes round alike, so the comparison can be tight
    learner = build_learner(name, model, tok)
    theta = {k: v.detach().double().requires_grad_() for k, v in _perturbed(learner.prompt_params()).items()}
    imgs = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lengths = []
    hook = model.transformer.resblocks[0].register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1]))

    def run() -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        feats = learner.encode_text(theta, CLASSES)
        grads = torch.autograd.grad(feats.square().sum(), list(theta.values()), allow_unused=True)
        norms = feature_shift_norms(learner, {k: v.detach() for k, v in theta.items()}, imgs, CLASSES)["text"]
        return feats.detach(), [g for g in grads if g is not None], norms

    short = run()
    assert max(lengths) < model.context_length  # the class prompts use fewer positions than the context
    lengths.clear()
    monkeypatch.setattr(towers, "used_positions", lambda tower, x, tokens: (x, tokens))
    full = run()
    hook.remove()
    assert max(lengths) == model.context_length  # (the shift also runs blocks without the prompt slots)
    torch.testing.assert_close(short[0], full[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(short[1], full[1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert short[2].abs().sum() > 0
    torch.testing.assert_close(short[2], full[2], rtol=1e-9, atol=1e-12)

