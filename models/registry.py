"""The artifact registry: versioned model directories with metadata, SHA-256 checksums and a `latest` pointer."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import shutil
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Callable, Iterable, Union

import pandas as pd

from carelens.data.errors import CareLensError

FORMAT_VERSION = 1
CHECKSUMS = "SHA256SUMS"
METADATA = "metadata.json"
LATEST = "latest"
TRACKED_LIBRARIES = ("carelens", "scikit-learn", "skops", "numpy", "pandas", "torch", "transformers", "safetensors")


class RegistryError(CareLensError, RuntimeError):
    """A registry artifact that is missing, tampered with or incompatible with this environment."""


def default_root() -> Path:
    """The registry directory: $CARELENS_REGISTRY, else ./registry."""
    return Path(os.environ.get("CARELENS_REGISTRY", "registry"))


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries an artifact's behaviour depends on."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 over a table's column names and row hashes: the same data gives the same fingerprint."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def write_checksums(directory: Path) -> None:
    """A `sha256sum -c`-compatible SHA256SUMS file covering every file in the directory."""
    lines = [f"{file_sha256(p)}  {p.relative_to(directory).as_posix()}" for p in _files_under(directory)]
    (directory / CHECKSUMS).write_text("\n".join(lines) + "\n")


def verify_checksums(directory: Path) -> None:
    """Raise RegistryError unless every file matches SHA256SUMS and no file was added or removed."""
    listing = directory / CHECKSUMS
    if not listing.is_file():
        raise RegistryError(f"{directory}: no {CHECKSUMS} file; refusing to load an unverifiable artifact")
    expected = dict(reversed(line.split("  ", 1)) for line in listing.read_text().splitlines() if line.strip())
    present = {p.relative_to(directory).as_posix() for p in _files_under(directory)}
    for name in sorted(set(expected) | present):
        if name not in present:
            raise RegistryError(f"{directory}: file '{name}' listed in {CHECKSUMS} is missing")
        if name not in expected:
            raise RegistryError(f"{directory}: file '{name}' is not listed in {CHECKSUMS}; it was added after publishing")
        actual = file_sha256(directory / name)
        if actual != expected[name]:
            raise RegistryError(f"{directory}: checksum mismatch for '{name}' (expected sha256 {expected[name][:12]}…, "
                                f"got {actual[:12]}…); the artifact was altered after publishing — refusing to load it")


def staging_directory(parent: Path) -> Path:
    """A new, uniquely named directory under `parent` with the mode a plain mkdir gives (0755 under umask 022).

    Not tempfile.mkdtemp: its 0700 survives the rename into place and hides the published version from the
    service account that loads it.
    """
    while True:
        candidate = parent / f".staging-{secrets.token_hex(8)}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


@dataclass(frozen=True)
class Artifact:
    """A verified model version: its directory and metadata."""

    name: str
    version: str
    path: Path
    metadata: dict


class Registry:
    """A directory `<root>/<model>/<version>/` of published artifacts; `latest` names the newest promoted one."""

    def __init__(self, root: Union[str, Path, None] = None):
        self.root = Path(root) if root is not None else default_root()

    def versions(self, name: str) -> list[str]:
        """Published versions of a model, oldest first."""
        directory = self.root / name
        found = [p.name for p in directory.glob("v*") if p.is_dir() and p.name[1:].isdigit()] if directory.is_dir() else []
        return sorted(found, key=lambda v: int(v[1:]))

    def models(self) -> list[str]:
        """Names of the models that have at least one version."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name)) if self.root.is_dir() else []

    def _next_version(self, name: str) -> str:
        existing = self.versions(name)
        return f"v{int(existing[-1][1:]) + 1 if existing else 1}"

    def publish(self, name: str, write: Callable[[Path], None], metadata: dict, promote: bool = True) -> Artifact:
        """Write a new version: `write(directory)` stores the artifact files, then metadata and checksums are added.

        The directory is built under a temporary name and renamed into place, so a crash never leaves a
        half-written version that looks complete.
        """
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = staging_directory(model_dir)
        try:
            write(staging)
            version = self._next_version(name)
            full = {"name": name, "version": version, "carelens_format": FORMAT_VERSION,
                    "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "libraries": library_versions(), **metadata}
            (staging / METADATA).write_text(json.dumps(full, indent=2, default=str))
            write_checksums(staging)
            staging.rename(model_dir / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if promote:
            self.promote(name, version)
        return Artifact(name, version, model_dir / version, full)

    def promote(self, name: str, version: str) -> None:
        """Point `latest` at a version (atomically)."""
        if version not in self.versions(name):
            raise RegistryError(f"{self.root / name}: no version '{version}' to promote (have {', '.join(self.versions(name)) or 'none'})")
        pointer = self.root / name / LATEST
        temporary = pointer.with_name(f".{LATEST}.tmp")
        temporary.write_text(version + "\n")
        temporary.replace(pointer)

    def resolve(self, name: str, version: str = "latest") -> str:
        """The concrete version name that `version` (a name or 'latest') refers to."""
        if version != LATEST:
            if version not in self.versions(name):
                raise RegistryError(f"{self.root / name}: no version '{version}' (have {', '.join(self.versions(name)) or 'none'})")
            return version
        pointer = self.root / name / LATEST
        if not pointer.is_file():
            raise RegistryError(f"{self.root}: no promoted version of model '{name}'; train one with "
                                f"`carelens train {name} --out {self.root}`")
        return pointer.read_text().strip()

    def open(self, name: str, version: str = "latest", requires: Iterable[str] = ()) -> Artifact:
        """A verified artifact: checksums match, the format is known, and the `requires` libraries match in major.minor."""
        resolved = self.resolve(name, version)
        path = self.root / name / resolved
        verify_checksums(path)
        metadata = json.loads((path / METADATA).read_text())
        if metadata.get("carelens_format") != FORMAT_VERSION:
            raise RegistryError(f"{path}: artifact format {metadata.get('carelens_format')!r} is not supported "
                                f"(this CareLens reads format {FORMAT_VERSION}); retrain the model")
        check_compatible(path, metadata.get("libraries", {}), library_versions(), requires)
        return Artifact(name, resolved, path, metadata)


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def check_compatible(path: Path, recorded: dict, installed: dict, requires: Iterable[str]) -> None:
    """Raise RegistryError when a library the artifact needs differs in major.minor from the one installed."""
    for library in requires:
        if library in recorded and library in installed and _major_minor(recorded[library]) != _major_minor(installed[library]):
            raise RegistryError(f"{path}: trained with {library} {recorded[library]}, this environment has "
                                f"{installed[library]}; install {library}=={recorded[library]} or retrain the model")

