"""What a call-driver model is: the centres of the customers' opening turns on the encoder's embeddings, each driver named by its most distinctive terms, and how a conversation is assigned to one."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from safetensors.numpy import load_file, save_file

from carelens.models.registry import Registry

PathLike = Union[str, Path]
#: The registry name of the call-driver model.
DRIVERS_NAME = "drivers"
CENTRES_FILE, DRIVERS_FILE = "centres.safetensors", "drivers.json"


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero): cosine similarity becomes a dot product."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1)


@dataclass
class DriverModel:
    """Call drivers fitted on history: a unit-length centre per driver on the embeddings of the transcript model
    `transcript_model`, its name and terms, and the share of the training conversations it held."""

    centres: np.ndarray
    names: list[str]
    terms: list[list[str]]
    training_share: list[float]
    transcript_model: str

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """The index of the nearest driver (cosine) of each embedding."""
        if len(vectors) == 0:
            return np.zeros(0, dtype=int)
        return np.argmax(unit_rows(vectors) @ self.centres.T, axis=1)

    def named(self, vectors: np.ndarray) -> list[str]:
        """The name of the nearest driver of each embedding."""
        return [self.names[i] for i in self.assign(vectors)]

    def save(self, directory: PathLike) -> None:
        """The centres as safetensors and the rest as JSON, in `directory`."""
        directory = Path(directory)
        save_file({"centres": np.ascontiguousarray(self.centres, dtype=np.float32)}, str(directory / CENTRES_FILE))
        (directory / DRIVERS_FILE).write_text(json.dumps(
            {"names": self.names, "terms": self.terms, "training_share": self.training_share,
             "transcript_model": self.transcript_model}, indent=2, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: PathLike) -> "DriverModel":
        directory = Path(directory)
        described = json.loads((directory / DRIVERS_FILE).read_text(encoding="utf-8"))
        return cls(load_file(str(directory / CENTRES_FILE))["centres"], described["names"], described["terms"],
                   described["training_share"], described["transcript_model"])


def drivers_for(registry: Registry, transcript_version: str) -> Optional[DriverModel]:
    """The promoted driver model when it was fitted on the embeddings of `transcript_version`, else None: drivers
    fitted on another transcript model's embeddings would assign by the wrong geometry."""
    if DRIVERS_NAME not in registry.models():
        return None
    artifact = registry.open(DRIVERS_NAME, "latest", requires=("safetensors",))
    return DriverModel.load(artifact.path) if artifact.metadata.get("transcript_model") == transcript_version else None
