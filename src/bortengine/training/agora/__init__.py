"""Agora (de Wynter, arXiv 2010.07990): fine-tuning on scarce data by growing the training set around the
student's dev mistakes, labelled by a larger model. See docs/agora.md.
"""
from __future__ import annotations

from bortengine.training.agora.agora import *  # noqa: F401,F403
from bortengine.training.agora.agora import __all__  # noqa: F401
