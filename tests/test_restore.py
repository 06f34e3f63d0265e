"""IVLP, MaPLe and RESTORE (gramlib.prompts.ivlp / .maple, gramlib.restore): deep prompts, feature
shift (eq. 6), consistency loss (eqs. 7-10), surgery block (eq. 11) and the training-loop hook.

Tiny random CLIPs only (milliseconds per forward): ``tiny`` has 2 text and 2 vision blocks, ``mini``
the mini profile's depths (2 text, 4 vision blocks) with its convolutional stem.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gramlib.tuning.inputs import TrainData, ViewBank
from gramlib.learners import build_learner
from gramlib.prompts.ivlp import DEFAULT_DEPTH, resolve_depth
from gramlib.clip.towers import TextTower
from gramlib.restore import (
    apply_surgery,
    feature_shift_consistency,
    feature_shift_norms,
    image_shift,
    init_surgery,
    surgery,
)
from gramlib.restore.feature_shift import per_layer
from gramlib.tuning.train import TrainConfig, loss_fn, train_prompt
from tiny_openclip import TinyCLIPConfig, build_tiny_clip

CLASSES = ["dog", "cat", "fire_hydrant", "sports car"]
NEW = ("ivlp", "maple", "restore")
ALL = ("zeroshot", "coop", "cocoop", "vpt", "vpt_deep", "joint", *NEW)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_clip(seed=0)


@pytest.fixture(scope="module")
def mini():
    cfg = TinyCLIPConfig(name="tiny-restore-mini", vision_layers=4, text_layers=2)
    return build_tiny_clip(cfg, seed=1, conv_stem=True)


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _detached(learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.prompt_params().items()}


def _sgd_steps(learner, images, steps: int = 3, lr: float = 0.5) -> dict[str, torch.Tensor]:
    theta = {k: v.requires_grad_(True) for k, v in _detached(learner).items()}
    opt = torch.optim.SGD(list(theta.values()), lr=lr)
    y = torch.tensor([0, 1, 2])
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(learner.logits(theta, images, CLASSES), y).backward()
        opt.step()
    return {k: v.detach() for k, v in theta.items()}


# --------------------------------------------------------------------------------------------------
# the new learners


@pytest.mark.parametrize("name", NEW)
def test_forward_and_theta_layout(name, mini, images):
    model, tok = mini
    learner = build_learner(name, model, tok)
    out = learner(images, CLASSES)
    assert out.shape == (3, len(CLASSES)) and torch.isfinite(out).all()
    theta = learner.prompt_params()
    assert all(p.dim() == 2 and p.requires_grad for p in theta.values())
    assert not learner.caches_image_features and not learner.caches_text_features
    # depth None = MaPLe's 9 capped at each tower: text 2, vision 4 (MaPLe: the shallower tower, 2)
    if name == "ivlp":
        assert sorted(theta) == ["ctx", "txt_ctx_1", "vis_ctx_0", "vis_ctx_1", "vis_ctx_2", "vis_ctx_3"]
    else:
        maple_keys = {"ctx", "txt_ctx_1", "proj_w_0", "proj_b_0", "proj_w_1", "proj_b_1"}
        assert maple_keys <= set(theta)
        assert theta["proj_w_0"].shape == (64, 64) and theta["ctx"].shape == (2, 64)
        surgery_keys = {f"surgery_{t}_{p}" for t in "vt" for p in ("ln_w", "ln_b", "up", "down")}
        assert set(theta) - maple_keys == (set() if name == "maple" else surgery_keys)


def test_default_depth_is_maples_9_capped():
    assert resolve_depth(None, 12, "depth", "text") == DEFAULT_DEPTH == 9
    assert resolve_depth(None, 2, "depth", "text") == 2
    assert resolve_depth(5, 12, "depth", "text") == 5


def test_first_layer_reproduces_the_sentence(tiny):
    """Text depth 1 with ctx_init "a photo of a": exactly CLIP's "a photo of a {class}." (as CoOp)."""
    model, tok = tiny
    ivlp = build_learner("ivlp", model, tok, text_depth=1)
    assert not any(k.startswith("txt_ctx_") for k in ivlp.prompt_params())
    with torch.no_grad():
        ref = F.normalize(model.encode_text(tok([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])), dim=-1)
        got = ivlp.encode_text(ivlp.prompt_params(), CLASSES)
    assert (got - ref).abs().max().item() < 1e-5


def test_which_prompts_move_which_tower(tiny, images):
    model, tok = tiny
    with torch.no_grad():
        ivlp = build_learner("ivlp", model, tok)
        t0 = _detached(ivlp)
        t_txt = dict(t0, txt_ctx_1=t0["txt_ctx_1"] + torch.randn(t0["txt_ctx_1"].shape))
        t_vis = dict(t0, vis_ctx_1=t0["vis_ctx_1"] + torch.randn(t0["vis_ctx_1"].shape))
        assert not torch.allclose(ivlp.encode_text(t0, CLASSES), ivlp.encode_text(t_txt, CLASSES))
        torch.testing.assert_close(ivlp.encode_image(t0, images), ivlp.encode_image(t_txt, images))
        assert not torch.allclose(ivlp.encode_image(t0, images), ivlp.encode_image(t_vis, images))
        torch.testing.assert_close(ivlp.encode_text(t0, CLASSES), ivlp.encode_text(t_vis, CLASSES))

        maple = build_learner("maple", model, tok)
        t0 = _detached(maple)
        vis = maple.vision_prompts(t0)
        assert len(vis) == 2
        torch.testing.assert_close(vis[1], F.linear(t0["txt_ctx_1"], t0["proj_w_1"], t0["proj_b_1"][0]))
        # coupling: a deep language prompt moves both towers
        t1 = dict(t0, txt_ctx_1=t0["txt_ctx_1"] + torch.randn(t0["txt_ctx_1"].shape))
        assert not torch.allclose(maple.encode_text(t0, CLASSES), maple.encode_text(t1, CLASSES))
        assert not torch.allclose(maple.encode_image(t0, images), maple.encode_image(t1, images))


@pytest.mark.parametrize(
    "name, opts, match",
    [
        ("ivlp", {"depth": 3}, r"depth=3 is larger than the text tower's layer count \(2\)"),
        ("ivlp", {"text_depth": 3}, r"text_depth=3 is larger than the text tower's layer count \(2\)"),
        ("ivlp", {"vision_depth": 5}, r"vision_depth=5 is larger than the image tower's layer count \(4\)"),
        ("ivlp", {"depth": 0}, r"depth must be >= 1"),
        ("ivlp", {"n_tokens": 0}, r"n_tokens must be >= 1"),
        ("ivlp", {"vision_n_tokens": 0}, r"vision_n_tokens must be >= 1"),
        ("maple", {"depth": 3}, r"depth=3 is larger than the text tower's layer count \(2\)"),
        ("maple", {"n_tokens": 0}, r"n_tokens must be >= 1"),
        ("restore", {"depth": 4}, r"depth=4 is larger than the text tower's layer count \(2\)"),
        ("restore", {"n_tokens": 0}, r"n_tokens must be >= 1"),
        ("restore", {"surgery": "always"}, r"surgery must be one of"),
    ],
)
def test_invalid_configs_raise_clear_errors(name, opts, match, mini):
    with pytest.raises(ValueError, match=match):
        build_learner(name, *mini, **opts)


def test_maple_depth_is_checked_against_the_image_tower_too():
    cfg = TinyCLIPConfig(name="tiny-restore-deeptext", vision_layers=2, text_layers=3)
    model, tok = build_tiny_clip(cfg, seed=3)
    assert len(build_learner("ivlp", model, tok, text_depth=3, vision_depth=2).prompt_params()) == 5
    with pytest.raises(ValueError, match=r"depth=3 is larger than the image tower's layer count \(2\)"):
        build_learner("maple", model, tok, depth=3)


@pytest.mark.slow
def test_vit_b16_depth_9():
    """The paper backbone's geometry (random weights, no download): 9 of 12 layers in each tower."""
    import open_clip

    model, tok = open_clip.create_model("ViT-B-16", pretrained=None).eval(), open_clip.get_tokenizer("ViT-B-16")
    ivlp, maple = build_learner("ivlp", model, tok), build_learner("maple", model, tok)
    assert len(ivlp.prompt_params()) == 1 + 8 + 9  # ctx, txt_ctx_1..8, vis_ctx_0..8
    assert len(maple.prompt_params()) == 1 + 8 + 2 * 9  # ctx, txt_ctx_1..8, proj_w/b_0..8
    assert maple.prompt_params()["proj_w_0"].shape == (768, 512)
    with torch.no_grad():
        fs = feature_shift_norms(maple, maple.prompt_params(), torch.randn(1, 3, 224, 224), CLASSES[:2])
    assert fs["vision"].shape == (12,) and fs["text"].shape == (12,) and (fs["vision"] > 0).all()
    with pytest.raises(ValueError, match=r"depth=13 is larger than the text tower's layer count \(12\)"):
        build_learner("restore", model, tok, depth=13)


def test_registry_and_recipe():
    for name in NEW:
        cfg = TrainConfig.for_learner(name)
        assert (cfg.batch_size, cfg.lr, cfg.epochs) == (4, 0.0035, 10)  # RESTORE §4.1: 10 epochs base-to-novel


def test_surgery_strength_by_hand(tiny, images):
    model, tok = tiny
    restore = build_learner("restore", model, tok, surgery="fixed", alpha=0.3)
    theta = _detached(restore)
    assert restore.surgery_strength(theta, images, CLASSES) == {"vision": 0.0, "text": 0.0}  # W_down = 0
    theta["surgery_v_down"] = torch.randn(theta["surgery_v_down"].shape, generator=torch.Generator().manual_seed(1))
    got = restore.surgery_strength(theta, images, CLASSES)
    with torch.no_grad():
        x = image_shift(restore, theta, images).features
        ref = (0.3 * surgery(x, theta, "surgery_v")).norm(dim=1) / x.norm(dim=1)
    assert got["vision"] == pytest.approx(float(ref.mean()), rel=1e-5) and got["text"] == 0.0
    none = build_learner("restore", model, tok, surgery="none")
    assert none.surgery_strength(_detached(none), images, CLASSES) == {"vision": 0.0, "text": 0.0}


# --------------------------------------------------------------------------------------------------
# feature shift (eq. 6)


@pytest.mark.parametrize("name", ALL)
def test_feature_shift_shapes_and_which_tower(name, mini, images):
    model, tok = mini
    learner = build_learner(name, model, tok)
    with torch.no_grad():
        fs = feature_shift_norms(learner, learner.prompt_params(), images, CLASSES)
    assert fs["vision"].shape == (4,) and fs["text"].shape == (2,)
    assert torch.isfinite(fs["vision"]).all() and torch.isfinite(fs["text"]).all()
    vision_prompted = name not in ("zeroshot", "coop", "cocoop")
    text_prompted = name not in ("zeroshot", "vpt", "vpt_deep")
    # absent prompts: exactly zero; prompted towers: every block shifts (shallow prompts are carried)
    assert bool((fs["vision"] > 0).all()) == vision_prompted and bool((fs["vision"] == 0).all()) != vision_prompted
    assert bool((fs["text"] > 0).all()) == text_prompted and bool((fs["text"] == 0).all()) != text_prompted


def test_eq6_by_hand_vision_and_text(tiny, images):
    """Ω_l = Φ_l([T_l, G_l]) at the non-prompt positions minus Φ_l(G_l), for block 0 of each tower."""
    model, tok = tiny
    vpt = build_learner("vpt", model, tok)
    theta = vpt.prompt_params()
    v = model.visual
    with torch.no_grad():
        x = v.conv1(images).flatten(2).permute(0, 2, 1)
        x = torch.cat([v.class_embedding.view(1, 1, -1).expand(3, -1, -1), x], dim=1) + v.positional_embedding
        n = x.shape[1]
        x = v.ln_pre(torch.cat([x, theta["vis_ctx_0"].unsqueeze(0).expand(3, -1, -1)], dim=1))
        blk = v.transformer.resblocks[0]
        omega = blk(x)[:, :n] - blk(x[:, :n])
        ref = omega.flatten(1).norm(dim=1).mean()
        got = feature_shift_norms(vpt, theta, images, CLASSES)["vision"][0]
    torch.testing.assert_close(got, ref)

    coop = build_learner("coop", model, tok)  # 4 slots: "a photo of a"
    tower = TextTower.of(model)
    with torch.no_grad():
        tokens = coop.tokenize(CLASSES)
        emb = tower.token_embedding(tokens)
        emb = torch.cat([emb[:, :1], coop.prompt_params()["ctx"].expand(4, -1, -1), emb[:, 5:]], dim=1)
        x = emb + tower.positional_embedding
        blk, L = tower.transformer.resblocks[0], x.shape[1]
        keep = [0, *range(5, L)]
        full = blk(x, attn_mask=tower.attn_mask)[:, keep]
        without = blk(x[:, keep], attn_mask=tower.attn_mask[: len(keep), : len(keep)])
        valid = (torch.arange(L)[keep].unsqueeze(0) <= tokens.argmax(-1).unsqueeze(1)).unsqueeze(-1)
        ref = ((full - without) * valid).flatten(1).norm(dim=1).mean()
        got = feature_shift_norms(coop, coop.prompt_params(), images, CLASSES)["text"][0]
    torch.testing.assert_close(got, ref)


def test_zero_valued_prompt_tokens_still_shift(tiny, images):
    """Our reading of eq. 6 removes the prompt tokens; a token of zeros still takes softmax mass, so
    only *absent* prompts give Ω = 0 (zero-shot, CoOp's image tower, VPT's text tower)."""
    model, tok = tiny
    vpt = build_learner("vpt", model, tok)
    with torch.no_grad():
        fs = feature_shift_norms(vpt, {"vis_ctx_0": torch.zeros(4, 64)}, images, CLASSES)
    assert (fs["vision"] > 1e-3).all() and (fs["text"] == 0).all()


def test_shift_moves_with_training_and_absent_prompts_stay_zero(tiny, images):
    model, tok = tiny
    for name, absent in (("coop", "vision"), ("vpt_deep", "text"), ("ivlp", None), ("maple", None)):
        torch.manual_seed(0)
        learner = build_learner(name, model, tok)
        trained = _sgd_steps(learner, images)
        with torch.no_grad():
            before = feature_shift_norms(learner, learner.prompt_params(), images, CLASSES)
            after = feature_shift_norms(learner, trained, images, CLASSES)
        for tower in ("vision", "text"):
            if tower == absent:
                assert (before[tower] == 0).all() and (after[tower] == 0).all(), (name, tower)
            else:
                assert (after[tower] > 0).all() and (after[tower] - before[tower]).abs().max() > 1e-4, (name, tower)
    zs = build_learner("zeroshot", model, tok)
    fs = feature_shift_norms(zs, {}, images, CLASSES)
    assert all((v == 0).all() for v in fs.values())


def test_restore_shift_is_maples(tiny, images):
    """The surgery acts after the towers: RESTORE's feature shift is MaPLe's with the same prompts."""
    model, tok = tiny
    restore, maple = build_learner("restore", model, tok), build_learner("maple", model, tok)
    theta = _detached(restore)
    with torch.no_grad():
        a = feature_shift_norms(restore, theta, images, CLASSES)
        b = feature_shift_norms(maple, {k: theta[k] for k in maple.prompt_params()}, images, CLASSES)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


# --------------------------------------------------------------------------------------------------
# consistency loss (eqs. 7-10)


def test_consistency_loss_by_hand():
    v, t = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 2.5])
    # layers paired from the input; the vision tower's third layer has no text partner
    assert feature_shift_consistency(v, t, lambda_fs=2.0).item() == pytest.approx(2.0 * (0.5**2 + 0.5**2))
    assert feature_shift_consistency(**{"vision": t, "text": t}).item() == 0.0
    assert feature_shift_consistency(v[:0], t).item() == 0.0
    with pytest.raises(ValueError, match="per-layer"):
        feature_shift_consistency(v.unsqueeze(0), t)


@pytest.mark.parametrize("name", ["ivlp", "maple", "restore"])
def test_consistency_loss_backpropagates_into_theta(name, tiny, images):
    model, tok = tiny
    learner = build_learner(name, model, tok)
    theta = learner.prompt_params()
    loss = feature_shift_consistency(**feature_shift_norms(learner, theta, images, CLASSES))
    grads = dict(zip(theta, torch.autograd.grad(loss, list(theta.values()), allow_unused=True)))
    prompts = [k for k in theta if not k.startswith("surgery_")]  # the surgery acts after the towers
    for k in prompts:
        assert grads[k] is not None and torch.isfinite(grads[k]).all() and grads[k].abs().sum() > 0, k
    assert all(grads[k] is None for k in theta if k.startswith("surgery_"))
    assert all(p.grad is None for p in model.parameters())


def test_consistency_gradient_numerically():
    """gradcheck (float64) of λ·L_fs with respect to a vision and a deep text prompt of IVLP."""
    model, tok = build_tiny_clip(seed=4)
    model = model.double()
    ivlp = build_learner("ivlp", model, tok)
    theta = {k: v.detach() for k, v in ivlp.prompt_params().items()}
    imgs = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    names = CLASSES[:2]

    def f(vis1: torch.Tensor, txt1: torch.Tensor) -> torch.Tensor:
        th = dict(theta, vis_ctx_1=vis1, txt_ctx_1=txt1)
        return feature_shift_consistency(**feature_shift_norms(ivlp, th, imgs, names), lambda_fs=0.5)

    # one vision token at block 1 (deep prompts may differ in count), both text slots
    args = (theta["vis_ctx_1"][:1].clone().requires_grad_(True), theta["txt_ctx_1"].clone().requires_grad_(True))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# surgery block (eq. 11)


def test_surgery_with_alpha_zero_is_the_identity():
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    theta = {k: v.detach() for k, v in init_surgery("s", 16, 32, x).items()}
    theta["s_down"] = torch.randn(16, 32)  # a trained, non-zero block
    assert torch.equal(apply_surgery(x, 0.0, theta, "s"), x)
    assert torch.equal(apply_surgery(x, torch.zeros(5), theta, "s"), x)
    assert not torch.allclose(apply_surgery(x, 0.5, theta, "s"), x)
    # per-row α; and Surgery itself = ReLU(LN(x)·W_up)·W_down by hand
    alpha = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0])
    ref = F.relu(F.layer_norm(x, (16,)) @ theta["s_up"].t()) @ theta["s_down"].t()
    torch.testing.assert_close(surgery(x, theta, "s"), ref)
    torch.testing.assert_close(apply_surgery(x, alpha, theta, "s"), x + alpha[:, None] * ref)
    # freshly initialised (W_down = 0): the identity for any α
    fresh = {k: v.detach() for k, v in init_surgery("s", 16, 32, x).items()}
    assert torch.equal(apply_surgery(x, 3.0, fresh, "s"), x)


@pytest.mark.parametrize("mode", ["none", "fixed", "guided"])
def test_restore_at_init_is_maple(mode, tiny, images):
    model, tok = tiny
    restore = build_learner("restore", model, tok, surgery=mode)
    maple = build_learner("maple", model, tok)
    theta = _detached(restore)
    assert any(k.startswith("surgery_") for k in theta) == (mode != "none")
    with torch.no_grad():
        torch.testing.assert_close(restore.logits(theta, images, CLASSES),
                                   maple.logits({k: theta[k] for k in maple.prompt_params()}, images, CLASSES))


def test_guided_alpha_is_gamma_times_summed_shift(tiny, images):
    model, tok = tiny
    restore = build_learner("restore", model, tok, gamma=0.05)
    theta = _detached(restore)
    theta["surgery_v_down"] = torch.randn(theta["surgery_v_down"].shape)
    with torch.no_grad():
        out = image_shift(restore, theta, images)
        alpha = 0.05 * per_layer(out).sum(dim=1)  # (B,): one α per image
        ref = F.normalize(out.features + alpha[:, None] * surgery(out.features, theta, "surgery_v"), dim=-1)
        torch.testing.assert_close(restore.encode_image(theta, images), ref)
        fixed = build_learner("restore", model, tok, surgery="fixed", alpha=0.3)
        ref_fixed = F.normalize(out.features + 0.3 * surgery(out.features, theta, "surgery_v"), dim=-1)
        torch.testing.assert_close(fixed.encode_image(theta, images), ref_fixed)


# --------------------------------------------------------------------------------------------------
# the training loop's auxiliary-loss hook


def _pixel_data(n: int = 8) -> TrainData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, n, 3, 32, 32, generator=g)
    return TrainData(ViewBank(x, torch.arange(n) % len(CLASSES), is_features=False), CLASSES)


def test_loss_fn_adds_the_consistency_loss(tiny):
    model, tok = tiny
    data = _pixel_data()
    x, y = data.bank.views[0, :4], data.bank.labels[:4]
    restore = build_learner("restore", model, tok, lambda_fs=0.7)
    theta = restore.prompt_params()
    with torch.no_grad():
        total = loss_fn(restore, theta, x, y, data, torch.device("cpu"), "fp32")
        ce = F.cross_entropy(restore.logits(theta, x, CLASSES), y)
        fs = feature_shift_consistency(**feature_shift_norms(restore, theta, x, CLASSES), lambda_fs=0.7)
        assert fs > 0
        torch.testing.assert_close(total, ce + fs)
        plain = build_learner("restore", model, tok, lambda_fs=0.0)
        logits, aux = plain.logits_and_aux_loss(theta, x, CLASSES)
        assert aux is None
        torch.testing.assert_close(loss_fn(plain, theta, x, y, data, torch.device("cpu"), "fp32"), ce)
        maple = build_learner("maple", model, tok)
        assert maple.logits_and_aux_loss(maple.prompt_params(), x, CLASSES)[1] is None


def test_train_prompt_runs_restore(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    restore = build_learner("restore", model, tok)
    before = _detached(restore)
    res = train_prompt(restore, _pixel_data(), TrainConfig(epochs=2, batch_size=4, lr=0.05, warmup_epochs=0))
    assert len(res.history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    assert set(res.theta) == set(before)
    for k in ("ctx", "txt_ctx_1", "proj_w_0", "surgery_v_down", "surgery_t_down"):
        assert not torch.equal(res.theta[k], before[k]), k
