"""Contrastive pre-training of the tiny CLIP on the mini world's web corpus (mini/smoke only).

A fixed step count, not a time budget: the 2-core machines this runs on are noisy, and the same
parameters must give the same model. The recipe (AdamW, lr 1e-3, wd 0.1, betas (0.9, 0.98),
linear warm-up then cosine) follows the throwaway prototype described in DESIGN.md, where the
schedule mattered more than anything else. Every ``save_every`` steps the model, optimizer, step and
RNG states are committed as one set (:mod:`gramlib.checkpoint`, in ``<out_dir>/ckpt``), so a killed
run resumes from the last one with matching parts, bit-identically.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from gramlib.clip.factory import build_tiny_clip
from gramlib.config import Profile
from gramlib.checkpoint import (checkpoint_exists, load_checkpoint, remove_checkpoint, restore_training_state,
                                save_training_checkpoint)
from gramlib.io import save_safetensors, write_json

log = logging.getLogger(__name__)


def cosine_lr(step: int, total: int, base_lr: float, warmup: int) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP over a batch of matched pairs."""
    logits = logit_scale.exp() * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    labels = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def normalise_batch(images_u8: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def random_shift(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Translate each image by up to ``pad`` pixels (reflect padding): cheap, label-preserving."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # (b, h)
    cols = (dx[:, None] + torch.arange(w)[None, :])  # (b, w)
    idx_b = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_resized_crop(x: torch.Tensor, generator: torch.Generator, min_area: float,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Crop each image to a random area in [min_area, 1] and aspect ratio, resized back (bilinear).

    The pre-training analogue of the crops few-shot tuning uses (CoCoOp's random resized crop): a CLIP
    that never saw a crop meets them first in tuning, where crops of a 32-pixel image change the
    object's scale and hurt the frozen features. One affine grid per batch: no per-image Python loop.
    """
    b = x.shape[0]
    area = min_area + (1 - min_area) * torch.rand(b, generator=generator)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(b, generator=generator)
    aspect = torch.exp(log_r)
    sw = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - sw) * (2 * torch.rand(b, generator=generator) - 1)  # centre in [-1 + sw, 1 - sw]
    cy = (1 - sh) * (2 * torch.rand(b, generator=generator) - 1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, cx, sh, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def used_context(tokens: torch.Tensor) -> torch.Tensor:
    """The batch's tokens up to its longest caption's end-of-text token (argmax: EOT has the top id)."""
    return tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]


def trims_text(model: torch.nn.Module) -> bool:
    """Whether :func:`encode_text_used` applies: an open_clip CLIP text tower, causal, pooled at argmax."""
    return getattr(model, "text_pool_type", None) == "argmax" and getattr(model, "attn_mask", None) is not None


def encode_text_used(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``CLIP.encode_text`` over the positions a batch uses (unnormalised features).

    The text tower is causal and pools at the end-of-text token, so positions after the batch's
    longest caption never reach a feature or a gradient: dropping them computes the same function
    (equal to float rounding; tested). Mini captions use ~16 of the 24 positions, so the text tower's
    share of a pre-training step (~40 %) shrinks by a third. Needs argmax pooling and a causal mask.
    """
    from gramlib.clip.towers import TextTower, encode_text_embeddings

    if not trims_text(model):
        raise ValueError(f"encode_text_used needs a causal text tower with argmax pooling, got pool type "
                         f"{getattr(model, 'text_pool_type', None)!r} and attn_mask "
                         f"{'absent' if getattr(model, 'attn_mask', None) is None else 'present'}")
    tokens = used_context(tokens)  # the prompt learners' text forward, which trims the same positions
    return encode_text_embeddings(TextTower.of(model), model.token_embedding(tokens), tokens)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def compact_vocabulary(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train only the token-embedding rows the corpus uses: (compact tokens, used ids, full weight).

    The web corpus uses ~1 k of the tokenizer's 49 k tokens. A row that is never looked up gets an
    exactly zero gradient, so AdamW (no weight decay on embeddings) never moves it: optimising the used
    rows alone is the same training, without updating 6.3 M idle weights every step (~15 % of a step
    on 2 CPU cores). Token ids are renumbered monotonically, so the end-of-text token keeps the largest
    id and CLIP's argmax pooling is unchanged. :func:`expand_vocabulary` folds the rows back.
    """
    used = torch.unique(tokens)
    full = model.token_embedding.weight.detach().clone()
    model.token_embedding = torch.nn.Embedding.from_pretrained(full[used].clone(), freeze=False)
    return torch.searchsorted(used, tokens), used, full


def expand_vocabulary(model: torch.nn.Module, used: torch.Tensor, full: torch.Tensor) -> None:
    """Put the trained rows back into the full (vocab × width) embedding, in place."""
    weight = full.clone()
    weight[used] = model.token_embedding.weight.detach()
    model.token_embedding = torch.nn.Embedding.from_pretrained(weight, freeze=False)


def pretrain(profile: Profile, out_dir: str | Path, save_every: int = 200, log_every: int = 50,
             max_steps: int | None = None, compact: bool = True) -> dict:
    """Pre-train the profile's tiny CLIP; returns the training summary (also written as JSON).

    ``max_steps`` stops early *without* changing the schedule (used by the resume test); ``compact``
    trains the used embedding rows only (:func:`compact_vocabulary`, the same result, faster).
    """
    from gramlib.data.transforms import CLIP_MEAN, CLIP_STD

    cfg = profile.backbone
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    web = profile.root / "web"
    if not (web / "images.npy").exists():
        raise FileNotFoundError(f"web corpus not found: {web / 'images.npy'} (run the world stage first)")
    images = torch.from_numpy(np.load(web / "images.npy"))
    captions = pd.read_parquet(web / "captions.parquet")["caption"].tolist()
    if len(captions) != len(images):
        raise ValueError(f"{web}: {len(images)} images but {len(captions)} captions")

    import open_clip

    torch.manual_seed(cfg.seed)
    model = build_tiny_clip(cfg.arch)
    tokenizer = open_clip.get_tokenizer(cfg.arch)
    tokens = tokenizer(captions)
    if compact:
        tokens, used, full_embedding = compact_vocabulary(model, tokens)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, history, elapsed, running = 0, [], 0.0, 0.0

    ckpt = out_dir / CKPT_DIR
    if checkpoint_exists(ckpt, CKPT_NAME):
        ck = load_checkpoint(ckpt, CKPT_NAME, kind=CKPT_KIND)
        restore_training_state(ck, params=model.state_dict(), optimizers={"adamw": opt}, generators={"batches": gen})
        start = ck.step
        history, elapsed, running = ck.extra["history"], ck.extra["elapsed_s"], ck.extra["running_loss"]
        log.info("resuming pre-training at step %d", start)

    n = len(images)
    end = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    t0 = time.perf_counter()
    for step in range(start, end):
        lr = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        x = normalise_batch(images[idx], CLIP_MEAN, CLIP_STD)
        x = random_shift(x, gen) if cfg.crop_min_area >= 1 else random_resized_crop(x, gen, cfg.crop_min_area)
        loss = clip_loss(model.encode_image(x), encode_text_used(model, tokens[idx]), model.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == end:
            k = (step % log_every) + 1
            history.append({"step": step + 1, "loss": running / k, "lr": lr})
            log.info("step %d/%d loss %.3f", step + 1, cfg.steps, running / k)
            running = 0.0
        if (step + 1) % save_every == 0 and step + 1 < cfg.steps:
            _save_state(model, opt, gen, ckpt, step + 1, history, elapsed + time.perf_counter() - t0, running)
    elapsed += time.perf_counter() - t0

    summary = {"arch": cfg.arch, "steps": cfg.steps, "completed_steps": end, "batch_size": cfg.batch_size,
               "n_pairs": n, "seconds": round(elapsed, 1), "final_loss": history[-1]["loss"] if history else None,
               "history": history, "config": asdict(cfg)}
    if end == cfg.steps:
        if compact:
            expand_vocabulary(model, used, full_embedding)
        model.eval()
        save_safetensors(out_dir / "backbone.safetensors", model.state_dict(), metadata={"arch": cfg.arch})
        write_json(out_dir / "backbone.json", summary)
        remove_checkpoint(ckpt, CKPT_NAME)  # after the result: a kill in between only means retraining
        if ckpt.is_dir() and not any(ckpt.iterdir()):
            ckpt.rmdir()
    else:
        _save_state(model, opt, gen, ckpt, end, history, elapsed, running)
    return summary


CKPT_DIR, CKPT_NAME, CKPT_KIND = "ckpt", "pretrain", "clip-pretrain"


def _save_state(model, opt, gen, ckpt: Path, step: int, history: list, elapsed: float, running: float) -> None:
    """Model, optimizer, batch generator and global RNGs after ``step`` steps, committed as one set."""
    save_training_checkpoint(ckpt, CKPT_NAME, step, kind=CKPT_KIND, params=model.state_dict(),
                             optimizers={"adamw": opt}, generators={"batches": gen},
                             extra={"history": history, "elapsed_s": elapsed, "running_loss": running})


def backbone_dir(profile: Profile) -> Path:
    return profile.artifacts / "backbone"


def load_profile_backbone(profile: Profile, device: str | None = None, precision: str | None = None):
    """The profile's frozen CLIP: its pre-trained checkpoint for tiny archs, else the named weights.

    Every model load site goes through here, so the profile's ``backbone.device`` / ``precision``
    (``auto``: CUDA + bf16 when a GPU is present) reach all of them; the arguments override them.
    """
    from gramlib.clip.factory import TINY_ARCHS, build_backbone

    ckpt = backbone_dir(profile) / "backbone.safetensors"
    if profile.backbone.arch in TINY_ARCHS:
        if not ckpt.exists():
            raise FileNotFoundError(f"backbone checkpoint {ckpt} missing: run the backbone stage of profile "
                                    f"{profile.name!r} first (gramlib pretrain --profile {profile.name})")
        return build_backbone(profile.backbone, ckpt, device=device, precision=precision)
    return build_backbone(profile.backbone, device=device, precision=precision)


def _repo_relative(path: Path) -> str:
    """A path inside the repository as the repository-relative one params.yaml uses (no machine's prefix)."""
    from gramlib.config import REPO

    path = Path(path)
    return path.relative_to(REPO).as_posix() if path.is_absolute() and path.is_relative_to(REPO) else str(path)


def pretrain_or_describe(profile: Profile) -> dict:
    """The backbone stage: pre-train a tiny CLIP, or record which pretrained weights are used."""
    from gramlib.clip.factory import TINY_ARCHS

    out = backbone_dir(profile)
    if profile.backbone.arch in TINY_ARCHS:
        return pretrain(profile, out)
    # real weights: find them (no network, fails at once naming both routes) and record what they are
    from gramlib.clip.factory import resolve_weights, uses_quick_gelu, weights_identity

    import open_clip

    weights = resolve_weights(profile.backbone)
    model_cfg = open_clip.get_model_config(profile.backbone.arch) or {}
    summary = {"arch": profile.backbone.arch, "pretrained": profile.backbone.pretrained, "seconds": 0.0,
               "image_size": model_cfg.get("vision_cfg", {}).get("image_size"),
               "final_loss": None, "weights": _repo_relative(weights) if weights else None,
               "quick_gelu": uses_quick_gelu(profile.backbone),
               "identity": weights_identity(profile.backbone, weights), "config": asdict(profile.backbone)}
    write_json(out / "backbone.json", summary)
    return summary
