"""The smoke profile, built once per test session in a temporary folder.

World generation, tiny-CLIP pre-training and feature caches are shared by every test that needs a
realistic (if small) end-to-end setting; nothing is written into the repository's data/ or artifacts/.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gramlib.config import Profile, get_profile


def smoke_profile(root: Path, **backbone_overrides) -> Profile:
    prof = get_profile("smoke")
    backbone = dataclasses.replace(prof.backbone, **backbone_overrides)
    return dataclasses.replace(prof, data_root=str(root / "data"), artifacts_root=str(root / "artifacts"),
                               backbone=backbone)
