"""The artifact registry: versioned model directories with metadata, SHA-256 checksums and a `latest` pointer."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Callable, Iterable, Iterator, Union

import pandas as pd

from carelens.data.errors import CareLensError
from carelens.data.paths import LOCK, file_sha256, held_lock

FORMAT_VERSION = 1
CHECKSUMS = "SHA256SUMS"
METADATA = "metadata.json"
LATEST = "latest"
TRACKED_LIBRARIES = ("carelens", "scikit-learn", "skops", "numpy", "pandas", "torch", "transformers", "safetensors",
                     "onnx", "onnxruntime")
#: A model name is one path component: letters, digits, '.', '_' or '-', starting with a letter or digit.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: A version name: 'v' and ASCII digits (v1, v2, ...), never a path.
VERSION_PATTERN = re.compile(r"v[0-9]{1,9}")
#: A SHA256SUMS line as `sha256sum` writes it: 64 hex digits, a space, ' ' (text) or '*' (binary), the file name.
CHECKSUM_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")
#: The most bytes of a `latest` pointer read: it holds one version name.
POINTER_BYTES = 64


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


def _files_under(directory: Path) -> list[Path]:
    """Every file below `directory` except its own SHA256SUMS, without following links; RegistryError for a symbolic
    link or anything but a plain file or directory (a FIFO would block the reader, a link would read outside)."""
    def unreadable(error: OSError) -> None:
        raise error  # os.walk would otherwise skip a folder it cannot list, and its files would go unchecked

    found = []
    for parent, folders, files in os.walk(directory, onerror=unreadable, followlinks=False):
        for entry in sorted(folders + files):
            path = Path(parent) / entry
            relative = path.relative_to(directory).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise RegistryError(f"{directory}: '{relative}' is a symbolic link; a published artifact holds plain "
                                    f"files only — refusing to read through it")
            if stat.S_ISREG(mode):
                if relative != CHECKSUMS:
                    found.append(path)
            elif not stat.S_ISDIR(mode):
                raise RegistryError(f"{directory}: '{relative}' is not a plain file (a FIFO, socket or device); a "
                                    f"published artifact holds plain files only — refusing to read it")
    return sorted(found)


def write_checksums(directory: Path) -> None:
    """A `sha256sum -c`-compatible SHA256SUMS file covering every file in the directory."""
    lines = [f"{file_sha256(p)}  {p.relative_to(directory).as_posix()}" for p in _files_under(directory)]
    (directory / CHECKSUMS).write_text("\n".join(lines) + "\n")


def read_checksums(directory: Path) -> dict[str, str]:
    """{file: sha256} from a version's SHA256SUMS; RegistryError naming the file and line when it is absent,
    unreadable, malformed or lists a file twice."""
    listing = directory / CHECKSUMS
    if listing.is_symlink() or not listing.is_file():
        kind = "file" if not listing.is_symlink() else "file (a symbolic link stands in its place)"
        raise RegistryError(f"{directory}: no {CHECKSUMS} {kind}; refusing to load an unverifiable artifact")
    try:
        text = listing.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{listing}: cannot be read as text ({exc}); expected '<sha256>  <file>' lines — "
                            f"refusing to load an unverifiable artifact") from exc
    expected: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = CHECKSUM_LINE.fullmatch(line)
        if match is None:
            raise RegistryError(f"{listing}: line {number} is {line[:80]!r}; expected '<64 hex digits>  <file>' — "
                                f"refusing to load an unverifiable artifact")
        digest, name = match.groups()
        if name in expected:
            raise RegistryError(f"{listing}: line {number} lists '{name}' a second time; refusing to load an "
                                f"unverifiable artifact")
        expected[name] = digest
    return expected


def verify_checksums(directory: Path) -> None:
    """Raise RegistryError unless every file matches SHA256SUMS and no file was added or removed (nor is a link or
    anything but a plain file)."""
    expected = read_checksums(directory)
    try:
        present = {p.relative_to(directory).as_posix() for p in _files_under(directory)}
    except OSError as exc:
        raise RegistryError(f"{directory}: cannot list the artifact's files ({exc}); refusing to load it") from exc
    for name in sorted(set(expected) | present):
        if name not in present:
            raise RegistryError(f"{directory}: file '{name}' listed in {CHECKSUMS} is missing")
        if name not in expected:
            raise RegistryError(f"{directory}: file '{name}' is not listed in {CHECKSUMS}; it was added after publishing")
        try:
            actual = file_sha256(directory / name)
        except OSError as exc:
            raise RegistryError(f"{directory}: cannot read '{name}' ({exc}); refusing to load the artifact") from exc
        if actual != expected[name]:
            raise RegistryError(f"{directory}: checksum mismatch for '{name}' (expected sha256 {expected[name][:12]}…, "
                                f"got {actual[:12]}…); the artifact was altered after publishing — refusing to load it")


def read_metadata(path: Path) -> dict:
    """A version's metadata.json as a dict; RegistryError naming the file when it is missing, not JSON, or not an
    object."""
    file = path / METADATA
    try:
        metadata = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RegistryError(f"{file}: missing; every published version has one — refusing to load it") from exc
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RegistryError(f"{file}: not valid JSON ({type(exc).__name__}: {exc}); expected the JSON object CareLens "
                            f"writes when it publishes a version — refusing to load it") from exc
    if not isinstance(metadata, dict):
        raise RegistryError(f"{file}: holds a JSON {type(metadata).__name__}; expected the JSON object CareLens "
                            f"writes when it publishes a version — refusing to load it")
    return metadata


def check_model_name(name: object) -> str:
    """`name` when it is a model name (one path component such as churn); RegistryError otherwise, before any file is
    touched."""
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.fullmatch(name):
        raise RegistryError(f"model name {name!r} is not allowed; expected letters, digits, '.', '_' or '-' starting "
                            f"with a letter or digit (such as churn), not a path")
    return name


def check_version_name(version: object, latest: bool = True) -> str:
    """`version` when it is a version name (v3) or, with `latest`, 'latest'; RegistryError otherwise, before any file
    is touched."""
    if isinstance(version, str) and (VERSION_PATTERN.fullmatch(version) or (latest and version == LATEST)):
        return version
    raise RegistryError(f"version {version!r} is not allowed; expected {'latest or ' if latest else ''}a version "
                        f"name like v3, not a path")


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


@contextmanager
def model_lock(model_dir: Path) -> Iterator[None]:
    """Hold the model's writer lock (readers never take it): two publishes must not pick the same version, nor two
    promotes interleave."""
    with held_lock(model_dir / LOCK):
        yield


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
        directory = self.root / check_model_name(name)
        found = ([p.name for p in directory.glob("v*") if p.is_dir() and VERSION_PATTERN.fullmatch(p.name)]
                 if directory.is_dir() else [])
        return sorted(found, key=lambda v: int(v[1:]))

    def models(self) -> list[str]:
        """Names of the models that have at least one version."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and MODEL_NAME_PATTERN.fullmatch(p.name) and self.versions(p.name))

    def _next_version(self, name: str) -> str:
        existing = self.versions(name)
        return f"v{int(existing[-1][1:]) + 1 if existing else 1}"

    def publish(self, name: str, write: Callable[[Path], None], metadata: dict, promote: bool = True) -> Artifact:
        """Write a new version: `write(directory)` stores the artifact files, then metadata and checksums are added.

        The directory is built under a temporary name and renamed into place, so a crash never leaves a
        half-written version that looks complete.
        """
        model_dir = self.root / check_model_name(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = staging_directory(model_dir)
        try:
            write(staging)
            # Choosing the version, naming it in the metadata and renaming into place is one step for the writers of
            # this model: two publishes at once would otherwise pick the same version and one would be lost.
            with model_lock(model_dir):
                version = self._next_version(name)
                # Name, version and format are the registry's to record: metadata passed in cannot override them.
                full = {"name": name, "version": version, "carelens_format": FORMAT_VERSION,
                        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        "libraries": library_versions(), **metadata}
                full.update(name=name, version=version, carelens_format=FORMAT_VERSION)
                (staging / METADATA).write_text(json.dumps(full, indent=2, default=str))
                write_checksums(staging)
                staging.rename(model_dir / version)
                if promote:
                    self._point_latest(model_dir, version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return Artifact(name, version, model_dir / version, full)

    def promote(self, name: str, version: str) -> None:
        """Point `latest` at a version (atomically: a reader sees the old version or the new one, never neither)."""
        check_version_name(version, latest=False)
        if version not in self.versions(name):
            raise RegistryError(f"{self.root / name}: no version '{version}' to promote (have {', '.join(self.versions(name)) or 'none'})")
        model_dir = self.root / name
        with model_lock(model_dir):
            self._point_latest(model_dir, version)

    @staticmethod
    def _point_latest(model_dir: Path, version: str) -> None:
        """Write `latest` under a name no other writer uses, then rename it over the pointer."""
        temporary = model_dir / f".{LATEST}.tmp-{secrets.token_hex(8)}"
        try:
            temporary.write_text(version + "\n")
            temporary.replace(model_dir / LATEST)
        finally:
            temporary.unlink(missing_ok=True)

    def resolve(self, name: str, version: str = "latest") -> str:
        """The concrete version name that `version` (a name or 'latest') refers to. Names are checked before any file
        is touched; a `latest` pointer must hold the name of a version that exists."""
        check_model_name(name)
        check_version_name(version)
        # Before any model is looked for: a pinned version or a promoted one is missing because the registry is.
        if not self.root.is_dir():
            raise RegistryError(self._missing_root())
        if version != LATEST:
            if version not in self.versions(name):
                raise RegistryError(f"{self.root / name}: no version '{version}' (have {', '.join(self.versions(name)) or 'none'})")
            return version
        pointer = self.root / name / LATEST
        if not pointer.is_file() and not pointer.is_symlink():
            raise RegistryError(f"{self.root}: no promoted version of model '{name}'; train one with "
                                f"`carelens train {name} --out {self.root}`")
        if pointer.is_symlink() or not pointer.is_file():
            raise RegistryError(f"{pointer}: is a symbolic link or not a plain file; {self._pointer_expected(name)}")
        try:
            with open(pointer, "rb") as handle:
                raw = handle.read(POINTER_BYTES + 1)
            text = raw.decode("ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{pointer}: cannot be read as a version name ({exc}); "
                                f"{self._pointer_expected(name)}") from exc
        # Listed after the pointer is read: a version published and promoted meanwhile is then listed too.
        if len(raw) > POINTER_BYTES or not VERSION_PATTERN.fullmatch(text) or text not in self.versions(name):
            shown = raw[:POINTER_BYTES].decode("ascii", "backslashreplace").strip()
            raise RegistryError(f"{pointer}: holds {shown!r}{'…' if len(raw) > POINTER_BYTES else ''}; "
                                f"{self._pointer_expected(name)}")
        return text

    def _missing_root(self) -> str:
        """Why a registry that is not a folder has no model, and where to point instead."""
        what = "is a file, not a folder" if self.root.exists() else "does not exist"
        return (f"no registry at {self.root.resolve()}: it {what}. Pass --registry (or set $CARELENS_REGISTRY) to the "
                f"folder your models were published to, or make one with `carelens demo` or `carelens train`")

    def _pointer_expected(self, name: str) -> str:
        """What a `latest` pointer should hold, with the versions there are."""
        have = self.versions(name)
        return (f"expected a version name like v3 that exists under {self.root / name} "
                f"(have {', '.join(have) or 'none'}); promote one with Registry.promote")

    def directory(self, name: str, version: str = "latest") -> Path:
        """Where a version lives (resolved, inside the registry), without verifying its files: for looking, not
        loading (`open` verifies)."""
        return self._version_directory(name, self.resolve(name, version))

    def content_sha256(self, name: str, version: str = "latest") -> str:
        """A digest of a version's content (its SHA256SUMS, which covers every file): two versions with the same digest
        hold the same files, whatever they are called and wherever they are published."""
        listed = read_checksums(self.directory(name, version))
        return hashlib.sha256(json.dumps(sorted(listed.items())).encode()).hexdigest()

    def _version_directory(self, name: str, version: str) -> Path:
        """The directory of a resolved version: a real directory below the registry root, not a link out of it."""
        model_dir = self.root / name
        path = model_dir / version
        for candidate in (model_dir, path):
            if candidate.is_symlink():
                raise RegistryError(f"{candidate}: is a symbolic link; published models and versions are real "
                                    f"directories under {self.root} — refusing to load through it")
        try:
            root, real = self.root.resolve(strict=True), path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise RegistryError(f"{path}: cannot be resolved ({exc}); refusing to load it") from exc
        if not real.is_relative_to(root) or not real.is_dir():
            raise RegistryError(f"{path}: resolves to {real}, which is not a directory under the registry {root} — "
                                f"refusing to load it")
        return path

    def open(self, name: str, version: str = "latest", requires: Iterable[str] = ()) -> Artifact:
        """A verified artifact: checksums match, the format is known, the metadata names this model and version, and
        the `requires` libraries match in major.minor. RegistryError naming the file otherwise."""
        resolved = self.resolve(name, version)
        path = self._version_directory(name, resolved)
        verify_checksums(path)
        metadata = read_metadata(path)
        recorded = metadata.get("carelens_format")
        if "carelens_format" not in metadata:
            raise RegistryError(f"{path / METADATA}: has no 'carelens_format'; expected format {FORMAT_VERSION}, "
                                f"as CareLens records when it publishes a version — refusing to load it")
        if type(recorded) is not int or recorded != FORMAT_VERSION:
            raise RegistryError(f"{path / METADATA}: artifact format (carelens_format) {recorded!r} is not supported; "
                                f"this CareLens reads format {FORMAT_VERSION}, so another CareLens version wrote it — "
                                f"retrain the model, or load it with the CareLens that wrote it")
        if metadata.get("name") != name or metadata.get("version") != resolved:
            raise RegistryError(f"{path / METADATA}: records model {metadata.get('name')!r} version "
                                f"{metadata.get('version')!r}, but it is stored as {name}/{resolved}; it was copied or "
                                f"moved after publishing — refusing to load it")
        libraries = metadata.get("libraries", {})
        if not isinstance(libraries, dict) or not all(isinstance(v, str) for v in libraries.values()):
            raise RegistryError(f"{path / METADATA}: 'libraries' is {libraries!r}; expected an object of library "
                                f"name → version string — refusing to load it")
        check_compatible(path, libraries, library_versions(), requires)
        return Artifact(name, resolved, path, metadata)


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def check_compatible(path: Path, recorded: dict, installed: dict, requires: Iterable[str]) -> None:
    """Raise RegistryError when a library the artifact needs differs in major.minor from the one installed."""
    for library in requires:
        if library in recorded and library in installed and _major_minor(recorded[library]) != _major_minor(installed[library]):
            raise RegistryError(f"{path}: trained with {library} {recorded[library]}, this environment has "
                                f"{installed[library]}; install {library}=={recorded[library]} or retrain the model")

