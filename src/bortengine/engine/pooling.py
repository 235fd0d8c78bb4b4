"""Sentence embeddings from token states: the sentence-transformers Pooling (+ Normalize) modules, in NumPy.

Read from modules.json and its Pooling module's config.json (1_Pooling/config.json); a model without them pools
by mean, unnormalised, as sentence-transformers does when it wraps a plain transformers model. Several pooling
modes concatenate in sentence-transformers' order: cls, max, mean, mean_sqrt_len. Modules the engine does not run
(Dense, weighted-mean or last-token pooling, ...) are recorded and make encode() refuse rather than return
embeddings that differ from the model's.

transformer_directory is where a model directory keeps its transformer (config.json, weights, tokenizer): itself,
or the sub-folder modules.json names (0_Transformer/); load(), the tokenizer of training and every stage that reads
a teacher find it through this one function.

Shapes: B = batch, T = tokens, H = hidden size.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from bortengine.engine.native import core
from bortengine.errors import ModelLoadError
from bortengine.files import read_json

__all__ = ["Pooling", "POOLING_MODES", "POOLING_CONFIG_KEYS", "transformer_directory"]

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")  # sentence-transformers' concatenation order
# Each mode's key in 1_Pooling/config.json (as sentence-transformers writes it).
POOLING_CONFIG_KEYS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
                       "mean": "pooling_mode_mean_tokens",
                       "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}
_UNSUPPORTED_KEYS = {"pooling_mode_weightedmean_tokens": "weighted-mean pooling",
                     "pooling_mode_lasttoken": "last-token pooling"}
_STRING_MODES = {"cls": POOLING_CONFIG_KEYS["cls"], "max": POOLING_CONFIG_KEYS["max"],
                 "mean": POOLING_CONFIG_KEYS["mean"],
                 "mean_sqrt_len_tokens": POOLING_CONFIG_KEYS["mean_sqrt_len"],
                 "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}
_KNOWN_MODULES = ("sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                  "sentence_transformers.models.Normalize")


@dataclass(frozen=True)
class Pooling:
    """How encode() turns token states into one vector per text."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    unsupported: tuple[str, ...] = ()  # modules of the model that the engine cannot run; encode() refuses
    default_prompt: Optional[str] = None   # config_sentence_transformers.json's, which encode() does not add
    # sentence-transformers' Pooling include_prompt: false leaves a prompt's tokens (and [CLS]) out of the token
    # modes (mean, max, mean_sqrt_len), so no text encode() is given reproduces a prompted embedding of it
    include_prompt: bool = True

    @staticmethod
    def saved_default_prompt(model_dir: Path) -> Optional[str]:
        """The prompt sentence-transformers puts before every text of encode() (prompts[default_prompt_name] in
        config_sentence_transformers.json), or None."""
        saved = read_json(model_dir / "config_sentence_transformers.json", ModelLoadError, missing_ok=True) or {}
        if not isinstance(saved, dict) or not saved.get("default_prompt_name"):
            return None
        prompts = saved.get("prompts")
        prompt = prompts.get(saved["default_prompt_name"]) if isinstance(prompts, dict) else None
        return prompt if isinstance(prompt, str) and prompt else None

    @classmethod
    def load(cls, model_dir: Path) -> "Pooling":
        return replace(cls._load(model_dir), default_prompt=cls.saved_default_prompt(model_dir))

    @classmethod
    def _load(cls, model_dir: Path) -> "Pooling":
        modules_path = model_dir / "modules.json"
        pooling_dir = model_dir / "1_Pooling"
        normalize = False
        unsupported: list[str] = []
        if modules_path.is_file():
            modules = read_json(modules_path, ModelLoadError)
            if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
                raise ModelLoadError(f"{modules_path} must be a list of module objects")
            pooling_dir = None
            for module in modules:
                kind = module.get("type", "")
                if kind.endswith(".Pooling"):
                    pooling_dir = model_dir / module.get("path", "")
                elif kind.endswith(".Normalize"):
                    normalize = True
                elif kind not in _KNOWN_MODULES and not kind.endswith(".Transformer"):
                    unsupported.append(kind or repr(module))
        if pooling_dir is None or not (pooling_dir / "config.json").is_file():
            return cls(("mean",), normalize, tuple(unsupported))

        config_path = pooling_dir / "config.json"
        config = read_json(config_path, ModelLoadError)
        if not isinstance(config, dict):
            raise ModelLoadError(f"{config_path} must be a JSON object")
        named = config.get("pooling_mode")
        if named is not None:
            # sentence-transformers >= 6 saves "pooling_mode": a name, or a list of names whose vectors it puts side
            # by side in that order (before, the constructor took the string form and the file had booleans)
            names = [named] if isinstance(named, str) else named
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                raise ModelLoadError(f"{config_path}: pooling_mode must be a mode's name or a list of them, got "
                                     f"{named!r}")
            keys = [_STRING_MODES.get(n) for n in names]
            if None in keys:
                raise ModelLoadError(f"{config_path}: unknown pooling_mode {names[keys.index(None)]!r}; "
                                     f"sentence-transformers' modes are {sorted(_STRING_MODES)}")
            by_key = {key: mode for mode, key in POOLING_CONFIG_KEYS.items()}
            modes = tuple(by_key[k] for k in keys if k in by_key)
            unsupported += [_UNSUPPORTED_KEYS[k] for k in keys if k in _UNSUPPORTED_KEYS]
        else:
            modes = tuple(m for m in POOLING_MODES if config.get(POOLING_CONFIG_KEYS[m]))
            unsupported += [name for key, name in _UNSUPPORTED_KEYS.items() if config.get(key)]
        if not modes and not unsupported:
            raise ModelLoadError(f"{config_path} enables no pooling mode; set pooling_mode_mean_tokens to true")
        include_prompt = config.get("include_prompt", True)
        if not isinstance(include_prompt, bool):
            raise ModelLoadError(f"{config_path}: include_prompt must be true or false, got {include_prompt!r}")
        return cls(modes, normalize, tuple(unsupported), include_prompt=include_prompt)

    @property
    def prompt_advice(self) -> str:
        """What to do about default_prompt, which encode() does not add."""
        if self.include_prompt or self.modes == ("cls",):
            return "add it to the texts for the model's embeddings"
        return ("and adding it to the texts does not give them either: this model's pooling leaves the prompt's "
                "tokens out (include_prompt false in its Pooling config), which the engine does not; encode(texts) "
                "equals SentenceTransformer.encode(texts, prompt='')")

    def __call__(self, hidden: np.ndarray, mask: np.ndarray, normalize: bool) -> np.ndarray:
        """hidden [B,T,H] float32, mask [B,T] of 0/1 -> [B, H x len(modes)] float32: each mode's vector side by side
        (max over real tokens; mean, or sum over sqrt(count), of real tokens; the first token), then divided by
        its L2 norm if normalize (torch.nn.functional.normalize, eps 1e-12). Native (_core.pool), row by row: a
        served batch's pooling takes microseconds with the GIL held, where NumPy's dozen calls each released it
        and waited to get it back from the event loop (~0.5 ms per forward of 7 short queries in the server)."""
        return core().pool(hidden, mask, self.modes, bool(normalize))


def transformer_directory(path: str | os.PathLike) -> Path:
    """The directory holding config.json and the weights: the model directory itself, or, in a sentence-transformers
    layout that keeps the transformer in a sub-folder (e.g. 0_Transformer/), the folder modules.json names. Raises
    ModelLoadError when the model directory has no config.json and the folder modules.json names has none either
    (a sentence-transformers directory copied without its transformer)."""
    path = Path(path)
    if (path / "config.json").is_file() or not (path / "modules.json").is_file():
        return path
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return path  # Pooling.load reports a broken modules.json
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and str(module.get("type", "")).endswith(".Transformer"):
            sub = path / str(module.get("path", ""))
            if (sub / "config.json").is_file():
                return sub
            if sub != path:
                raise ModelLoadError(
                    f"{path / 'modules.json'} names {sub} as the model's transformer, but {sub} holds no "
                    f"config.json (and {path} holds none either): copy the whole sentence-transformers directory, "
                    f"with its {module.get('path')}/ folder of config.json, weights and tokenizer")
    return path
