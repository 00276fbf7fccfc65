"""One run's specification: what to read, which models, how to score and flag, where to write; fixed once, read by every stage."""
from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from typing import Mapping, Optional, Union

from carelens.data.errors import UsageError
from carelens.data.readers import Keys, checked_keys
from carelens.inference.nightly.layout import ENGINES, PathLike
from carelens.models.scoring import ScoringOptions

RAY_MISSING = "the Ray engine needs Ray: pip install 'carelens[ray]'"


@dataclass(frozen=True)
class RunSpec:
    """Everything a batch or nightly run is asked to do, built once by the CLI or the Python API: the stages read it
    and nothing passes an option on by hand. Inputs are paths, globs or directories; `version` is one version for
    every model or one per model ({"churn": "v1", ...}); `scoring` says how the transcript model runs (runtime,
    precision, threads, token budget, encodings remembered); `capacity` / `threshold` / `strict` are the flagging
    rule of the nightly job; `redact` masks personal data before scoring and in every output; `verbose` lets Ray's own
    log lines reach the terminal; `keys` maps the contract's record keys onto the fields a format keeps them in
    ({"contact_id": "convo_id"}, a dotted path for a nested field)."""

    transcripts: tuple[PathLike, ...]
    out: PathLike
    registry: Optional[PathLike] = None
    version: Union[str, Mapping[str, str]] = "latest"
    interactions: tuple[PathLike, ...] = ()
    engine: str = "local"
    chunk_size: int = 1_000
    format: str = "auto"
    redact: bool = False
    restart: bool = False
    scoring: ScoringOptions = ScoringOptions()
    capacity: Optional[int] = None
    threshold: Optional[float] = None
    strict: bool = False
    show_progress_bar: bool = True
    ray_address: Optional[str] = None
    workers: Optional[int] = None
    verbose: bool = False
    keys: Optional[Keys] = None

    def __post_init__(self) -> None:
        # Callers hand lists; the spec keeps tuples so that nothing downstream can change what the run reads.
        object.__setattr__(self, "transcripts", tuple(self.transcripts))
        object.__setattr__(self, "interactions", tuple(self.interactions))
        object.__setattr__(self, "keys", checked_keys(self.keys))
        if self.chunk_size < 1:
            raise UsageError(f"chunk_size must be at least 1, got {self.chunk_size}")
        if self.engine not in ENGINES:
            raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "ray" and find_spec("ray") is None:
            raise UsageError(RAY_MISSING)

    @property
    def flag_key(self) -> dict:
        """What the flags and summary stages depend on beyond the plan: a marker made under another rule is stale."""
        return {"capacity": self.capacity, "threshold": self.threshold, "strict": self.strict}
