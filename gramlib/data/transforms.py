"""Image loading and CLIP's preprocessing.

The eval transform is CLIP's (bicubic resize of the shorter side, center crop, normalize with
CLIP's statistics); the train transform is CoOp's default augmentation (random resized crop with
scale 0.08-1 and horizontal flip). Both are built from data (size, mean, std) so a profile's
image size or a different backbone's statistics never require new code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from PIL import Image, UnidentifiedImageError

# openai/CLIP clip.py _transform(): the statistics of CLIP's pre-training data.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image fully decoded as RGB; missing or corrupt files raise naming the path.

    Decoding eagerly (``load()``) makes a truncated file fail here, where the path is known,
    rather than later inside a DataLoader worker.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt or unreadable image ({exc})") from exc


class ToRGB:
    """Picklable (for DataLoader workers) conversion to RGB, as CLIP's ``_convert_image_to_rgb``."""

    def __call__(self, im: Image.Image) -> Image.Image:
        return im if im.mode == "RGB" else im.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def make_transform(image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                   train: bool = False, scale: tuple[float, float] = (0.08, 1.0)):
    """CLIP's eval transform, or CoOp's train augmentation when ``train=True``.

    Returns a ``torchvision.transforms.Compose`` mapping a PIL image to a normalised float tensor
    of shape ``(3, image_size, image_size)``.
    """
    from torchvision import transforms as T

    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 channels, got {mean!r}, {std!r}")
    bicubic = T.InterpolationMode.BICUBIC
    if train:
        head = [T.RandomResizedCrop(image_size, scale=scale, interpolation=bicubic),
                T.RandomHorizontalFlip()]
    else:
        head = [T.Resize(image_size, interpolation=bicubic), T.CenterCrop(image_size)]
    return T.Compose([ToRGB(), *head, T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))])
