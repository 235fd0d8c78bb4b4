"""Sentence embeddings from token states: the sentence-transformers Pooling (+ Dense, + Normalize) modules.

Read from modules.json and its Pooling module's config.json (1_Pooling/config.json); a model without them pools
by mean, unnormalised, as sentence-transformers does when it wraps a plain transformers model. Several pooling
modes concatenate in sentence-transformers' order: cls, max, mean, mean_sqrt_len. Dense modules after the pooling
(LaBSE's, distiluse's projections: a linear layer and an activation, in modules.json's order, each read from its
folder's model.safetensors) run on the pooled vectors (on the engine's GEMM), before the normalisation. Modules the
engine does not run (weighted-mean or last-token pooling, a Dense on token states, ...) are recorded and make
encode() refuse rather than return embeddings that differ from the model's.

transformer_directory is where a model directory keeps its transformer (config.json, weights, tokenizer): itself,
or the sub-folder modules.json names (0_Transformer/); load(), the tokenizer of training and every stage that reads
a teacher find it through this one function.

Shapes: B = batch, T = tokens, H = hidden size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from bortengine.engine.config import MAX_CONFIG_BYTES
from bortengine.engine.heads import ACTIVATIONS, Linear
from bortengine.engine.native import core
from bortengine.engine.weights import read_safetensors_header
from bortengine.errors import ModelLoadError
from bortengine.files import is_regular_file, read_json

__all__ = ["Pooling", "Dense", "POOLING_MODES", "POOLING_CONFIG_KEYS", "transformer_directory",
           "sentence_transformers_config"]

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
# Dense's activation_function (the class's full name, as sentence-transformers saves it), elementwise on [B, O]
_ACTIVATIONS = {
    "torch.nn.modules.activation.Tanh": np.tanh,
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.ReLU": ACTIVATIONS["relu"],
    "torch.nn.modules.activation.GELU": ACTIVATIONS["gelu"],   # erf's, torch's default
    "torch.nn.modules.activation.Sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "torch.nn.modules.activation.SiLU": lambda x: x / (1 + np.exp(-x)),
}
# The transformer module's own settings (max_seq_length, do_lower_case): sentence-transformers reads the first of
# these it finds beside the transformer (models saved by its early versions named the file after the model type).
ST_CONFIG_NAMES = ("sentence_bert_config.json", "sentence_roberta_config.json", "sentence_distilbert_config.json",
                   "sentence_camembert_config.json", "sentence_albert_config.json",
                   "sentence_xlm-roberta_config.json", "sentence_xlnet_config.json")
# Normalize's default feature (sentence-transformers >= 6 saves module_input_name / module_output_name)
SENTENCE_EMBEDDING = "sentence_embedding"
_DENSE_KEYS = {"in_features", "out_features", "bias", "activation_function", "module_input_name",
               "module_output_name", "use_residual"}


@dataclass(frozen=True, eq=False)
class Dense:
    """sentence-transformers' Dense module on pooled vectors: activation(x W^T + b), + x (or + x R^T when the sizes
    differ) with use_residual. On the engine's own GEMM (heads.Linear), so each row's result is the same whatever
    rows share the call. Shapes: x [B, I] -> [B, O]."""

    linear: Linear
    activation: str
    use_residual: bool = False
    residual: Optional[Linear] = None

    @property
    def in_features(self) -> int:
        return int(self.linear.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.linear.weight.shape[0])

    def __repr__(self) -> str:   # its sizes, not its weights (the dataclass's would print every array)
        return (f"Dense({self.in_features} -> {self.out_features}, {self.activation.rsplit('.', 1)[-1]}"
                f"{', use_residual' if self.use_residual else ''})")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = _ACTIVATIONS[self.activation](self.linear(x))
        if self.use_residual:
            y = y + (x if self.residual is None else self.residual(x))
        return np.asarray(y, dtype=np.float32)

    @classmethod
    def load(cls, folder: Path) -> "Dense":
        """The module saved in `folder` (config.json + model.safetensors); ModelLoadError saying what is wrong."""
        config_path = folder / "config.json"
        config = read_json(config_path, ModelLoadError, max_bytes=MAX_CONFIG_BYTES)
        if not isinstance(config, dict):
            raise ModelLoadError(f"{config_path} must be a JSON object")
        unknown = sorted(set(config) - _DENSE_KEYS)
        if unknown:
            raise ModelLoadError(f"{config_path} has keys this engine does not know for a Dense module: {unknown}")
        for key in ("module_input_name", "module_output_name"):
            if config.get(key, "sentence_embedding") != "sentence_embedding":
                raise ModelLoadError(
                    f"{config_path}: {key} is {config[key]!r}; the engine runs a Dense module only on the sentence "
                    f"embedding (sentence_embedding), not on token states")
        sizes = [config.get("in_features"), config.get("out_features")]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
            raise ModelLoadError(f"{config_path}: in_features and out_features must be positive integers, got {sizes}")
        n_in, n_out = sizes
        activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
        if not isinstance(activation, str) or activation not in _ACTIVATIONS:
            raise ModelLoadError(
                f"{config_path}: activation_function {activation!r} is not one the engine runs "
                f"({sorted(a.rsplit('.', 1)[1] for a in _ACTIVATIONS)})")
        flags = {key: config.get(key, key == "bias") for key in ("bias", "use_residual")}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise ModelLoadError(f"{config_path}: {key} must be true or false, got {value!r}")
        weights_path = folder / "model.safetensors"
        if not weights_path.is_file():
            model = repr(str(folder.parent))
            if not (folder / "pytorch_model.bin").is_file():
                raise ModelLoadError(f"{folder} has no weights (model.safetensors): the sentence-transformers "
                                     f"directory was copied without them; copy that folder from the model")
            raise ModelLoadError(
                f"{folder} has pytorch_model.bin but no model.safetensors; bortengine reads safetensors only. Convert "
                f"once with: python -c \"from sentence_transformers import SentenceTransformer; "
                f"SentenceTransformer({model}, device='cpu').save({model})\"")
        entries = read_safetensors_header(weights_path)
        wanted = {"linear.weight": (n_out, n_in)}
        if flags["bias"]:
            wanted["linear.bias"] = (n_out,)
        if flags["use_residual"] and n_in != n_out:
            wanted["residual.weight"] = (n_out, n_in)
        for name, shape in wanted.items():
            if name not in entries:
                raise ModelLoadError(f"{weights_path} has no tensor {name!r} (it has {sorted(entries)})")
            if entries[name].shape != shape:
                raise ModelLoadError(f"{weights_path}: {name} has shape {list(entries[name].shape)}, expected "
                                     f"{list(shape)} (in_features {n_in}, out_features {n_out} in config.json)")
        read = {name: entries[name].read() for name in wanted}   # float32, checked finite
        residual = read.get("residual.weight")
        return cls(Linear(read["linear.weight"], read.get("linear.bias", np.zeros(n_out, np.float32))), activation,
                   flags["use_residual"],
                   None if residual is None else Linear(residual, np.zeros(n_out, np.float32)))


@dataclass(frozen=True)
class Pooling:
    """How encode() turns token states into one vector per text."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    dense: tuple[Dense, ...] = ()   # applied in order to the pooled vectors, before the normalisation
    unsupported: tuple[str, ...] = ()  # modules of the model that the engine cannot run; encode() refuses
    default_prompt: Optional[str] = None   # config_sentence_transformers.json's, which encode() does not add
    # config_sentence_transformers.json's model_type "CrossEncoder": its prompt goes before each pair's first text
    cross_encoder: bool = False
    # sentence-transformers' Pooling include_prompt: false leaves a prompt's tokens (and [CLS]) out of every mode
    # (cls then takes the text's first token), so no text encode() is given reproduces a prompted embedding of it
    include_prompt: bool = True

    @classmethod
    def load(cls, model_dir: Path, dense: bool = True) -> "Pooling":
        """The pooling a sentence-transformers directory (or a plain model directory: mean) asks for. dense=False
        leaves its Dense modules out unread, for a caller that takes only the pooling modes and Normalize (a
        student's directory written after a teacher's, whose Dense has the teacher's width)."""
        saved = read_json(model_dir / "config_sentence_transformers.json", ModelLoadError, missing_ok=True,
                          max_bytes=MAX_CONFIG_BYTES) or {}
        saved = saved if isinstance(saved, dict) else {}
        return replace(cls._load(model_dir, dense), default_prompt=_default_prompt(saved),
                       cross_encoder=saved.get("model_type") == "CrossEncoder")

    @classmethod
    def _load(cls, model_dir: Path, read_dense: bool) -> "Pooling":
        modules_path = model_dir / "modules.json"
        pooling_dir = model_dir / "1_Pooling"
        normalize = False
        unsupported: list[str] = []
        dense: list[Dense] = []
        has_modules = is_regular_file(modules_path, ModelLoadError)
        if has_modules:
            pooling_dir = None
            for module in _modules(model_dir):
                kind = module["type"]
                if kind.endswith(".Pooling"):
                    pooling_dir = _module_folder(model_dir, module)
                elif kind.endswith(".Normalize"):
                    effect = _normalize_effect(_module_folder(model_dir, module), pooling_dir is not None)
                    if effect == "sentence":
                        normalize = True
                    elif effect is not None:
                        unsupported.append(f"{kind} {effect}")
                elif kind.endswith(".Dense") and not read_dense:
                    continue
                elif kind.endswith(".Dense") and pooling_dir is not None and not normalize:
                    dense.append(Dense.load(_module_folder(model_dir, module)))
                elif kind.endswith(".Dense"):
                    unsupported.append(f"{kind} {'before the Pooling' if pooling_dir is None else 'after Normalize'}")
                elif kind not in _KNOWN_MODULES and not kind.endswith(".Transformer"):
                    unsupported.append(kind or repr(module))
        if has_modules and pooling_dir is not None and not (pooling_dir / "config.json").is_file():
            # sentence-transformers refuses to load it too; mean pooling in its place would be another model
            raise ModelLoadError(
                f"{modules_path} names a Pooling module in {pooling_dir}, which has no config.json: the "
                f"sentence-transformers directory was copied without it; copy that folder from the model")
        if pooling_dir is None or not (pooling_dir / "config.json").is_file():
            return cls(("mean",), normalize, tuple(dense), tuple(unsupported))

        config_path = pooling_dir / "config.json"
        config = read_json(config_path, ModelLoadError, max_bytes=MAX_CONFIG_BYTES)
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
            modes = ("mean",)   # sentence-transformers' default when the file enables none (or names none)
        include_prompt = config.get("include_prompt", True)
        if not isinstance(include_prompt, bool):
            raise ModelLoadError(f"{config_path}: include_prompt must be true or false, got {include_prompt!r}")
        return cls(modes, normalize, tuple(dense), tuple(unsupported), include_prompt=include_prompt)

    def width(self, hidden_size: int) -> int:
        """The embedding size encode() gives for token states of hidden_size: the last Dense's out_features, else
        hidden_size per pooling mode. Raises ModelLoadError when a Dense does not take what comes before it."""
        width = hidden_size * len(self.modes)
        for i, layer in enumerate(self.dense):
            if layer.in_features != width:
                raise ModelLoadError(
                    f"Dense module {i + 1} after the pooling takes {layer.in_features} features, but "
                    + ("the pooling gives" if i == 0 else "the Dense before it gives") + f" {width} (hidden size "
                    f"{hidden_size} x {len(self.modes)} pooling mode(s){', then Dense' if i else ''}): the "
                    f"sentence-transformers directory's modules do not fit together")
            width = layer.out_features
        return width

    def prompt_warning(self, path: Path) -> str:
        """What PromptWarning says of default_prompt, which the engine does not add."""
        said = (f"{path} has the default prompt {self.default_prompt!r} (config_sentence_transformers.json "
                f"default_prompt_name), which ")
        if self.cross_encoder:
            return said + ("CrossEncoder.predict and rank put before the first text of every pair (the query); "
                           "rerank() and scores() do not: put it before the query (the first texts) for the model's "
                           "scores")
        said += "SentenceTransformer.encode puts before every text; encode() does not, "
        if self.include_prompt:
            return said + "add it to the texts for the model's embeddings"
        # sentence-transformers masks [CLS] and the prompt's tokens out: its "cls" is then the text's first token
        return said + ("and adding it to the texts does not give them either: this model's pooling leaves the "
                       "prompt's tokens out (include_prompt false in its Pooling config), which the engine does not; "
                       "encode(texts) equals SentenceTransformer.encode(texts, prompt='')")

    def __call__(self, hidden: np.ndarray, mask: np.ndarray, normalize: bool) -> np.ndarray:
        """hidden [B,T,H] float32, mask [B,T] of 0/1 -> [B, H x len(modes)] float32: each mode's vector side by side
        (max over real tokens; mean, or sum over sqrt(count), of real tokens; the first token), then divided by
        its L2 norm if normalize (torch.nn.functional.normalize, eps 1e-12). Native (_core.pool), row by row: a
        served batch's pooling takes microseconds with the GIL held, where NumPy's dozen calls each released it
        and waited to get it back from the event loop (~0.5 ms per forward of 7 short queries in the server).
        With Dense modules: [B, O] of the last one, normalised after them."""
        if not self.dense:
            return core().pool(hidden, mask, self.modes, bool(normalize))
        x = core().pool(hidden, mask, self.modes, False)
        for layer in self.dense:
            x = layer(x)
        if not normalize:
            return np.ascontiguousarray(x, dtype=np.float32)
        # the pool's own normalisation of each row as a one-token sequence (its "cls" is that token): one formula
        # for the embeddings with and without Dense modules
        x = np.ascontiguousarray(x, dtype=np.float32)[:, None, :]
        return core().pool(x, np.ones(x.shape[:2], dtype=mask.dtype), ("cls",), True)


def transformer_directory(path: str | os.PathLike) -> Path:
    """The directory holding config.json and the weights: the model directory itself, or, in a sentence-transformers
    layout that keeps the transformer in a sub-folder (e.g. 0_Transformer/), the folder modules.json names. Raises
    ModelLoadError when the model directory has no config.json and the folder modules.json names has none either
    (a sentence-transformers directory copied without its transformer)."""
    path = Path(path)
    if (path / "config.json").is_file() or not is_regular_file(path / "modules.json", ModelLoadError):
        return path
    for module in _modules(path):
        if module["type"].endswith(".Transformer"):
            sub = _module_folder(path, module)
            if (sub / "config.json").is_file():
                return sub
            if sub != path:
                raise ModelLoadError(
                    f"{path / 'modules.json'} names {sub} as the model's transformer, but {sub} holds no "
                    f"config.json (and {path} holds none either): copy the whole sentence-transformers directory, "
                    f"with its {module.get('path')}/ folder of config.json, weights and tokenizer")
    return path


def _modules(model_dir: Path) -> list[dict]:
    """modules.json of a sentence-transformers directory: its module objects, each with a "type" string."""
    path = model_dir / "modules.json"
    modules = read_json(path, ModelLoadError, max_bytes=MAX_CONFIG_BYTES)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelLoadError(f"{path} must be a list of module objects")
    for module in modules:
        if not isinstance(module.setdefault("type", ""), str):
            raise ModelLoadError(f"{path}: a module's type must be a class name, got {module['type']!r}")
    return modules


def _module_folder(model_dir: Path, module: dict) -> Path:
    """The folder of a module modules.json names: inside the model directory ("" is the directory itself). A path
    out of it (absolute, or through "..") would load another model's files, or any file, in its place."""
    folder = module.get("path", "")
    if not isinstance(folder, str) or Path(folder).is_absolute() or ".." in Path(folder).parts:
        raise ModelLoadError(f"{model_dir / 'modules.json'}: a module's path must be a folder inside the model "
                             f"directory, got {folder!r}")
    return model_dir / folder


def _default_prompt(saved: dict) -> Optional[str]:
    """The prompt sentence-transformers puts before every text (prompts[default_prompt_name] of
    config_sentence_transformers.json, `saved`), or None."""
    name = saved.get("default_prompt_name")
    if not name or not isinstance(name, str):
        return None
    prompts = saved.get("prompts")
    prompt = prompts.get(name) if isinstance(prompts, dict) else None
    return prompt if isinstance(prompt, str) and prompt else None


def _normalize_effect(folder: Path, after_pooling: bool) -> Optional[str]:
    """What a Normalize module (its folder; after the Pooling or before it) does to the embeddings
    SentenceTransformer.encode returns: "sentence" (the pooled vector normalised: the common case), None (nothing:
    the sentence embedding is not there yet, or it writes another feature), or what it does that the engine does not
    (normalising the token states before the Pooling, ...), for Pooling.unsupported. sentence-transformers >= 6
    saves the feature it reads and the one it writes (module_input_name, module_output_name) in the module's
    config.json; older ones save none, and normalise the sentence embedding."""
    config = read_json(folder / "config.json", ModelLoadError, missing_ok=True, max_bytes=MAX_CONFIG_BYTES) or {}
    if not isinstance(config, dict):
        raise ModelLoadError(f"{folder / 'config.json'} must be a JSON object")
    source = config.get("module_input_name") or SENTENCE_EMBEDDING
    target = config.get("module_output_name") or source
    if not after_pooling:
        # no sentence embedding to normalise yet: sentence-transformers skips it
        return None if source == SENTENCE_EMBEDDING else f"of the feature {source!r} before the Pooling"
    if target != SENTENCE_EMBEDDING:
        return None
    return "sentence" if source == SENTENCE_EMBEDDING else f"of the feature {source!r} into the sentence embedding"


def sentence_transformers_config(transformer_dir: Path) -> dict:
    """The transformer module's settings in a sentence-transformers directory (max_seq_length, do_lower_case): the
    first of ST_CONFIG_NAMES in transformer_dir that holds any, as sentence-transformers reads them; {} without."""
    for name in ST_CONFIG_NAMES:
        config = read_json(transformer_dir / name, ModelLoadError, missing_ok=True, max_bytes=MAX_CONFIG_BYTES)
        if config is not None and not isinstance(config, dict):
            raise ModelLoadError(f"{transformer_dir / name} must be a JSON object")
        if config:
            return config
    return {}
