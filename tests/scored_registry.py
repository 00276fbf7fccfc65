"""A registry with all three models (a tiny transcript encoder unless given one; tabular models use its features)."""
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from filelock import FileLock
from carelens.data.synthetic import SyntheticData, generate, write_synthetic
from carelens.models.conversation_features import write_features
from carelens.models.registry import Registry
from carelens.models.scoring import load_scoring_pipeline, transcript_features
from carelens.models.transcript import TranscriptModel, publish
from carelens.training.tabular import TASKS, load_labelled, publish_tabular, train_tabular
from tiny_encoder import tiny_encoder


@dataclass
class ScoredRegistry:
    root: Path
    day: SyntheticData
    day_dir: Path


def scored_registry(directory: Path, customers: int = 1200, model: Optional[TranscriptModel] = None,
                    source: Optional[Path] = None) -> ScoredRegistry:
    """Publish a transcript model (default: a tiny random one; `source`, a published model's directory: that model with
    its exports and the runtime figures training recorded), then churn and retaliation trained on a synthetic history
    with its transcript features; `day` is a further synthetic day (another seed) the models never saw."""
    root = directory / "registry"
    if source is not None:
        recorded = json.loads((Path(source) / "metadata.json").read_text())
        model, metadata = TranscriptModel.from_pretrained(source), {"note": f"copy of {source}",
                                                                    "runtimes": recorded.get("runtimes", {})}
        version = publish(model, root, metadata, exports=source).version
    else:
        model = model or TranscriptModel.from_encoder(tiny_encoder(directory / "encoder"), max_length=32)
        version = publish(model, root, {"note": "untrained heads, for tests"}).version
    history = generate(customers, seed=11)
    write_synthetic(history, directory / "history")
    features = directory / "history_features.parquet"
    # Scored as the Scorer will score (the default runtime of the published model), so train and serve agree.
    write_features(transcript_features(load_scoring_pipeline(root)[0], history.conversations), features, version)
    for name in ("churn", "retaliation"):
        data = load_labelled(directory / "history", TASKS[name], features_from=[features])
        # Few rounds and no refit per feature group: these models only need to score; 200 rounds x 5 folds, or a
        # refit without each of the seven conversation feature groups, would make every test that scores slow.
        publish_tabular(train_tabular(data, TASKS[name], learner="boosting", spread_seeds=1, rounds=20,
                                      each_group=False), Registry(root))
    day = unseen_day()
    write_synthetic(day, directory / "day")
    return ScoredRegistry(root, day, directory / "day")


def shared_scored_registry(directory: Path) -> ScoredRegistry:
    """`scored_registry` (its defaults) in `directory`, built by the first of the test processes to ask (pytest-xdist
    workers share the folder) and read by the others; one left half-built by a process that died is built anew."""
    built = directory / "built"
    with FileLock(str(directory.with_suffix(".lock"))):
        if built.is_file():
            return ScoredRegistry(directory / "registry", unseen_day(), directory / "day")
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        registry = scored_registry(directory)
        built.touch()
        return registry


def unseen_day() -> SyntheticData:
    """The synthetic day the registry's models never saw (another seed than their history)."""
    return generate(60, seed=12)
