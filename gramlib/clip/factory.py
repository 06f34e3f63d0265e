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
    identity: str  # names the weights (file hash, activation): part of every feature-cache key
    arch: str
    device: str = "cpu"  # where the model lives: inputs go there
    precision: str = "fp32"  # fp32 | bf16 (autocast around every forward on CUDA)

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    def autocast(self):
        """bf16 autocast where the profile asks for it (CUDA), else a no-op."""
        if self.precision == "bf16" and torch.device(self.device).type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def resolve_device(device: str) -> str:
    """``auto`` = CUDA when present; an explicit ``cuda`` without a GPU fails here, not mid-run."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"backbone.device is {device!r} but torch sees no CUDA device "
                           f"(torch {torch.__version__}); set it to auto or cpu")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` = bf16 on CUDA (the paper profile's GPU), fp32 on CPU (bf16 matmuls are slow there)."""
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    if precision == "bf16" and torch.device(device).type != "cuda":
        raise ValueError(f"backbone.precision bf16 is bf16 autocast on CUDA, but the device is {device!r}; "
                         "set precision: auto (bf16 on a GPU, fp32 on the CPU) or fp32")
    return precision


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


def build_backbone(cfg: BackboneConfig, checkpoint: str | os.PathLike | None = None,
                   device: str | None = None, precision: str | None = None) -> Backbone:
    """Build the profile's CLIP, frozen and in eval mode (BatchNorm must not update on features).

    ``device`` / ``precision`` default to the config's (``auto``: CUDA and bf16 when a GPU is present).
    ``checkpoint`` is the pre-trained tiny CLIP (mini) or overrides ``cfg.checkpoint`` (real weights).
    """
    import open_clip

    from gramlib.data.transforms import CLIP_MEAN, CLIP_STD

    device = resolve_device(device or cfg.device)
    precision = resolve_precision(precision or cfg.precision, device)
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
        weights = resolve_weights(cfg, checkpoint)
        model = _load_pretrained(cfg, weights)
        identity = weights_identity(cfg, weights)
        image_size = model.visual.image_size
        image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Backbone(model, open_clip.get_tokenizer(cfg.arch), int(image_size), CLIP_MEAN, CLIP_STD, identity,
                    cfg.arch, device, precision)


def uses_quick_gelu(cfg: BackboneConfig) -> bool:
    """QuickGELU where the weights were trained with it: open_clip's pretrained config says so for
    OpenAI's CLIP (``ViT-B-16`` is GELU; the ``openai`` weights need ``x * sigmoid(1.702 x)``)."""
    import open_clip

    if cfg.quick_gelu is not None:
        return cfg.quick_gelu
    if not cfg.pretrained:
        return False
    return bool(open_clip.get_pretrained_cfg(cfg.arch, cfg.pretrained).get("quick_gelu", False))


def _hf_cache_dir() -> str:
    """The Hugging Face hub cache as the environment names it now (not when huggingface_hub was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return os.path.join(home, "hub")


def _missing_weights(cfg: BackboneConfig, where: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"no weights for open_clip {cfg.arch!r} (pretrained={cfg.pretrained!r}): {where}.\n"
        "This machine does not download them; provide them by one of the two routes:\n"
        f"  * the Hugging Face cache: on a machine with internet run python -c \"import open_clip; "
        f"open_clip.create_model('{cfg.arch}', pretrained='{cfg.pretrained or 'openai'}')\", then copy its "
        f"~/.cache/huggingface/hub (or set HF_HUB_CACHE to the copy; looked in {_hf_cache_dir()});\n"
        "  * a local file: set params.yaml's profiles.<profile>.backbone.checkpoint to the .pt / .bin / "
        ".safetensors file (keep `pretrained` naming the weights, e.g. openai, so QuickGELU is chosen right).")


def resolve_weights(cfg: BackboneConfig, checkpoint: str | os.PathLike | None = None) -> Path | None:
    """The weights file of a real backbone, found without any network access (None: random weights).

    Order: ``checkpoint`` argument, ``cfg.checkpoint``, then the Hugging Face cache entry of open_clip's
    pretrained tag. Missing weights fail here, at once, naming both routes.
    """
    import open_clip

    local = checkpoint if checkpoint is not None else cfg.checkpoint
    if local is not None:
        path = Path(local)
        if not path.is_absolute():  # params.yaml paths are the repository's (notebooks run in notebooks/)
            from gramlib.config import REPO

            path = REPO / path
        if not path.is_file():
            raise _missing_weights(cfg, f"backbone.checkpoint {path} does not exist")
        return path
    if not cfg.pretrained:
        return None
    if os.path.isfile(cfg.pretrained):  # open_clip also takes a file path as `pretrained`
        return Path(cfg.pretrained)
    pcfg = open_clip.get_pretrained_cfg(cfg.arch, cfg.pretrained)
    if not pcfg:
        raise ValueError(f"backbone.pretrained: {cfg.pretrained!r} is neither a file nor an open_clip tag of "
                         f"{cfg.arch!r} (tags: {open_clip.list_pretrained_tags_by_model(cfg.arch)})")
    hub = pcfg.get("hf_hub", "")
    if not hub:
        raise _missing_weights(cfg, "open_clip names no Hugging Face repository for this tag")
    from huggingface_hub import try_to_load_from_cache

    repo_id, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names:
        hit = try_to_load_from_cache(repo_id, name, cache_dir=_hf_cache_dir())
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    raise _missing_weights(cfg, f"{repo_id}/{' or '.join(names)} is not in the Hugging Face cache")


def weights_identity(cfg: BackboneConfig, weights: Path | None) -> str:
    """Feature-cache identity of real weights: architecture, tag, activation and the file's hash."""
    act = "quickgelu" if uses_quick_gelu(cfg) else "gelu"
    digest = file_hash(weights) if weights is not None else "random"
    return f"{cfg.arch}:{cfg.pretrained or 'file'}:{act}:{digest}"


def _load_pretrained(cfg: BackboneConfig, weights: Path | None) -> nn.Module:
    """open_clip's model with the resolved weights file (never a hub look-up: the file is local)."""
    import open_clip

    try:
        with _offline():
            return open_clip.create_model(cfg.arch, pretrained=str(weights) if weights else None,
                                          force_quick_gelu=uses_quick_gelu(cfg))
    except Exception as exc:  # open_clip raises RuntimeError / OSError / key mismatches
        raise RuntimeError(f"could not load open_clip {cfg.arch!r} from {weights}: {exc}") from exc


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
