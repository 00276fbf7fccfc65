"""The registry: versions round-trip, `latest` resolves, and tampered, padded or incompatible artifacts are refused."""
import os
import re
import stat

import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from carelens.models.registry import Registry, RegistryError, frame_fingerprint
from carelens.models.tabular import ARTIFACT, RiskModel, load_model, load_tabular, save_model


def _write_note(text):
    def write(directory):
        (directory / "note.txt").write_text(text)
    return write


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=400), "channel": rng.choice(["phone", "chat"], 400)})
    y = rng.random(400) < 1 / (1 + np.exp(-2 * frame["x"]))
    return RiskModel(rounds=10, trees=20, random_state=1).fit(frame, y), frame


@pytest.fixture
def published(tmp_path, fitted):
    model, _ = fitted
    registry = Registry(tmp_path / "registry")
    registry.publish("churn", lambda d: save_model(model, d), {"features": model.feature_schema()})
    return registry


def test_publish_then_open_returns_metadata_and_files(tmp_path):
    registry = Registry(tmp_path)
    artifact = registry.publish("churn", _write_note("hello"), {"seed": 7})
    opened = registry.open("churn")
    assert (opened.version, opened.metadata["seed"]) == ("v1", 7)
    assert (opened.path / "note.txt").read_text() == "hello"
    assert opened.metadata["created_at"] == artifact.metadata["created_at"]



@pytest.mark.parametrize("umask, directory_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_published_versions_are_readable_as_the_umask_allows(tmp_path, umask, directory_mode, file_mode):
    def write(directory):
        (directory / "weights").mkdir()
        (directory / "weights" / "head.bin").write_bytes(b"x")

    previous = os.umask(umask)
    try:
        artifact = Registry(tmp_path / "registry").publish("churn", write, {})
    finally:
        os.umask(previous)
    modes = {p.relative_to(artifact.path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [artifact.path, *artifact.path.rglob("*")]}
    assert modes == {".": directory_mode, "weights": directory_mode, "weights/head.bin": file_mode,
                     "metadata.json": file_mode, "SHA256SUMS": file_mode}

def test_model_round_trip_scores_the_same(published, fitted):
    model, frame = fitted
    loaded, metadata = load_tabular(published, "churn")
    np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))
    assert metadata["features"] == [{"name": "x", "kind": "numeric"}, {"name": "channel", "kind": "categorical"}]
    assert loaded.threshold_ == model.threshold_


def test_altered_model_bytes_fail_the_checksum(published):
    path = published.root / "churn" / "v1" / ARTIFACT
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=r"checksum mismatch for 'model\.skops'.*refusing to load"):
        load_tabular(published, "churn")


def test_a_file_added_after_publishing_is_refused(published):
    (published.root / "churn" / "v1" / "extra.py").write_text("print('hi')")
    with pytest.raises(RegistryError, match=r"'extra\.py' is not listed in SHA256SUMS"):
        published.open("churn")


def test_latest_follows_the_newest_promoted_version(tmp_path):
    registry = Registry(tmp_path)
    for text in ("one", "two"):
        registry.publish("churn", _write_note(text), {})
    assert registry.versions("churn") == ["v1", "v2"]
    assert (registry.open("churn").path / "note.txt").read_text() == "two"
    registry.publish("churn", _write_note("three"), {}, promote=False)
    assert registry.resolve("churn") == "v2"
    registry.promote("churn", "v1")
    assert registry.open("churn").version == "v1"
    assert registry.open("churn", "v3").version == "v3"


def test_an_unknown_version_and_an_untrained_model_are_named(tmp_path):
    registry = Registry(tmp_path)
    registry.publish("churn", _write_note("x"), {})
    with pytest.raises(RegistryError, match=r"no version 'v9' \(have v1\)"):
        registry.open("churn", "v9")
    with pytest.raises(RegistryError, match=r"no promoted version of model 'retaliation'.*carelens train retaliation"):
        registry.open("retaliation")


def test_an_incompatible_library_version_is_refused(tmp_path):
    registry = Registry(tmp_path)
    registry.publish("churn", _write_note("x"), {"libraries": {"scikit-learn": "0.1.0"}})
    with pytest.raises(RegistryError, match=r"trained with scikit-learn 0\.1\.0.*install scikit-learn==0\.1\.0"):
        registry.open("churn", requires=("scikit-learn",))


class Smuggled:
    """A type no allow-list names."""


def test_a_model_holding_an_unlisted_type_is_refused(tmp_path, fitted):
    model, _ = fitted
    model.smuggled_ = Smuggled()
    try:
        path = save_model(model, tmp_path)
    finally:
        del model.smuggled_
    assert "test_registry.Smuggled" in sio.get_untrusted_types(file=path)
    with pytest.raises(RegistryError, match=r"outside the allow-list: test_registry\.Smuggled"):
        load_model(path)


def test_metadata_that_disagrees_with_the_model_is_refused(tmp_path, fitted):
    model, _ = fitted
    registry = Registry(tmp_path)
    registry.publish("churn", lambda d: save_model(model, d), {"features": [{"name": "x", "kind": "numeric"}]})
    with pytest.raises(RegistryError, match=r"differ from those in its metadata"):
        load_tabular(registry, "churn")


def test_fingerprint_changes_with_the_data_and_not_otherwise():
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert frame_fingerprint(frame) == frame_fingerprint(frame.copy())
    assert frame_fingerprint(frame) != frame_fingerprint(frame.assign(a=[1, 3]))


def test_concurrent_publishes_all_land_promotes_never_collide_and_readers_always_see_a_version(tmp_path):
    import threading

    registry = Registry(tmp_path)
    registry.publish("churn", _write_note("first"), {})
    writers, rounds = 4, 5
    together = threading.Barrier(writers)
    published, errors, seen = [], [], set()
    stop = threading.Event()

    def write_together(directory):
        (directory / "note.txt").write_text("x")
        together.wait(timeout=30)  # every writer picks its version at the same moment

    def publisher():
        try:
            published.append(registry.publish("churn", write_together, {}).version)
        except Exception as exc:  # noqa: BLE001 - collected, then asserted empty
            errors.append(exc)

    def promoter():
        try:
            for _ in range(200):
                registry.promote("churn", "v1")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def reader():
        while not stop.is_set():
            try:
                seen.add(registry.resolve("churn"))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
                return

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    for _ in range(rounds):
        threads = [threading.Thread(target=publisher) for _ in range(writers)] + \
                  [threading.Thread(target=promoter) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert errors == [], errors
    total = 1 + writers * rounds
    assert sorted(published, key=lambda v: int(v[1:])) == [f"v{k}" for k in range(2, total + 1)]
    assert registry.versions("churn") == [f"v{k}" for k in range(1, total + 1)]
    assert all(registry.open("churn", v).metadata["version"] == v for v in registry.versions("churn"))
    assert seen and seen <= set(registry.versions("churn"))
    assert not [p for p in (tmp_path / "churn").iterdir() if p.name.startswith((".staging", ".latest"))]


@pytest.mark.parametrize("version", ["latest", "v2"])
@pytest.mark.parametrize("make", [lambda path: None, lambda path: path.write_text("not a folder")])
def test_a_registry_folder_that_is_not_there_is_named_as_such_not_as_a_missing_model(tmp_path, make, version):
    root = tmp_path / "registry"
    make(root)
    what = "is a file, not a folder" if root.exists() else "does not exist"
    with pytest.raises(RegistryError, match=rf"^no registry at {re.escape(str(root))}: it {what}\. Pass --registry"):
        Registry(root).resolve("transcripts", version)
