"""A tiny random open_clip CLIP for fast tests.

open_clip's ``create_model`` takes no config dict, so the config is written as ``<name>.json`` to a
temporary directory and registered with ``open_clip.factory.add_model_config`` first.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip

from gramlib.clip.factory import ConvStem
import torch
from torch import nn


@dataclass(frozen=True)
class TinyCLIPConfig:
    """Sizes of the tiny model; defaults give a ~0.2 M-parameter CLIP that runs in ms on CPU."""

    name: str = "tiny-test-clip"
    embed_dim: int = 64
    image_size: int = 32
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    context_length: int = 24
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    extra_text: dict[str, Any] = field(default_factory=dict)
    extra_vision: dict[str, Any] = field(default_factory=dict)

    def to_open_clip(self) -> dict[str, Any]:
        """The JSON config in open_clip's schema (``head_width = width / heads``)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "image_size": self.image_size,
                "layers": self.vision_layers,
                "width": self.vision_width,
                "head_width": self.vision_width // self.vision_heads,
                "patch_size": self.patch_size,
                **self.extra_vision,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": 49408,
                "width": self.text_width,
                "heads": self.text_heads,
                "layers": self.text_layers,
                **self.extra_text,
            },
        }


def register_config(cfg: TinyCLIPConfig) -> str:
    """Register ``cfg`` with open_clip under ``cfg.name``; returns the name."""
    with tempfile.TemporaryDirectory(prefix="tiny_openclip_") as tmp:  # open_clip reads it at once
        path = Path(tmp) / f"{cfg.name}.json"
        path.write_text(json.dumps(cfg.to_open_clip()))
        open_clip.factory.add_model_config(path)
    return cfg.name


def build_tiny_clip(
    cfg: TinyCLIPConfig | None = None, seed: int = 0, conv_stem: bool = False
) -> tuple[nn.Module, Any]:
    """Build (model, tokenizer): a random tiny open_clip CLIP in eval mode, float32, CPU.

    With ``conv_stem`` the patch embedding is replaced by the mini profile's own
    :class:`gramlib.clip.factory.ConvStem` (grid 32/8 = 4).
    """
    cfg = cfg or TinyCLIPConfig()
    name = register_config(cfg)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    if conv_stem:
        assert cfg.image_size // cfg.patch_size == cfg.image_size // 8, "stem downsamples by 8"
        model.visual.conv1 = ConvStem(cfg.vision_width)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    return model, tokenizer


__all__ = ["TinyCLIPConfig", "ConvStem", "build_tiny_clip", "register_config"]
