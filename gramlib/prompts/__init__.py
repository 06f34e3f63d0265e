"""Prompt learners for a frozen open_clip CLIP behind one interface (θ as a flat dict, pure methods).

>>> learner = build_learner("coop", clip_model, tokenizer, ctx_init="a photo of a")
>>> theta = learner.prompt_params()
>>> logits = learner.logits(theta, images, classnames)   # (B, C), eq. 1
"""

from gramlib.prompts.base import PromptLearner, Theta
from gramlib.prompts.cocoop import CoCoOp, CoCoOpConfig
from gramlib.prompts.coop import CoOp, CoOpConfig
from gramlib.prompts.ivlp import IVLP, IVLPConfig
from gramlib.prompts.joint import JointConfig, JointPrompt
from gramlib.prompts.maple import MaPLe, MaPLeConfig
from gramlib.prompts.registry import LEARNERS, build_learner, learner_config
from gramlib.prompts.vpt import VPT, VPTConfig
from gramlib.prompts.zeroshot import ZeroShotCLIP, ZeroShotConfig

__all__ = [
    "LEARNERS",
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
    "build_learner",
    "learner_config",
]
