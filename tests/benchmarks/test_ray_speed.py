"""The Ray engine against the local one on the same real-text day: `carelens score` with --engine local (one process,
intra-op threads on every core), and --engine ray with 1 and 2 actors (one CPU and one thread each), alternated in
one run; conversations/s, wall time and the same features from every engine."""

import numpy as np
import pytest
from conftest import requires_shared
from harness import record
from test_batch_scale import measured
from test_nightly_speed import real_text_day

from carelens.inference.nightly.storage import read_parts
from carelens.models.conversation_features import FEATURE_COLUMNS
from carelens.models.transcript import TranscriptModel

CUSTOMERS = 2_000
ENGINES = {"local": ["--engine", "local"], "ray, 1 actor": ["--engine", "ray", "--workers", "1"],
           "ray, 2 actors": ["--engine", "ray", "--workers", "2"]}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from scored_registry import scored_registry
    return scored_registry(tmp_path_factory.mktemp("ray"), customers=600,
                           model=TranscriptModel.from_encoder(max_length=128)).root


@pytest.mark.slow
@requires_shared
def test_ray_with_one_and_two_actors_against_the_local_engine(registry, shared_data, tmp_path):
    day = real_text_day(shared_data, CUSTOMERS, tmp_path / "day")
    rows, features = [], {}
    for name, engine in ENGINES.items():
        out = tmp_path / name.replace(" ", "").replace(",", "-")
        seconds, peak, manifest = measured("score", ["--transcripts", str(day / "transcripts.jsonl"), "--registry",
                                                     str(registry), "--out", str(out), "--cache-entries", "0",
                                                     *engine])
        conversations = manifest["by_input"]["transcripts"]["out"]
        rows.append({"engine": name, "conversations": conversations, "seconds": seconds,
                     "conversations/s": conversations / seconds, "run s (in process)": manifest["elapsed_s"],
                     "peak MiB (driver)": peak / 2 ** 20})
        features[name] = read_parts(out).sort_values(["source", "line"])[FEATURE_COLUMNS].to_numpy(float)
    record("ray_engine", {"customers": CUSTOMERS, "text": "real: airline tweets around EPITOME replies, no repeats",
                          "cache_entries": 0}, rows, model_version="v1")
    for name in ENGINES:
        np.testing.assert_allclose(features[name], features["local"], atol=1e-5)
