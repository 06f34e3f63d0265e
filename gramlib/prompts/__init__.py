"""Prompt learners for a frozen open_clip CLIP behind one interface (θ as a flat dict, pure methods).

>>> learner = CoOp(clip_model, tokenizer, CoOpConfig(ctx_init="a photo of a"))  # or gramlib.learners.build_learner("coop", ...)
>>> theta = learner.prompt_params()
>>> logits = learner.logits(theta, images, classnames)   # (B, C), eq. 1
"""

from gramlib.prompts.base import PromptLearner, Theta
from gramlib.prompts.cocoop import CoCoOp, CoCoOpConfig
from gramlib.prompts.coop import CoOp, CoOpConfig
from gramlib.prompts.ivlp import IVLP, IVLPConfig
from gramlib.prompts.joint import JointConfig, JointPrompt
from gramlib.prompts.maple import MaPLe, MaPLeConfig
from gramlib.prompts.vpt import VPT, VPTConfig
from gramlib.prompts.zeroshot import ZeroShotCLIP, ZeroShotConfig

__all__ = [
    "CoCoOp",
    "CoCoOpConfig",
    "CoOp",
    "CoOpConfig",
    "IVLP",
    "IVLPConfig",
    "JointConfig",
    "JointPrompt",
    "MaPLe",
    "MaPLeConfig",
    "PromptLearner",
    "Theta",
    "VPT",
    "VPTConfig",
    "ZeroShotCLIP",
    "ZeroShotConfig",
]
