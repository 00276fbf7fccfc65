"""The transcript scoring pipeline: preprocess (token windows) → token-budget batches through a runtime → postprocess
(calibrated probabilities, levels, turn and conversation scores), with the encoding cache."""
from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections import OrderedDict
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from carelens.data.adapters import answered_customer_texts
from carelens.data.contracts import LEVEL_NAMES, Conversation
from carelens.data.readers import Keys, conversation_from_record
from carelens.models.conversation_features import (
    AGENT, DRIVER, EMPATHY_LEVEL_COLUMNS, EMPATHY_PRESENT_COLUMNS, KEYS, POSITION, conversation_features,
)
from carelens.models.drivers import DriverModel, drivers_for
from carelens.models.registry import Registry, RegistryError
from carelens.data.errors import CareLensError, UsageError
from carelens.models.runtime_choice import (
    NO_NATIVE_BF16, RuntimeChoice, choice_key, chosen_by_measuring, eligible, largest_batch_change, probe_texts,
    remembered, runs_bf16_natively, turns_per_second, write_remembered,
)
from carelens.models.runtimes import (
    DEFAULT_PRECISION, DEFAULT_RUNTIME, PRECISIONS, OnnxRuntime, Runtime, TorchRuntime, checked_choice,
    configure_threads, onnx_file,
)
from carelens.models.transcript import (
    MODEL_NAME, PROBABILITY_COLUMNS, TranscriptModel, pooled_by_owner, utf8_safe,
)

PathLike = Union[str, Path]
#: Recent encodings a scoring process remembers: 10,000 MiniLM vectors and their 16-byte keys take about 17 MB. A
#: synthetic day of 10,000 conversations held 18,815 distinct inputs: the cache is full within the first few thousand
#: conversations, so the nightly job's memory does not grow with the day.
SCORING_CACHE_ENTRIES = 10_000
#: Padded tokens per encoder batch: about 64 tweets, or 8 windows of 256 tokens. On the 2-core machine ONNX Runtime
#: scored tweets fastest between 1,024 and 2,048 and slower at 4,096 and beyond (the batch outgrows the caches).
DEFAULT_TOKEN_BUDGET = 2048


@dataclass(frozen=True)
class Resolved:
    """How a scoring process will run the transcript model: runtime and precision, a warning when a default could
    not be honoured, and, when `auto` chose, what it measured and why."""
    runtime: str
    precision: str
    warning: Optional[str] = None
    choice: Optional[RuntimeChoice] = None


@dataclass(frozen=True)
class ScoringOptions:
    """How a scoring process runs the transcript model: runtime and precision (None: `auto` on a CPU, see
    `ScoringOptions.resolved`), device, intra-op threads (None: every core the process may use), padded tokens per
    encoder batch, and how many recent encodings it remembers (0: none)."""
    runtime: Optional[str] = None
    precision: Optional[str] = None
    device: str = "cpu"
    threads: Optional[int] = None
    token_budget: int = DEFAULT_TOKEN_BUDGET
    cache_entries: int = SCORING_CACHE_ENTRIES

    def __post_init__(self):
        if self.runtime == "auto" and self.precision is not None:
            raise UsageError(f"--runtime auto chooses the precision too; to score at {self.precision}, name the "
                             f"runtime (onnx or torch)")
        if not self.automatic:
            checked_choice(*self.chosen, self.device)
        if self.token_budget < 16:
            raise UsageError(f"--token-budget {self.token_budget}: give at least 16 tokens")

    @property
    def automatic(self) -> bool:
        """Whether `auto` chooses: on a CPU, --runtime auto or neither runtime nor precision given (on CUDA, `auto` is
        the device's default, torch fp16)."""
        return self.device == "cpu" and (self.runtime == "auto" or (self.runtime is None and self.precision is None))

    @property
    def chosen(self) -> tuple[str, str]:
        """(runtime, precision) of a choice `auto` does not make, the defaults filled in: ONNX fp32 on a CPU, torch
        fp16 on CUDA, torch for a precision only torch runs (bf16, fp16)."""
        precision = self.precision or (DEFAULT_PRECISION if self.device == "cpu" else "fp16")
        onnx_runs_it = self.device == "cpu" and precision in PRECISIONS["onnx"]
        runtime = self.runtime if self.runtime not in (None, "auto") else None
        return runtime or (DEFAULT_RUNTIME if onnx_runs_it else "torch"), precision

    def resolved(self, directory: Optional[Path], model: Optional[TranscriptModel] = None,
                 metadata: Optional[dict] = None) -> Resolved:
        """How the saved model in `directory` will run. `auto` takes the choice remembered for this CPU and model,
        or measures the candidates (`auto_choice`; `model` and `metadata` spare loading them again). Otherwise a model
        saved without an ONNX export scores with torch at the same precision when the runtime was left to the
        default; asked for explicitly, a missing export is a RegistryError."""
        where = f"{directory}" if directory is not None else "a model in memory"
        hint = "onnx/encoder.<precision>.onnx, written when a model is published"
        missing = (f"{where} has no ONNX export ({hint}): scoring with torch instead, which is slower; models "
                   f"published by this version of CareLens carry one")
        if self.automatic and directory is not None:
            choice = auto_choice(directory, model, metadata, configure_threads(self.threads), self.token_budget)
            return Resolved(choice.runtime, choice.precision,
                            None if onnx_file(directory, DEFAULT_PRECISION).is_file() else missing, choice)
        runtime, precision = self.chosen
        if runtime == "torch" or (directory is not None and onnx_file(directory, precision).is_file()):
            return Resolved(runtime, precision)
        if self.runtime is not None:
            raise RegistryError(f"{where}: no ONNX export at {precision} ({hint}); re-publish the model or score "
                                f"with --runtime torch")
        return Resolved("torch", precision, missing)


def runtime_for(model: TranscriptModel, directory: Optional[Path], runtime: str, precision: str, device: str = "cpu",
                threads: Optional[int] = None) -> Runtime:
    """The runtime that runs the model's encoder: torch on its weights, or ONNX Runtime on its export in
    `directory`."""
    if runtime == "torch":
        return TorchRuntime(model.encoder, precision, device)
    return OnnxRuntime(onnx_file(directory, precision), precision, threads)


def auto_choice(directory: Path, model: Optional[TranscriptModel], metadata: Optional[dict], threads: int,
                token_budget: int) -> RuntimeChoice:
    """The runtime `auto` scores the saved model with on this CPU: remembered from an earlier load, or measured now
    (each eligible runtime scores the probe turns at several batch sizes and for speed) and remembered."""
    key = choice_key(directory, threads, token_budget)
    known = remembered(key)
    if known is not None:
        return known
    model = model or TranscriptModel.from_pretrained(directory)
    if metadata is None:
        path = Path(directory) / "metadata.json"
        metadata = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    texts = list(probe_texts())

    def measure(runtime: str, precision: str) -> tuple[float, float]:
        pipeline = TranscriptPipeline(model, runtime_for(model, directory, runtime, precision, "cpu", threads))

        def probabilities(batch: list[str], budget: int) -> np.ndarray:
            pipeline.token_budget = budget
            logits = model.head_logits(pipeline.forward(model.preprocess(batch)))
            return np.hstack([model.postprocess_sentiment(logits[0], batch),
                              model.postprocess_empathy(logits[1], batch).reshape(len(batch), -1)])

        change = largest_batch_change(probabilities, texts, token_budget)
        pipeline.token_budget = token_budget
        return turns_per_second(lambda batch: pipeline.forward(model.preprocess(batch)), texts), change

    has_export, native_bf16 = onnx_file(directory, DEFAULT_PRECISION).is_file(), runs_bf16_natively() is not False
    candidates = eligible(metadata, has_export, native_bf16)
    left_out = {f"{runtime} {precision}": NO_NATIVE_BF16
                for runtime, precision in eligible(metadata, has_export) if (runtime, precision) not in candidates}
    choice = chosen_by_measuring(candidates, measure, left_out)
    write_remembered(key, choice)
    return choice


class ScoringAbandoned(CareLensError):
    """The caller gave up on a scoring call (a request that timed out), which stopped between two encoder batches."""


GAVE_UP = "scoring stopped: the caller gave up waiting for it"
#: Set while scoring runs for a caller that may give up (`abandonable`); the batch loop checks it.
_GIVEN_UP: ContextVar[Optional[threading.Event]] = ContextVar("carelens_scoring_given_up", default=None)


@contextmanager
def abandonable(given_up: threading.Event) -> Iterator[None]:
    """Scoring in this context stops with ScoringAbandoned at the next encoder batch once `given_up` is set: a thread
    cannot be stopped from outside, so a request that timed out would otherwise hold the encoder for as long as its
    text takes (minutes for a 900 KB turn) while every other request waits."""
    token = _GIVEN_UP.set(given_up)
    try:
        yield
    finally:
        _GIVEN_UP.reset(token)


def check_not_abandoned() -> None:
    """ScoringAbandoned when the caller of the scoring running in this context has given up on it."""
    if _gave_up(_GIVEN_UP.get()):
        raise ScoringAbandoned(GAVE_UP)


def _gave_up(event: Optional[threading.Event]) -> bool:
    """Whether a caller that may give up (`event` set by `abandonable`'s caller) has; never for one that may not."""
    return event is not None and event.is_set()


def cache_key(text: str, context: Optional[str]) -> bytes:
    """A 16-byte digest of an input (text, and the customer turn it answers): the cache's memory stays the same
    however long the turns it remembers."""
    return hashlib.blake2b(repr((text, context)).encode("utf-8", "backslashreplace"), digest_size=16).digest()


class EncodingCache:
    """Pooled encodings of recently seen inputs, keyed by `cache_key` of (text, context): contact centres say the
    same greetings, closings and stock replies all day, so a batch job encodes each of them once. Least recently used
    entries go first once `max_entries` are held. Only for a model whose weights no longer change."""

    def __init__(self, max_entries: int = SCORING_CACHE_ENTRIES):
        self.max_entries = max_entries
        self.entries: OrderedDict = OrderedDict()
        self.lock = threading.Lock()  # the service's requests read and write it from several threads

    def get(self, key: bytes) -> Optional[tuple[np.ndarray, int]]:
        """(pooled vector, encoder windows) of an input seen before, or None."""
        with self.lock:
            found = self.entries.get(key)
            if found is not None:
                self.entries.move_to_end(key)
            return found

    def put(self, key: bytes, vector: np.ndarray, windows: int) -> None:
        with self.lock:
            self.entries[key] = (vector, windows)
            if len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)


class _AllGaveUp:
    """Given up when every caller whose work runs together has given up (`abandonable` reads `is_set`)."""

    def __init__(self, events: list[Optional[threading.Event]]):
        self.events = events

    def is_set(self) -> bool:
        return all(_gave_up(event) for event in self.events)


@dataclass
class _Job:
    items: list
    given_up: Optional[threading.Event]
    result: Optional[Sequence] = None
    error: Optional[BaseException] = None
    done: bool = False


class MicroBatcher:
    """Runs the work of callers that come at the same time as one: each call queues its items, and whichever caller
    gets the turn next runs every queued item in one `run` and hands each caller its rows, so concurrent requests
    fill the encoder's batches (or share the tabular models' calls) together instead of taking turns with small ones.
    A caller that gave up while it waited for the turn is answered ScoringAbandoned without its items being run;
    work stops early (`abandonable`) only when every caller in it has given up."""

    def __init__(self):
        self.queue_lock, self.turn = threading.Lock(), threading.Lock()
        self.queued: list[_Job] = []

    def __call__(self, items: list, run: Callable[[list], Sequence]) -> Sequence:
        """`run(items)` for these items, possibly with other callers' (rows in item order)."""
        job = _Job(items, _GIVEN_UP.get())
        with self.queue_lock:
            self.queued.append(job)
        with self.turn:
            if not job.done:
                with self.queue_lock:
                    jobs, self.queued = self.queued, []
                self._run_together(jobs, run)
        if job.error is not None:
            raise job.error
        return job.result

    @staticmethod
    def _run_together(jobs: list[_Job], run: Callable[[list], Sequence]) -> None:
        for j in jobs:
            if _gave_up(j.given_up):
                j.error = ScoringAbandoned(GAVE_UP)
        live = [j for j in jobs if j.error is None]
        try:
            with abandonable(_AllGaveUp([j.given_up for j in live])):
                rows = run([item for j in live for item in j.items]) if live else []
            start = 0
            for j in live:
                j.result, start = rows[start:start + len(j.items)], start + len(j.items)
        except BaseException as error:  # every caller in the batch hears of it, then the turn passes on
            for j in live:
                j.error = error
        for j in jobs:
            j.done = True


def token_budget_batches(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Window indices, longest first, cut into batches whose padded size (rows × longest window) stays within
    `budget` tokens: many short turns go together, long windows in small batches, and little is padding."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        rows = max(1, budget // max(int(lengths[order[start]]), 1))  # the first window of a batch is its longest
        batches.append(order[start:start + rows])
        start += rows
    return batches


class TranscriptPipeline:
    """Scores text with a transcript model: the model's `preprocess` windows every text (the fast tokenizer called
    once per call on all new texts), windows go through `runtime` in length-sorted batches of at most
    `token_budget` padded tokens, and the model's `postprocess_*` turns pooled encodings into calibrated
    probabilities — the same postprocess training evaluates. Identical inputs are encoded once per call, and across
    calls when `cache_entries` > 0. A window longer than the budget goes in a batch of its own."""

    def __init__(self, model: TranscriptModel, runtime: Optional[Runtime] = None,
                 token_budget: int = DEFAULT_TOKEN_BUDGET, cache_entries: int = 0,
                 drivers: Optional[DriverModel] = None):
        self.model, self.token_budget, self.drivers = model, token_budget, drivers
        self.runtime = runtime or TorchRuntime(model.encoder)
        self.encodings = EncodingCache(cache_entries) if cache_entries else None
        self.shared = MicroBatcher()

    @property
    def description(self) -> str:
        """The runtime and precision, e.g. 'onnx int8'."""
        return f"{self.runtime.name} {self.runtime.precision}"

    def forward(self, windows: dict, show_progress_bar: bool = False, desc: str = "encoding") -> np.ndarray:
        """One pooled encoding per text of `model.preprocess` output, in input order. Windows of calls made at the
        same time from other threads (the service's concurrent requests) are encoded in the same batches."""
        types = windows["token_type_ids"]
        items = list(zip(windows["input_ids"], types if types is not None else itertools.repeat(None)))
        pooled = self.shared(items, lambda merged: self.pooled_windows(merged, show_progress_bar, desc))
        lengths = np.fromiter(map(len, windows["input_ids"]), dtype=int, count=len(windows["input_ids"]))
        return pooled_by_owner(pooled, windows["owner"], lengths, windows["count"])

    def pooled_windows(self, items: list[tuple[list[int], Optional[list[int]]]], show_progress_bar: bool = False,
                       desc: str = "encoding") -> np.ndarray:
        """One pooled encoding per (token ids, token types) window, through the runtime in length-sorted batches of
        at most `token_budget` padded tokens."""
        lengths = np.fromiter((len(ids) for ids, _ in items), dtype=int, count=len(items))
        pooled = np.zeros((len(items), self.model.hidden_size), dtype=np.float32)
        typed = bool(items) and items[0][1] is not None
        for rows in tqdm(token_budget_batches(lengths, self.token_budget), desc=desc, disable=not show_progress_bar,
                         unit="batch"):
            check_not_abandoned()
            batch = self.model.padded([items[i][0] for i in rows], [items[i][1] for i in rows] if typed else None)
            pooled[rows] = self.runtime.pooled(batch)
        return pooled

    def encode_with_windows(self, texts: Sequence[str], contexts: Optional[Sequence[str]] = None,
                            show_progress_bar: bool = False, desc: str = "encoding") -> tuple[np.ndarray, np.ndarray]:
        """(one pooled vector per text — per (context, text) pair when the model reads pairs —, how many encoder
        windows each text took)."""
        if len(texts) == 0:
            return np.zeros((0, self.model.hidden_size), dtype=np.float32), np.zeros(0, dtype=int)
        paired = self.model.pairs and contexts is not None
        inputs = list(zip(texts, contexts if paired else itertools.repeat(None)))
        unique = list(dict.fromkeys(inputs))
        position = {item: i for i, item in enumerate(unique)}
        back = np.fromiter((position[item] for item in inputs), dtype=int, count=len(inputs))
        keys = {item: cache_key(*item) for item in unique} if self.encodings is not None else {}
        known = {item: self.encodings.get(key) for item, key in keys.items()}
        missing = [item for item in unique if known.get(item) is None]
        if missing:
            windows = self.model.preprocess([t for t, _ in missing], [c for _, c in missing] if paired else None)
            pooled = self.forward(windows, show_progress_bar, desc)
            for item, vector, count in zip(missing, pooled, np.bincount(windows["owner"], minlength=windows["count"])):
                known[item] = (vector, int(count))
                if self.encodings is not None:
                    self.encodings.put(keys[item], vector.copy(), int(count))
        vectors = np.stack([known[item][0] for item in unique])
        counts = np.array([known[item][1] for item in unique], dtype=int)
        return vectors[back], counts[back]

    def encode(self, texts: Sequence[str], contexts: Optional[Sequence[str]] = None, **options) -> np.ndarray:
        """One pooled vector per text (per (context, text) pair when contexts are given); long texts are windowed."""
        return self.encode_with_windows(texts, contexts, **options)[0]

    def predict_sentiment(self, texts: Sequence[str], **options) -> np.ndarray:
        """Calibrated sentiment probabilities [n, 3] (columns: negative, neutral, positive)."""
        logits = self.model.head_logits(self.encode(texts, desc="sentiment", **options))[0]
        return self.model.postprocess_sentiment(logits, texts)

    def predict_empathy(self, responses: Sequence[str], contexts: Sequence[str], **options) -> np.ndarray:
        """Calibrated empathy probabilities [n, 3 mechanisms, 3 levels] for agent replies to customer turns."""
        logits = self.model.head_logits(self.encode(responses, contexts, desc="empathy", **options))[1]
        return self.model.postprocess_empathy(logits, responses)


def load_scoring_pipeline(registry: Union[Registry, PathLike, None] = None, version: str = "latest",
                          options: ScoringOptions = ScoringOptions()) -> tuple[TranscriptPipeline, dict]:
    """The published transcript model as a scoring pipeline, and its metadata, with `runtime_choice` (what ran and,
    when `auto` chose, why) and a `runtime_warning` when a default runtime fell back (see `ScoringOptions.resolved`):
    checksums and library versions verified by the registry first, and this process's threads set as `options` say.
    The registry's call drivers come with it when they were fitted on this transcript model's embeddings."""
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    version = registry.resolve(MODEL_NAME, version)  # once: `latest` may move while we load
    directory = registry.directory(MODEL_NAME, version)
    onnx_may_run = options.automatic or options.chosen[0] == "onnx"
    artifact = registry.open(MODEL_NAME, version, requires=("torch", "transformers", *(
        ("onnxruntime",) if onnx_may_run and onnx_file(directory, DEFAULT_PRECISION).is_file() else ())))
    model = TranscriptModel.from_pretrained(artifact.path)
    threads = configure_threads(options.threads)
    resolved = options.resolved(artifact.path, model, artifact.metadata)
    runtime = runtime_for(model, artifact.path, resolved.runtime, resolved.precision, options.device, threads)
    ran = resolved.choice.record() if resolved.choice else {"runtime": resolved.runtime,
                                                            "precision": resolved.precision,
                                                            "why": "as the scoring options say"}
    metadata = {**artifact.metadata, "runtime_choice": ran,
                **({"runtime_warning": resolved.warning} if resolved.warning else {})}
    return TranscriptPipeline(model, runtime, options.token_budget, options.cache_entries,
                              drivers_for(registry, version)), metadata


# -- conversations ----------------------------------------------------------------------------------------------

def as_conversations(records: Sequence[Union[Conversation, dict]], source: str = "conversations",
                     keys: Optional[Keys] = None) -> list[Conversation]:
    """Conversations, validating dicts against the contract, their keys read from the fields `keys` names (non-UTF-8
    bytes in a text raise ContractError)."""
    return [r if isinstance(r, Conversation) else conversation_from_record(r, source, i + 1, keys=keys)
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
    """The ids, agent and POSITION of every conversation, including those with no turns."""
    return pd.DataFrame([{"conversation_id": c.conversation_id, "customer_id": c.customer_id,
                          "contact_id": c.contact_id, AGENT: c.agent_id, POSITION: position}
                         for position, c in enumerate(conversations)], columns=[*KEYS, AGENT, POSITION])


def score_turns(pipeline: TranscriptPipeline, conversations: Sequence[Union[Conversation, dict]],
                show_progress_bar: bool = False) -> pd.DataFrame:
    """Turn-level scores. Customer turns get p_negative/p_neutral/p_positive and `sentiment` = P(pos) − P(neg);
    agent turns get each mechanism's expected level (0–2) and whether it is present (its decided level weak or
    strong), `empathy` in [0, 1] and `empathic` (some mechanism present). Blank turns are kept but not scored (NaN);
    `windows` counts encoder windows per turn; each row keeps the turn's `text`, to read its scores beside. With the
    pipeline's `drivers`, each conversation's first customer turn that says something gets its call `driver`."""
    model = pipeline.model
    turns = turn_table(as_conversations(conversations))
    blank = turns["text"].str.strip() == ""
    customer = (turns["speaker"] == "customer") & ~blank
    agent = (turns["speaker"] == "agent") & ~blank
    scores = pd.DataFrame(np.nan, index=turns.index,
                          columns=[*PROBABILITY_COLUMNS, "sentiment", *EMPATHY_LEVEL_COLUMNS, "empathy"])
    flags = pd.DataFrame(pd.NA, index=turns.index, columns=[*EMPATHY_PRESENT_COLUMNS, "empathic"], dtype="boolean")
    scores = scores.join(flags)
    scores["windows"] = 0
    texts = turns.loc[customer, "text"].tolist()
    pooled, scores.loc[customer, "windows"] = pipeline.encode_with_windows(texts, show_progress_bar=show_progress_bar,
                                                                           desc="customer turns")
    sentiment = model.postprocess_sentiment(model.head_logits(pooled)[0], texts)
    scores.loc[customer, PROBABILITY_COLUMNS] = sentiment
    scores[DRIVER] = None
    if pipeline.drivers is not None:
        # The opening turn's encoding is already here for its sentiment: assigning its driver encodes nothing again.
        opening = ~turns.loc[customer, POSITION].duplicated().to_numpy()
        scores.loc[turns.index[customer][opening], DRIVER] = pipeline.drivers.named(pooled[opening])
    scores.loc[customer, "sentiment"] = sentiment[:, 2] - sentiment[:, 0]
    responses = turns.loc[agent, "text"].tolist()
    pooled, scores.loc[agent, "windows"] = pipeline.encode_with_windows(
        responses, turns.loc[agent, "context"].tolist(), show_progress_bar=show_progress_bar, desc="agent turns")
    empathy = model.postprocess_empathy(model.head_logits(pooled)[1], responses)
    scores.loc[agent, EMPATHY_LEVEL_COLUMNS] = empathy_levels(empathy)
    scores.loc[agent, "empathy"] = empathy_score(empathy)
    present = model.decided_levels(empathy) > 0
    scores.loc[agent, EMPATHY_PRESENT_COLUMNS] = present
    scores.loc[agent, "empathic"] = present.any(axis=1)
    return pd.concat([turns.drop(columns=["context"]), scores], axis=1)


def empathy_levels(probabilities: np.ndarray) -> np.ndarray:
    """Expected level (0 none … 2 strong) per row and mechanism."""
    return probabilities @ np.arange(len(LEVEL_NAMES), dtype=float)


def empathy_score(probabilities: np.ndarray) -> np.ndarray:
    """The combined empathy score in [0, 1]: the mean over mechanisms of expected level / 2."""
    return empathy_levels(probabilities).mean(axis=1) / (len(LEVEL_NAMES) - 1)


def transcript_features(pipeline: TranscriptPipeline, conversations: Sequence[Union[Conversation, dict]],
                        show_progress_bar: bool = False) -> pd.DataFrame:
    """One row per conversation (all of them, in input order): ids and the conversation features the churn and
    retaliation models take (see `carelens.models.conversation_features.FEATURE_COLUMNS`)."""
    conversations = as_conversations(conversations)
    return conversation_features(score_turns(pipeline, conversations, show_progress_bar),
                                 conversation_index(conversations))
