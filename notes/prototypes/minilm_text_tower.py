"""Prototype (issue 14, item 1): the world probe's CoOp bars with a locked, pretrained MiniLM text tower.

Not part of the pipeline: a measurement to decide whether the refactor of every prompt learner's text path
onto a Hugging Face text model is worth its cost. It runs on the committed mini world, the probe's
protocol (16 shots, seeds 1-2, CoOp's recipe, CoCoOp's crops as ``suite.augment``), but with:

* the text tower: all-MiniLM-L6-v2 (the bundled package, mean pooling, L2 norm), locked, and a linear head
  384 -> 128 trained with the image tower ("LiT" with the text side locked);
* the image tower: the tiny CLIP's (same config, recipe, steps and 50-100 % crops as the backbone stage),
  trained against the locked caption embeddings (computed once: they never change);
* CoOp: 4 context vectors from "a photo of a" inserted after [CLS] in the BERT input (``inputs_embeds``),
  so at step 0 the prompt is exactly "a photo of a {class}." (zero-shot uses the dataset's template).

Run: python notes/prototypes/minilm_text_tower.py OUT_DIR [--steps 1200] [--datasets ...] [--seeds 5 6 7 8] [--translate]
Writes OUT_DIR/minilm_probe.json (the world probe's keys and bars) and the per-unit CSV.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from gramlib.chc.encoders import load_sentence_encoder
from gramlib.clip.factory import Backbone, build_tiny_clip
from gramlib.clip.pretrain import _param_groups, cosine_lr, normalise_batch, random_resized_crop
from gramlib.config import get_profile
from gramlib.data.templates import template_for
from gramlib.data.transforms import CLIP_MEAN, CLIP_STD
from gramlib.experiments.protocols import load_env, unit_data
from gramlib.experiments.world_probe import bars, dataset_overlaps, probe_config
from gramlib.tuning.inputs import view_bank
from gramlib.tuning.train import TrainConfig, epoch_generator, lr_at


class LockedText(torch.nn.Module):
    """MiniLM (locked) + a trainable linear head: text features for prompts given as word embeddings."""

    def __init__(self, st, embed_dim: int):
        super().__init__()
        self.bert = st[0].auto_model.eval()
        for p in self.bert.parameters():
            p.requires_grad_(False)
        self.tok = st.tokenizer
        self.head = torch.nn.Linear(self.bert.config.hidden_size, embed_dim, bias=False)

    def pooled(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.bert(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(out.dtype)
        return F.normalize((out * m).sum(1) / m.sum(1), dim=-1)  # sentence-transformers: mean, then Normalize

    def encode(self, texts: list[str], batch: int = 512) -> torch.Tensor:
        outs = []
        with torch.no_grad():
            for i in range(0, len(texts), batch):
                enc = self.tok(texts[i:i + batch], padding=True, return_tensors="pt")
                outs.append(self.pooled(self.bert.embeddings.word_embeddings(enc.input_ids), enc.attention_mask))
        return torch.cat(outs)

    def prompt_pooled(self, ctx: torch.Tensor, classnames: list[str]) -> torch.Tensor:
        n = ctx.shape[0]
        enc = self.tok([" ".join(["x"] * n) + f" {c}." for c in classnames], padding=True, return_tensors="pt")
        emb = self.bert.embeddings.word_embeddings(enc.input_ids)
        emb = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(len(classnames), -1, -1), emb[:, 1 + n:]], dim=1)
        return self.pooled(emb, enc.attention_mask)

    def ctx_init(self, words: str) -> torch.Tensor:
        ids = self.tok(words, add_special_tokens=False, return_tensors="pt").input_ids[0]
        return self.bert.embeddings.word_embeddings(ids).detach().clone()


def pretrain_image_tower(profile, text: LockedText, steps: int, out: Path) -> tuple[torch.nn.Module, dict]:
    cfg = profile.backbone
    web = profile.root / "web"
    images = torch.from_numpy(np.load(web / "images.npy"))
    captions = pd.read_parquet(web / "captions.parquet")["caption"].tolist()
    uniq, inverse = np.unique(np.array(captions, dtype=object), return_inverse=True)
    t0 = time.perf_counter()
    cache = out / "caption_minilm.pt"
    cap = torch.load(cache) if cache.exists() else text.encode(list(uniq))
    torch.save(cap, cache)
    t_cap = time.perf_counter() - t0
    inverse = torch.from_numpy(inverse)
    torch.manual_seed(cfg.seed)
    model = build_tiny_clip(cfg.arch)
    params = _param_groups(model.visual, cfg.weight_decay)
    params[0]["params"].append(text.head.weight)
    params[1]["params"].append(model.logit_scale)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    gen = torch.Generator().manual_seed(cfg.seed)
    t1, hist = time.perf_counter(), []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, cfg.lr, cfg.warmup)
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
        x = random_resized_crop(normalise_batch(images[idx], CLIP_MEAN, CLIP_STD), gen, cfg.crop_min_area)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(text.head(cap[inverse[idx]]), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        lab = torch.arange(len(logits))
        loss = 0.5 * (F.cross_entropy(logits, lab) + F.cross_entropy(logits.T, lab))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if (step + 1) % 100 == 0:
            hist.append(round(loss.item(), 3))
            print(f"step {step + 1} loss {loss.item():.3f}", flush=True)
    model.eval()
    text.head.requires_grad_(False)
    return model, {"caption_encode_s": t_cap, "pretrain_s": time.perf_counter() - t1, "loss": hist,
                   "n_unique_captions": len(uniq)}


def accuracy(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float(((img @ txt.T).argmax(1) == labels).float().mean())


def coop(text: LockedText, scale: float, bank, classnames, evals, epochs: int, seed: int, ctx0: torch.Tensor,
         lr: float = 0.002):
    """CoOp's recipe (SGD, warm-up epoch, per-epoch cosine, batch 32) on cached image-feature views."""
    cfg = TrainConfig(epochs=epochs, seed=seed, lr=lr)
    ctx = torch.nn.Parameter(ctx0.clone())
    opt = torch.optim.SGD([ctx], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n, steps, t0 = len(bank), 0, time.perf_counter()
    for epoch in range(epochs):
        for g in opt.param_groups:
            g["lr"] = lr_at(epoch, cfg)
        gen = epoch_generator(seed, epoch)
        view = bank.epoch_view(gen)
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            x, y = bank.batch(order[i:i + cfg.batch_size], view)
            txt = F.normalize(text.head(text.prompt_pooled(ctx, classnames)), dim=-1)
            loss = F.cross_entropy(scale * x @ txt.T, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        res = {}
        for split, (feats, labels, names) in evals.items():
            txt = F.normalize(text.head(text.prompt_pooled(ctx, names)), dim=-1)
            res[split] = accuracy(feats, txt, labels)
    return res, train_s / max(1, steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--datasets", nargs="*", default=None)
    ap.add_argument("--seeds", nargs="*", type=int, default=None)
    ap.add_argument("--long", type=int, default=50)
    ap.add_argument("--lr", type=float, default=0.002, help="CoOp's learning rate (the recipe's: 0.002)")
    ap.add_argument("--translate", action="store_true",
                    help="scale --lr by 100 / the learned logit scale, as suite.lr_translation: temperature does")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    profile = get_profile("mini")
    env = load_env(profile)
    pcfg = probe_config("mini")
    from gramlib.experiments.spec import suite_config

    policy = suite_config("mini").augment
    text = LockedText(load_sentence_encoder(), embed_dim=128)
    saved = a.out / "image_tower.pt"
    if saved.exists():  # the same pre-training (steps included) reused by a second run, e.g. another --lr
        model = build_tiny_clip(profile.backbone.arch)
        state = torch.load(saved)
        model.load_state_dict(state["model"])
        text.head.load_state_dict(state["head"])
        model.eval()
        info = state["info"]
    else:
        model, info = pretrain_image_tower(profile, text, a.steps or profile.backbone.steps, a.out)
        torch.save({"model": model.state_dict(), "head": text.head.state_dict(), "info": info}, saved)
    print(info, flush=True)
    bb = Backbone(model=model, tokenizer=None, image_size=32, mean=CLIP_MEAN, std=CLIP_STD,
                  identity=f"minilm-proto-{time.time()}", arch="tiny-clip-conv+minilm")
    scale = float(model.logit_scale.exp())
    if a.translate:
        a.lr *= 100.0 / scale
        print(f"logit scale {scale:.3f}: CoOp lr {a.lr:.5f}", flush=True)
    ctx0 = text.ctx_init("a photo of a")
    rows = []
    datasets = a.datasets or list(profile.datasets)
    for d in datasets:
        for s in a.seeds or list(pcfg.seeds):
            t0 = time.perf_counter()
            base, targets = unit_data(env, "base2new", d, pcfg.shots, s, train_split=True)
            evals = {}
            for t in targets:
                vb = view_bank(bb, t.data, "none")
                evals[t.split] = (vb.views[0], vb.labels, t.classnames)
            tmpl = template_for(env.templates, d)
            zs = {}
            for split, (feats, labels, names) in evals.items():
                txt = F.normalize(text.head(text.encode([tmpl.format(c) for c in names])), dim=-1)
                zs[split] = accuracy(feats, txt, labels)
            bank = view_bank(bb, base.train, policy, seed=s)
            short, step_s = coop(text, scale, bank, base.classnames, evals, pcfg.short_epochs, s, ctx0, a.lr)
            long, _ = coop(text, scale, bank, base.classnames, evals, a.long, s, ctx0, a.lr)
            row = {"dataset": d, "seed": s, "zs_base": zs["base"], "zs_new": zs["new"],
                   "coop10_base": short["base"], "coop10_new": short["new"], "coop10_train": short["train"],
                   "coop50_base": long["base"], "coop50_new": long["new"], "coop50_train": long["train"],
                   "coop_step_s": step_s, "seconds": time.perf_counter() - t0}
            print(row, flush=True)
            rows.append(row)
    units = pd.DataFrame(rows)
    units.to_csv(a.out / f"minilm_probe_units_lr{a.lr:g}.csv", index=False, float_format="%.4f")
    keys = [k for k in units.columns if k not in ("dataset", "seed", "seconds", "coop_step_s")]
    per = units.groupby("dataset", sort=False)[keys].mean()
    avg = {k: float(per[k].mean()) for k in keys}
    avg["shot_overlap"] = float(np.mean([dataset_overlaps(env, d, pcfg) for d in datasets]))
    result = {**avg, "bars": bars(avg), "per_dataset": per.to_dict(orient="index"), "pretrain": info,
              "coop_step_s": float(units["coop_step_s"].mean()), "augment": policy, "datasets": datasets}
    result["lr"] = a.lr
    result["logit_scale"] = scale
    result["seeds"] = a.seeds or list(pcfg.seeds)
    (a.out / f"minilm_probe_lr{a.lr:g}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "per_dataset"}, indent=1))


if __name__ == "__main__":
    main()
