"""Artifacts are refused, never run: each way of tampering with a registry gets a clear CareLens error naming the file.

Every attack below is made by someone who can write to the registry. Where the attack needs it, the attacker also
rewrites SHA256SUMS (`forge_checksums`), so the refusal has to come from the loader itself, not from the checksums.
Where the planted file would run code if it were unpickled or imported, it creates a marker file; the marker must
not exist after the refused load (and `test_the_planted_payloads_do_run_code_when_unpickled` shows that it would).
"""
import functools
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import signal
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
import torch
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression

from carelens.data.errors import CareLensError
from carelens.models.registry import Registry, RegistryError
from carelens.models.tabular import ARTIFACT, RiskModel, SchemaError, load_model, load_tabular, save_model
from carelens.models.transcript import MODEL_NAME, TranscriptModel, load_transcript_model, publish
from tiny_encoder import tiny_encoder

TRANSCRIPTS = MODEL_NAME


# -- fixtures and attacker's tools -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.normal(size=200), "channel": rng.choice(["phone", "chat"], 200)})
    y = rng.random(200) < 1 / (1 + np.exp(-2 * frame["x"]))
    return RiskModel(rounds=5, trees=10, random_state=1).fit(frame, y), frame


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, fitted):
    """A registry with churn v1, retaliation v1 (the same tiny model) and a tiny transcript model v1."""
    model, _ = fitted
    root = tmp_path_factory.mktemp("pristine") / "registry"
    registry = Registry(root)
    for name in ("churn", "retaliation"):
        registry.publish(name, lambda d: save_model(model, d), {"features": model.feature_schema()})
    encoder = tiny_encoder(tmp_path_factory.mktemp("encoder"))
    publish(TranscriptModel.from_encoder(encoder, max_length=32), root, {"note": "test"})
    return root


@pytest.fixture
def registry(pristine, tmp_path):
    """A fresh copy of the pristine registry for one test to tamper with."""
    return Registry(shutil.copytree(pristine, tmp_path / "registry", symlinks=True))


def load(registry, name, version="latest"):
    """What the toolkit does with a model name: the tabular loader or the transcript loader."""
    if name == TRANSCRIPTS:
        return load_transcript_model(registry, version)
    return load_tabular(registry, name, version)


def refused(action, *patterns):
    """The RegistryError (exactly that type, a CareLensError) that `action()` raises, its message matching each
    pattern."""
    with pytest.raises(CareLensError) as caught:
        action()
    assert type(caught.value) is RegistryError, f"{type(caught.value).__name__}: {caught.value}"
    for pattern in patterns:
        assert re.search(pattern, str(caught.value)), f"{pattern!r} not in: {caught.value}"
    return caught.value


def forge_checksums(directory: Path) -> None:
    """SHA256SUMS rewritten the way an attacker with write access would: over whatever is there now."""
    lines = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != "SHA256SUMS":
            lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(directory).as_posix()}")
    (directory / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def rewrite_metadata(directory: Path, **changes) -> None:
    metadata = json.loads((directory / "metadata.json").read_text())
    for key, value in changes.items():
        if value is ...:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    (directory / "metadata.json").write_text(json.dumps(metadata))
    forge_checksums(directory)


class Payload:
    """Unpickling this creates the marker file: `open(marker, "w")` runs as the object is rebuilt."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def payload_bytes(kind: str, marker: Path) -> bytes:
    """A file in a pickle-based format whose loading runs code (creates `marker`)."""
    buffer = io.BytesIO()
    if kind == "pickle":
        pickle.dump(Payload(marker), buffer)
    elif kind == "joblib":
        joblib.dump(Payload(marker), buffer)
    elif kind == "joblib-compressed":
        joblib.dump(Payload(marker), buffer, compress=3)
    elif kind == "torch":
        torch.save({"weight": Payload(marker)}, buffer)
    return buffer.getvalue()


UNSAFE_LOADERS = {"pickle": pickle.loads, "joblib": lambda b: joblib.load(io.BytesIO(b)),
                  "joblib-compressed": lambda b: joblib.load(io.BytesIO(b)),
                  "torch": lambda b: torch.load(io.BytesIO(b), weights_only=False)}


@pytest.mark.parametrize("kind", sorted(UNSAFE_LOADERS))
def test_the_planted_payloads_do_run_code_when_unpickled(tmp_path, kind):
    """Control: the files the attacks plant are live; loading them the unsafe way creates the marker."""
    marker = tmp_path / "marker"
    UNSAFE_LOADERS[kind](payload_bytes(kind, marker))
    assert marker.exists()


# -- code execution: pickles, joblib, torch checkpoints, custom code ----------------------------------------------

@pytest.mark.parametrize("kind", sorted(UNSAFE_LOADERS))
def test_a_pickle_in_place_of_the_skops_file_is_refused_without_running_it(registry, tmp_path, kind):
    marker = tmp_path / "marker"
    version = registry.root / "churn" / "v1"
    (version / ARTIFACT).write_bytes(payload_bytes(kind, marker))
    forge_checksums(version)
    refused(lambda: load_tabular(registry, "churn"), r"model\.skops", r"not (a|a readable) skops file",
            "refusing to load")
    assert not marker.exists()


def test_a_trusted_wrapper_around_an_untrusted_callable_is_refused(registry, tmp_path, fitted):
    model, _ = fitted
    marker = tmp_path / "marker"
    model.hook_ = functools.partial(os.system, f"touch {marker}")  # functools.partial is on the allow-list
    version = registry.root / "churn" / "v1"
    try:
        save_model(model, version)
    finally:
        del model.hook_
    forge_checksums(version)
    refused(lambda: load_tabular(registry, "churn"), r"model\.skops: holds type\(s\) outside the allow-list: .*system")
    assert not marker.exists()


def test_a_skops_file_of_another_model_type_is_refused(registry):
    version = registry.root / "churn" / "v1"
    other = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    sio.dump(other, version / ARTIFACT)
    forge_checksums(version)
    refused(lambda: load_tabular(registry, "churn"),
            r"model\.skops: holds a sklearn\.linear_model\._logistic\.LogisticRegression; expected a carelens RiskModel")


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_a_pickle_in_place_of_the_head_weights_is_refused_without_running_it(registry, tmp_path, kind):
    marker = tmp_path / "marker"
    version = registry.root / TRANSCRIPTS / "v1"
    (version / "heads.safetensors").write_bytes(payload_bytes(kind, marker))
    forge_checksums(version)
    refused(lambda: load(registry, TRANSCRIPTS), r"heads\.safetensors: not a safetensors file", "never unpickled")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["beside", "instead"])
def test_a_pickled_encoder_checkpoint_is_refused_without_running_it(registry, tmp_path, where):
    marker = tmp_path / "marker"
    version = registry.root / TRANSCRIPTS / "v1"
    (version / "pytorch_model.bin").write_bytes(payload_bytes("torch", marker))
    if where == "instead":
        (version / "model.safetensors").unlink()
    forge_checksums(version)
    expected = r"holds pytorch_model\.bin, a pickled checkpoint" if where == "beside" else r"no model\.safetensors"
    refused(lambda: load(registry, TRANSCRIPTS), expected, "refusing to load")
    assert not marker.exists()


@pytest.mark.parametrize("file, content", [("model.safetensors", "torch"), ("model.safetensors", b"garbage" * 10),
                                           ("tokenizer.json", b"{not json"), ("config.json", b'{"model_type": "no-such"}')])
def test_encoder_or_tokenizer_files_that_do_not_load_are_refused_without_running_code(registry, tmp_path, file, content):
    marker = tmp_path / "marker"
    version = registry.root / TRANSCRIPTS / "v1"
    (version / file).write_bytes(payload_bytes("torch", marker) if content == "torch" else content)
    forge_checksums(version)
    refused(lambda: load(registry, TRANSCRIPTS), r"transcripts/v1: the encoder or tokenizer could not be loaded \(\w+",
            "refusing to load")
    assert not marker.exists()


@pytest.mark.parametrize("config, module", [("config.json", "modeling_evil"), ("tokenizer_config.json", "tokenizer_evil"),
                                            ("config.json", None)])
def test_custom_code_in_the_encoder_configuration_is_refused_without_running_it(registry, tmp_path, config, module):
    marker = tmp_path / "marker"
    version = registry.root / TRANSCRIPTS / "v1"
    settings = json.loads((version / config).read_text())
    settings["auto_map"] = {"AutoModel" if config == "config.json" else "AutoTokenizer": f"{module or 'evil'}.Evil"}
    (version / config).write_text(json.dumps(settings))
    if module:  # the code transformers would import with trust_remote_code
        (version / f"{module}.py").write_text(f"open({str(marker)!r}, 'w')\nclass Evil: pass\n")
    forge_checksums(version)
    refused(lambda: load(registry, TRANSCRIPTS), rf"{config}: asks for custom code \(auto_map", "never runs code")
    assert not marker.exists()


def test_a_python_file_beside_the_transcript_model_is_refused(registry, tmp_path):
    marker = tmp_path / "marker"
    version = registry.root / TRANSCRIPTS / "v1"
    (version / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w')\n")
    forge_checksums(version)
    refused(lambda: load(registry, TRANSCRIPTS), r"holds sitecustomize\.py, a pickled checkpoint or code file")
    assert not marker.exists()


# -- integrity: flipped bytes, missing and extra files, the listing itself ----------------------------------------

ARTIFACT_FILES = [("churn", "model.skops"), ("churn", "metadata.json"), (TRANSCRIPTS, "model.safetensors"),
                  (TRANSCRIPTS, "heads.safetensors"), (TRANSCRIPTS, "heads.json"), (TRANSCRIPTS, "config.json"),
                  (TRANSCRIPTS, "tokenizer.json"), (TRANSCRIPTS, "metadata.json")]


@pytest.mark.parametrize("name, file", ARTIFACT_FILES)
def test_a_flipped_byte_is_refused(registry, name, file):
    path = registry.root / name / "v1" / file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    refused(lambda: load(registry, name), rf"checksum mismatch for '{file}'", "refusing to load")


@pytest.mark.parametrize("name, file", ARTIFACT_FILES)
def test_a_missing_file_is_refused(registry, name, file):
    (registry.root / name / "v1" / file).unlink()
    refused(lambda: load(registry, name), rf"file '{file}' listed in SHA256SUMS is missing")


@pytest.mark.parametrize("name, file", [("churn", "extra.py"), ("churn", "weights/model.pkl"),
                                        (TRANSCRIPTS, "pytorch_model.bin")])
def test_an_extra_file_is_refused(registry, name, file):
    path = registry.root / name / "v1" / file
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"anything")
    refused(lambda: load(registry, name), rf"file '{file}' is not listed in SHA256SUMS")


@pytest.mark.parametrize("name", ["churn", TRANSCRIPTS])
def test_a_missing_checksum_listing_is_refused(registry, name):
    (registry.root / name / "v1" / "SHA256SUMS").unlink()
    refused(lambda: load(registry, name), r"v1: no SHA256SUMS file; refusing to load an unverifiable artifact")


@pytest.mark.parametrize("listing", ["not a checksum line\n", "abc  model.skops\n", b"\xff\xfe\x00"])
def test_a_malformed_checksum_listing_is_refused(registry, listing):
    path = registry.root / "churn" / "v1" / "SHA256SUMS"
    path.write_bytes(listing if isinstance(listing, bytes) else listing.encode())
    refused(lambda: load(registry, "churn"), r"SHA256SUMS: (line 1 is|cannot be read)", "unverifiable")


# -- where a version is: pointer, names, links, special files -----------------------------------------------------

@pytest.mark.parametrize("pointer", ["../../elsewhere/v1", "ELSEWHERE", "v9", "", "v1/../../elsewhere/v1",
                                     "v1\nv2", b"\xff\xfe\x00v1", "v1" * 40])
def test_a_latest_pointer_outside_the_registry_or_to_no_version_is_refused(registry, tmp_path, pointer):
    elsewhere = tmp_path / "elsewhere" / "v1"  # a valid artifact outside the registry, where the pointer leads
    shutil.copytree(registry.root / "churn" / "v1", elsewhere)
    pointer = str(elsewhere) if pointer == "ELSEWHERE" else pointer
    (registry.root / "churn" / "latest").write_bytes(pointer if isinstance(pointer, bytes) else pointer.encode())
    refused(lambda: load(registry, "churn"), r"churn/latest: (holds|cannot be read)",
            r"expected a version name like v3 that exists under .*churn \(have v1\)")


def test_a_latest_pointer_that_is_a_symbolic_link_is_refused(registry, tmp_path):
    (tmp_path / "pointer").write_text("v1\n")
    (registry.root / "churn" / "latest").unlink()
    (registry.root / "churn" / "latest").symlink_to(tmp_path / "pointer")
    refused(lambda: load(registry, "churn"), r"churn/latest: is a symbolic link", "expected a version name like v3")


BAD_VERSIONS = ["../x", "v1/../../y", "/etc", "", "latest/..", "v1/", "..", "V1", "1", "v1\n", "v\u0661", "v-1", None]


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_a_version_name_that_is_a_path_is_refused_before_any_file_is_read(tmp_path, version):
    registry = Registry(tmp_path / "no-registry-here")  # a check that read files would say "no version" instead
    for action in (lambda: registry.open("churn", version), lambda: load(registry, "churn", version),
                   lambda: load(registry, TRANSCRIPTS, version)):
        refused(action, rf"version {re.escape(repr(version))} is not allowed; expected latest or a version name like v3, not a path")
    refused(lambda: registry.promote("churn", version), r"is not allowed; expected a version name like v3")


@pytest.mark.parametrize("name", ["../churn", "churn/../../x", "/etc", "", ".", "..", "a/b", ".hidden", None])
def test_a_model_name_that_is_a_path_is_refused(registry, name):
    for action in (lambda: registry.open(name), lambda: load_tabular(registry, name), lambda: registry.versions(name),
                   lambda: registry.publish(name, lambda d: None, {})):
        refused(action, rf"model name {re.escape(repr(name))} is not allowed", "not a path")


@pytest.mark.parametrize("link", ["version", "model"])
def test_a_directory_linking_outside_the_registry_is_refused(registry, tmp_path, link):
    outside = tmp_path / "outside"
    if link == "version":  # churn/v2 -> a copy of v1 outside, its metadata forged to say v2
        shutil.copytree(registry.root / "churn" / "v1", outside)
        rewrite_metadata(outside, version="v2")
        (registry.root / "churn" / "v2").symlink_to(outside, target_is_directory=True)
        registry.promote("churn", "v2")
        expected = r"churn/v2: is a symbolic link"
    else:  # the whole churn model directory swapped for a link to a copy outside
        shutil.copytree(registry.root / "churn", outside)
        shutil.rmtree(registry.root / "churn")
        (registry.root / "churn").symlink_to(outside, target_is_directory=True)
        expected = r"registry/churn: is a symbolic link"
    refused(lambda: load(registry, "churn"), expected, "refusing to load through it")


def test_a_registry_root_that_is_a_link_is_followed(registry, tmp_path):
    """The root itself may be a link (a mounted volume); only what lies below it must stay put."""
    (tmp_path / "mounted").symlink_to(registry.root, target_is_directory=True)
    model, metadata = load(Registry(tmp_path / "mounted"), "churn")
    assert metadata["version"] == "v1" and isinstance(model, RiskModel)


def test_a_symbolic_link_inside_a_version_is_refused(registry, tmp_path):
    version = registry.root / "churn" / "v1"
    shutil.copy(version / ARTIFACT, tmp_path / "elsewhere.skops")
    (version / ARTIFACT).unlink()
    (version / ARTIFACT).symlink_to(tmp_path / "elsewhere.skops")
    forge_checksums(version)  # the link's target hashes fine
    refused(lambda: load(registry, "churn"), r"'model\.skops' is a symbolic link", "plain files only")


def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(registry):
    version = registry.root / "churn" / "v1"
    (version / ARTIFACT).unlink()
    os.mkfifo(version / ARTIFACT)  # reading it would wait forever for a writer
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("loading blocked on the FIFO"))
    signal.alarm(10)
    try:
        refused(lambda: load(registry, "churn"), r"'model\.skops' is not a plain file \(a FIFO")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- metadata and compatibility ----------------------------------------------------------------------------------

@pytest.mark.parametrize("content, expected", [
    (b"{not json", r"metadata\.json: not valid JSON"), (b"\xff\xfe", r"metadata\.json: not valid JSON"),
    (b"[1, 2]", r"metadata\.json: holds a JSON list; expected the JSON object"),
    (b"[" * 100_000, r"metadata\.json: not valid JSON")])
def test_metadata_that_is_not_a_json_object_is_refused(registry, content, expected):
    version = registry.root / "churn" / "v1"
    (version / "metadata.json").write_bytes(content)
    forge_checksums(version)
    refused(lambda: load(registry, "churn"), expected, "refusing to load")


@pytest.mark.parametrize("name", ["churn", TRANSCRIPTS])
@pytest.mark.parametrize("recorded", [2, 0, "1", True, None, ...])
def test_a_registry_written_by_an_incompatible_version_is_refused(registry, name, recorded):
    rewrite_metadata(registry.root / name / "v1", carelens_format=recorded)
    expected = (r"metadata\.json: has no 'carelens_format'; expected format 1" if recorded is ... else
                rf"metadata\.json: artifact format \(carelens_format\) {re.escape(repr(recorded))} is not supported; "
                rf"this CareLens reads format 1, so another CareLens version wrote it")
    refused(lambda: load(registry, name), expected)


@pytest.mark.parametrize("name, library", [("churn", "scikit-learn"), ("churn", "skops"), (TRANSCRIPTS, "torch"),
                                           (TRANSCRIPTS, "transformers")])
def test_an_artifact_from_an_incompatible_library_is_refused(registry, name, library):
    version = registry.root / name / "v1"
    libraries = json.loads((version / "metadata.json").read_text())["libraries"]
    rewrite_metadata(version, libraries={**libraries, library: "0.0.1"})
    refused(lambda: load(registry, name), rf"trained with {library} 0\.0\.1", rf"install {library}==0\.0\.1")


def test_metadata_with_malformed_library_versions_is_refused(registry):
    rewrite_metadata(registry.root / "churn" / "v1", libraries=["scikit-learn", "1.0"])
    refused(lambda: load(registry, "churn"), r"metadata\.json: 'libraries' is \['scikit-learn', '1\.0'\]; expected")


def test_a_version_copied_from_another_model_is_refused(registry):
    """An intact, correctly checksummed version of retaliation placed as churn v2: every file verifies."""
    shutil.copytree(registry.root / "retaliation" / "v1", registry.root / "churn" / "v2")
    registry.promote("churn", "v2")
    refused(lambda: load(registry, "churn"),
            r"metadata\.json: records model 'retaliation' version 'v1', but it is stored as churn/v2")


def test_published_metadata_cannot_override_the_name_version_or_format(tmp_path):
    artifact = Registry(tmp_path).publish("churn", lambda d: None, {"name": "x", "version": "v7", "carelens_format": 9})
    assert (artifact.metadata["name"], artifact.metadata["version"], artifact.metadata["carelens_format"]) == \
        ("churn", "v1", 1)
    assert Registry(tmp_path).open("churn").version == "v1"


# -- transcript heads that do not fit ------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["{not json", "[]", '{"hidden_size": 32}', '{"hidden_size": "32", '
                                     '"max_length": 32, "mode": "heads", "temperatures": {}}'])
def test_a_heads_configuration_that_is_not_one_is_refused(registry, content):
    version = registry.root / TRANSCRIPTS / "v1"
    (version / "heads.json").write_text(content)
    forge_checksums(version)
    refused(lambda: load(registry, TRANSCRIPTS), r"heads\.json: (not valid JSON|not the heads configuration)")


def test_head_weights_of_the_wrong_shape_are_refused(registry):
    version = registry.root / TRANSCRIPTS / "v1"
    save_file({"sentiment.weight": torch.zeros(3, 8), "sentiment.bias": torch.zeros(3)}, version / "heads.safetensors")
    forge_checksums(version)
    refused(lambda: load(registry, TRANSCRIPTS), r"heads\.safetensors: the tensors do not fit heads of hidden size 32")


def test_an_encoder_that_does_not_fit_its_heads_is_refused(registry):
    version = registry.root / TRANSCRIPTS / "v1"
    config = json.loads((version / "config.json").read_text())
    (version / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    forge_checksums(version)
    refused(lambda: load(registry, TRANSCRIPTS), r"config\.json: hidden_size 48 differs from the heads' 32 \(heads\.json\)")


def test_the_pristine_registry_loads(registry, fitted):
    """Control: nothing above is refused for a reason an untampered registry would also hit."""
    model, frame = fitted
    tabular, metadata = load(registry, "churn")
    np.testing.assert_array_equal(tabular.predict_proba(frame), model.predict_proba(frame))
    transcripts, metadata = load(registry, TRANSCRIPTS)
    assert metadata["version"] == "v1" and transcripts.max_length == 32


# -- the feature schema against the input -------------------------------------------------------------------------

def test_input_lacking_a_trained_feature_is_refused_naming_it(registry, fitted):
    _, frame = fitted
    model, _ = load(registry, "churn")
    with pytest.raises(SchemaError, match=r"lacks feature column\(s\) channel; this model needs x, channel"):
        model.predict_proba(frame.drop(columns="channel"))


def test_a_numeric_feature_given_text_is_refused_naming_it(registry, fitted):
    _, frame = fitted
    model, _ = load(registry, "churn")
    with pytest.raises(SchemaError, match=r"feature 'x': got 'high', expected a number"):
        model.predict_proba(frame.assign(x=["high"] * len(frame)))


def test_load_model_refuses_a_directory_or_missing_file(tmp_path):
    for path in (tmp_path, tmp_path / "absent.skops"):
        refused(lambda: load_model(path), r"missing or not a plain file; expected a skops file")
