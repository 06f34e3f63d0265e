"""RESTORE (arXiv:2403.06136): feature shift (eq. 6), its consistency loss (eqs. 7-10) and the
feature-shift-guided surgery block (eq. 11), on top of MaPLe's prompts.

>>> norms = feature_shift_norms(learner, theta, images, classnames)  # any learner of gramlib.learners
>>> loss = feature_shift_consistency(**norms, lambda_fs=1.0)
>>> restore = build_learner("restore", clip_model, tokenizer)          # MaPLe + surgery + L_fs
"""

from gramlib.restore.consistency import feature_shift_consistency, shift_discrepancy
from gramlib.restore.feature_shift import block_shift_norm, feature_shift_norms, image_shift, text_shift
from gramlib.restore.learner import Restore, RestoreConfig
from gramlib.restore.surgery import SURGERY_MODES, apply_surgery, init_surgery, surgery, surgery_alpha

__all__ = [
    "SURGERY_MODES",
    "Restore",
    "RestoreConfig",
    "apply_surgery",
    "block_shift_norm",
    "feature_shift_consistency",
    "feature_shift_norms",
    "image_shift",
    "init_surgery",
    "shift_discrepancy",
    "surgery",
    "surgery_alpha",
    "text_shift",
]
