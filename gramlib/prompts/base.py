"""One interface for every prompt learner, plus the small CLIP pieces they share.

GRAM is model-agnostic (§3.3): θ "can represent the parameters of any type of prompt". A learner
therefore exposes θ as a flat dict of 2-D tensors and computes everything as a *pure* function of an
explicitly passed θ, so the meta-learner can run the inner step (eq. 7) on a copy θ' = θ - α R^φ(g)
and differentiate the query loss through it (eqs. 8-10) without cloning modules.

The CLIP forward is re-implemented only where prompts must be spliced in, in
:mod:`gramlib.clip.towers` (re-exported here: ``TextTower``, ``encode_text_embeddings``,
``encode_image_with_prompts``, ``differentiable_attention``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gramlib.data.coop import clean_classname  # CoOp: "_" -> space (one rule for loaders and prompts)
from gramlib.clip.towers import (  # the frozen towers live in towers.py; re-exported here
    TextPrompts,
    TextTower,
    differentiable_attention,
    encode_image_with_prompts,
    encode_text_embeddings,
)

Theta = dict[str, Tensor]
"""Prompt parameters θ: name -> 2-D tensor (e.g. (M, d) context vectors)."""


# --------------------------------------------------------------------------------------------------
# tokenisation
# --------------------------------------------------------------------------------------------------


def count_tokens(tokenizer: object, text: str) -> int:
    """Number of tokens of ``text`` *including* start/end tokens, without any truncation.

    open_clip's tokenizers silently truncate to the context length; prompt learners must not (a
    truncated prompt would drop the class name), so we count first.
    """
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):
        return len(tokenizer.encode(text)) + 2  # type: ignore[attr-defined]
    ids = tokenizer([text], context_length=4096)[0]  # type: ignore[operator]
    return int((ids != 0).sum())


def check_fits(tokenizer: object, text: str, classname: str, n_prompt: int, context_length: int) -> None:
    """Raise ValueError naming the class when ``text`` (prompt + class) exceeds the context length."""
    n = count_tokens(tokenizer, text)
    if n > context_length:
        n_class = count_tokens(tokenizer, clean_classname(classname)) - 2
        raise ValueError(
            f"class name {classname!r} ({n_class} tokens) does not fit: with {n_prompt} prompt "
            f"tokens the prompt {text!r} needs {n} tokens (incl. start/end) but the context "
            f"length is {context_length}"
        )


# --------------------------------------------------------------------------------------------------
# frozen CLIP pieces (pure functions of their inputs)
# --------------------------------------------------------------------------------------------------


def clip_logits(clip_model: nn.Module, image_features: Tensor, text_features: Tensor) -> Tensor:
    """Eq. 1 before the softmax: exp(logit_scale) · cos(image, text) (+ logit_bias if present).

    ``text_features`` is (C, D) shared by all images, or (B, C, D) per image (CoCoOp).
    """
    scale = clip_model.logit_scale.exp()
    if text_features.dim() == 3:
        logits = scale * torch.einsum("bd,bcd->bc", image_features, text_features.to(image_features.dtype))
    else:
        logits = scale * image_features @ text_features.to(image_features.dtype).t()
    bias = getattr(clip_model, "logit_bias", None)
    return logits + bias if bias is not None else logits


def normal_init(shape: tuple[int, ...], std: float = 0.02, like: Tensor | None = None) -> Tensor:
    """N(0, std²) initialisation (CoOp / VPT convention) on ``like``'s device and dtype."""
    kw = {} if like is None else {"device": like.device, "dtype": like.dtype}
    return torch.randn(*shape, **kw) * std


# --------------------------------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------------------------------


class PromptLearner(nn.Module):
    """A frozen CLIP plus learnable prompt parameters θ.

    Subclasses implement :meth:`encode_text` and :meth:`encode_image` as pure functions of θ.
    ``caches_image_features``: θ never touches the image tower, so :meth:`logits` accepts
    precomputed normalised image features (B, D) in place of images. ``caches_text_features``: θ
    never touches the text tower, so :meth:`logits` accepts precomputed class text features (C, D).

    The wrapped model is frozen *in place* (eval mode, ``requires_grad=False``) and may be shared by
    several learners; ``state_dict()`` includes it, so checkpoint θ via :meth:`prompt_params`.
    """

    caches_image_features: ClassVar[bool] = False
    caches_text_features: ClassVar[bool] = False
    # the class text features depend on the image as well as θ (CoCoOp's meta-net): they cannot be
    # computed once per θ and reused across image batches
    image_conditioned_text: ClassVar[bool] = False

    def __init__(self, clip_model: nn.Module, tokenizer: object) -> None:
        super().__init__()
        clip_model.eval()
        clip_model.requires_grad_(False)
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.theta = nn.ParameterDict()
        self._tokens: dict[tuple[str, ...], np.ndarray] = {}

    # ---- θ ---------------------------------------------------------------------------------------
    def prompt_params(self) -> dict[str, nn.Parameter]:
        """The learnable tensors θ, flat and named (empty for zero-shot)."""
        return dict(self.theta.items())

    @torch.no_grad()
    def load_prompt_params(self, theta: Theta) -> None:
        """Copy values into θ (e.g. a meta-learned initialisation θ*); names and shapes must match."""
        own = self.prompt_params()
        if set(own) != set(theta):
            raise ValueError(f"θ names differ: expected {sorted(own)}, got {sorted(theta)}")
        for k, p in own.items():
            if p.shape != theta[k].shape:
                raise ValueError(f"θ[{k!r}] has shape {tuple(theta[k].shape)}, expected {tuple(p.shape)}")
            p.copy_(theta[k])

    def train(self, mode: bool = True) -> PromptLearner:
        """The backbone stays in eval mode (BatchNorm in the mini stem, dropout) whatever ``mode``."""
        super().train(mode)
        self.clip.eval()
        return self

    # ---- tokenisation ----------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return TextTower.of(self.clip).context_length

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    def prompt_texts(self, classnames: Sequence[str]) -> list[str]:
        """The sentences fed to the tokenizer, one per class (placeholders where θ goes)."""
        raise NotImplementedError

    @property
    def n_prompt_tokens(self) -> int:
        """Tokens of the sentence that are not the class name (for error messages)."""
        return 0

    def tokenize(self, classnames: Sequence[str]) -> Tensor:
        """Token ids (C, L) of :meth:`prompt_texts`, memoised per sentence list (CPU, read only): keyed by
        the sentences, not the class names, so a template learner moved to another dataset's template
        (``protocols._template_of``) does not get the old template's tokens back.

        The memo holds a NumPy array, not a tensor: a tensor created inside ``torch.func.grad`` is
        wrapped at that transform's level and would "escape" when reused under another transform.
        """
        texts = self.prompt_texts(classnames)
        key = tuple(texts)
        if key not in self._tokens:
            L = self.context_length
            for name, text in zip(classnames, texts):
                check_fits(self.tokenizer, text, name, self.n_prompt_tokens, L)
            ids = self.tokenizer(texts, context_length=L)  # type: ignore[operator]
            self._tokens[key] = np.asarray(ids.tolist(), dtype=np.int64)
        return torch.from_numpy(self._tokens[key])

    # ---- pure functions of θ -----------------------------------------------------------------------
    def encode_text(self, theta: Theta, classnames: Sequence[str]) -> Tensor:
        """Normalised class text features (C, D) under θ."""
        raise NotImplementedError

    def encode_image(self, theta: Theta, images: Tensor) -> Tensor:
        """Normalised image features (B, D) under θ."""
        raise NotImplementedError

    # ---- what θ splices into each tower (feature shift, RESTORE eq. 6) ------------------------------
    def text_prompts(self, theta: Theta, classnames: Sequence[str], images: Tensor | None = None) -> TextPrompts:
        """The text tower's input under θ (prompt slots, deep prompts), for learners whose θ touches
        the text tower (``caches_text_features`` False); ``images`` only for image-conditioned text."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its text prompts")

    def vision_prompts(self, theta: Theta) -> list[Tensor]:
        """The visual prompt tokens per layer under θ (:func:`gramlib.clip.towers.vision_forward`'s
        convention), for learners whose θ touches the image tower (``caches_image_features`` False)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its visual prompts")

    def _image_features(self, theta: Theta, image_input: Tensor) -> Tensor:
        if image_input.dim() == 2:
            if not self.caches_image_features:
                raise ValueError(f"{type(self).__name__} needs images: θ changes the image features")
            return image_input
        return self.encode_image(theta, image_input)

    def logits(
        self,
        theta: Theta,
        image_input: Tensor,
        classnames: Sequence[str],
        text_features: Tensor | None = None,
    ) -> Tensor:
        """Class logits (B, C) of eq. 1 under θ.

        ``image_input``: images (B, 3, H, W), or normalised features (B, D) if
        ``caches_image_features``. ``text_features``: precomputed (C, D), only if
        ``caches_text_features`` (then ``classnames`` is not re-encoded).
        """
        img = self._image_features(theta, image_input)
        if text_features is None:
            text_features = self.encode_text(theta, classnames)
        elif not self.caches_text_features:
            raise ValueError(f"{type(self).__name__} cannot reuse text features: θ changes them")
        return clip_logits(self.clip, img, text_features)

    def class_features_under(self, theta: Theta, classnames: Sequence[str]) -> Tensor | None:
        """Class text features (C, D) under a *fixed* θ, to score many image batches with one text pass
        (evaluation: before, every batch of 256 test images re-ran the text tower over all classes).
        None where the text also depends on the image (``image_conditioned_text``, CoCoOp)."""
        if self.image_conditioned_text:
            return None
        return self.encode_text(theta, classnames)

    def logits_under(self, theta: Theta, image_input: Tensor, class_features: Tensor) -> Tensor:
        """Eq. 1's logits (B, C) from :meth:`class_features_under` for the same θ (no text pass)."""
        if self.image_conditioned_text:
            raise ValueError(f"{type(self).__name__}: the class features depend on the image; use logits()")
        return clip_logits(self.clip, self._image_features(theta, image_input), class_features)

    def logits_and_aux_loss(
        self,
        theta: Theta,
        image_input: Tensor,
        classnames: Sequence[str],
        text_features: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits (B, C) and an auxiliary training loss (scalar) or None.

        The training hook: ``gramlib.tuning.train.loss_fn`` adds the auxiliary loss to the cross-entropy
        (e.g. RESTORE's λ_fs·L_fs, eq. 10). One method rather than a separate ``auxiliary_loss`` so a
        learner whose regulariser comes out of the same forward pass runs that pass once. Default:
        no auxiliary loss.
        """
        return self.logits(theta, image_input, classnames, text_features=text_features), None

    def forward(self, images: Tensor, classnames: Sequence[str]) -> Tensor:
        """Logits (B, C) with the learner's own θ."""
        return self.logits(self.prompt_params(), images, classnames)

    # ---- helpers for feature caches ----------------------------------------------------------------
    @torch.no_grad()
    def frozen_image_features(self, images: Tensor) -> Tensor:
        """Normalised image features to cache (only for learners that leave the image tower alone)."""
        if not self.caches_image_features:
            raise ValueError(f"{type(self).__name__}: image features depend on θ")
        return self.encode_image(self.prompt_params(), images)

    @torch.no_grad()
    def frozen_text_features(self, classnames: Sequence[str]) -> Tensor:
        """Class text features to cache (only for learners that leave the text tower alone)."""
        if not self.caches_text_features:
            raise ValueError(f"{type(self).__name__}: text features depend on θ")
        return self.encode_text(self.prompt_params(), classnames)


def frozen_encode_image(clip_model: nn.Module, images: Tensor) -> Tensor:
    """Normalised features of the untouched image tower."""
    with differentiable_attention():
        return F.normalize(clip_model.encode_image(images), dim=-1)


__all__ = [
    "PromptLearner",
    "Theta",
    "TextPrompts",
    "TextTower",
    "check_fits",
    "clean_classname",
    "clip_logits",
    "count_tokens",
    "differentiable_attention",
    "encode_image_with_prompts",
    "encode_text_embeddings",
    "frozen_encode_image",
    "normal_init",
]
