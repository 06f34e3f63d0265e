"""One backbone factory over profiles; open_clip in both.

* paper: ``ViT-B-16`` with ``pretrained="openai"`` (the exact CLIP of GRAM's experiments).
* mini/smoke: a tiny open_clip config (``model_configs/tiny-clip-conv.json``) whose patch
  embedding ``visual.conv1`` is replaced by a small convolutional stem. The rest is open_clip's own
  VisionTransformer and text transformer, so CoOp and VPT act on the same classes as on ViT-B/16.
  A plain tiny ViT learns shapes far too slowly on CPU; the stem is the one architectural liberty.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from gramlib.config import BackboneConfig
from gramlib.io import file_hash, load_safetensors

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
TINY_ARCHS = {p.stem for p in CONFIG_DIR.glob("*.json")}


class ConvStem(nn.Module):
    """Three stride-2 3x3 convolutions standing in for the ViT patch embedding (stride 8 overall).

    Its output is (B, width, grid, grid), exactly what open_clip's VisionTransformer expects from
    ``conv1``, so every downstream piece of open_clip code (and VPT) is unchanged.
    """

    def __init__(self, width: int, hidden: tuple[int, int] = (32, 64)):
        super().__init__()
        a, b = hidden
        self.net = nn.Sequential(
            nn.Conv2d(3, a, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(a), nn.GELU(),
            nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.GELU(),
            nn.Conv2d(b, width, 3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class Backbone:
    """A CLIP model with the pieces every consumer needs to use it consistently."""

    model: nn.Module
    tokenizer: Callable
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    identity: str  # names the weights: part of every feature-cache key
    arch: str

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])


def _register_tiny_configs() -> None:
    import open_clip

    open_clip.factory.add_model_config(CONFIG_DIR)


def build_tiny_clip(arch: str = "tiny-clip-conv") -> nn.Module:
    """A randomly initialised tiny CLIP with the convolutional stem."""
    import open_clip

    _register_tiny_configs()
    model = open_clip.create_model(arch, pretrained=None)
    model.visual.conv1 = ConvStem(model.visual.conv1.out_channels)
    return model


def tiny_config(arch: str) -> dict:
    return json.loads((CONFIG_DIR / f"{arch}.json").read_text())


def build_backbone(cfg: BackboneConfig, checkpoint: str | os.PathLike | None = None, device: str = "cpu") -> Backbone:
    """Build the profile's CLIP, frozen and in eval mode (BatchNorm must not update on features)."""
    import open_clip

    from gramlib.data.transforms import CLIP_MEAN, CLIP_STD

    if cfg.arch in TINY_ARCHS:
        model = build_tiny_clip(cfg.arch)
        identity = f"{cfg.arch}:random"
        if checkpoint is not None:
            state = load_safetensors(checkpoint)
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"{checkpoint}: does not match architecture {cfg.arch!r} "
                                 f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
            identity = f"{cfg.arch}:{file_hash(checkpoint)}"
        image_size = tiny_config(cfg.arch)["vision_cfg"]["image_size"]
    else:
        model = _load_pretrained(cfg, checkpoint)
        identity = f"{cfg.arch}:{cfg.pretrained or 'random'}"
        image_size = model.visual.image_size
        image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Backbone(model, open_clip.get_tokenizer(cfg.arch), int(image_size), CLIP_MEAN, CLIP_STD, identity, cfg.arch)


def _load_pretrained(cfg: BackboneConfig, checkpoint: str | os.PathLike | None) -> nn.Module:
    """Load real weights, failing at once (not after a network time-out) when they are absent."""
    import open_clip

    source = str(checkpoint) if checkpoint is not None else cfg.pretrained
    if checkpoint is not None and not Path(checkpoint).exists():
        raise FileNotFoundError(f"backbone weights not found: {checkpoint}")
    try:
        with _offline():
            return open_clip.create_model(cfg.arch, pretrained=source)
    except Exception as exc:  # open_clip raises RuntimeError / HF errors / OSError
        raise RuntimeError(
            f"could not load open_clip {cfg.arch!r} with pretrained={source!r} without network ({exc}).\n"
            "Provide the weights in one of these ways:\n"
            f"  * on a machine with internet: python -c \"import open_clip; open_clip.create_model('{cfg.arch}', "
            f"pretrained='{cfg.pretrained}')\" fills the Hugging Face cache (~/.cache/huggingface), then copy it here;\n"
            "  * or download the .bin/.safetensors file and set params.yaml's profiles.<profile>.backbone.pretrained "
            "to its path (open_clip loads a file path as well as a tag), or pass the path as build_backbone's "
            "checkpoint."
        ) from exc


@contextlib.contextmanager
def _offline():
    """Make Hugging Face hub look-ups fail immediately instead of waiting for a network."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    try:
        for k in keys:
            os.environ[k] = "1"
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
