"""Compiled trees: a large booster's fold models compiled by tl2cgen into the cache, scoring exactly as treelite's runtime
does, built once per model and loaded by later processes, and left to treelite's runtime where they cannot be built."""
import copy
import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from carelens.inference import serve
from carelens.inference.api import Scorer
from carelens.inference.nightly.predictions import tabular_scorer
from carelens.models import compiled_trees as compiled
from carelens.models import scoring_form as forms
from carelens.models.tabular import RiskModel
from test_scoring_form import LEARNERS, scoring_rows, sklearn_proba, table

pytestmark = pytest.mark.skipif(not any(shutil.which(c) for c in compiled.COMPILERS), reason="no C compiler")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache, and boosters of any size worth compiling."""
    monkeypatch.setenv("CARELENS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(forms, "COMPILED_TREES", 1)
    return tmp_path / "trees"


def booster(seed: int = 3, classes: int = 3) -> tuple[RiskModel, pd.DataFrame]:
    frame, y = table(300, seed, classes)
    return RiskModel(learner=LEARNERS["boosting"].name, negative_class="none", rounds=8, cv=3,
                     random_state=seed).fit(frame, y), frame


def fold_trees(model: RiskModel) -> list:
    return [scorer for scorer, _, _ in forms.scoring_form(model.estimator_).folds]


@pytest.mark.parametrize("classes", [2, 3])
def test_compiled_trees_score_exactly_as_treelite_s_runtime_alone_and_among_many_rows(cache, monkeypatch, classes):
    model, frame = booster(classes=classes)
    rows = scoring_rows(frame, 3)  # unseen categories, missing values
    many = pd.concat([rows] * 5, ignore_index=True)
    by_runtime, many_by_runtime = model.predict_proba(rows), model.predict_proba(many)
    assert all(trees.compiled is None for trees in fold_trees(model))
    assert forms.compile_trees(model.estimator_) == 3  # every fold model
    assert len(list(cache.glob("*.so"))) == 3
    np.testing.assert_array_equal(model.predict_proba(rows), by_runtime)
    monkeypatch.setattr(forms, "PARALLEL_ROWS", 50)  # the many rows on every core
    np.testing.assert_array_equal(model.predict_proba(many), many_by_runtime)
    np.testing.assert_array_equal(model.predict_proba(many)[:40], model.predict_proba(rows))
    np.testing.assert_allclose(model.predict_proba(rows), sklearn_proba(model, rows), rtol=0, atol=1e-12)


def test_a_library_is_compiled_once_and_loaded_by_the_forms_built_after(cache, monkeypatch):
    model, frame = booster(seed=4)
    built = []
    monkeypatch.setattr(compiled.tl2cgen, "export_lib",
                        lambda *a, made=compiled.tl2cgen.export_lib, **k: built.append(a[0]) or made(*a, **k))
    assert forms.compile_trees(model.estimator_) == 3 and len(built) == 3
    assert forms.compile_trees(model.estimator_) == 3 and len(built) == 3  # already compiled
    # Another process's copy of the same model (a new estimator, a new form): its trees load from the cache.
    again = copy.deepcopy(model)
    assert all(trees.compiled is not None for trees in fold_trees(again)) and len(built) == 3
    np.testing.assert_array_equal(again.predict_proba(frame), model.predict_proba(frame))
    assert not list(cache.glob("tmp*"))  # no scratch folder left behind


def test_small_boosters_linear_models_and_forests_are_not_compiled(tmp_path, monkeypatch):
    monkeypatch.setenv("CARELENS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiled.tl2cgen, "export_lib", lambda *a, **k: pytest.fail("compiled"))
    model, _ = booster(seed=5)  # 48 trees a fold, under COMPILED_TREES
    frame, y = table(200, 5, 2)
    others = [RiskModel(learner=LEARNERS[learner].name, negative_class="none", trees=10, cv=3).fit(frame, y)
              for learner in ("logistic", "forest")]
    assert [forms.compile_trees(m.estimator_) for m in (model, *others)] == [0, 0, 0]


def test_without_a_compiler_or_when_compiling_fails_the_trees_score_through_treelite(cache, monkeypatch, caplog):
    model, frame = booster(seed=6)
    expected = model.predict_proba(frame)
    with monkeypatch.context() as bare, caplog.at_level(logging.WARNING, logger=compiled.__name__):
        bare.setattr(compiled.shutil, "which", lambda name: None)
        assert forms.compile_trees(model.estimator_) == 0
    assert "no C compiler (gcc, clang, cc) on PATH" in caplog.text

    def refused(*args, **kwargs):
        raise RuntimeError("cc1: out of memory")
    monkeypatch.setattr(compiled.tl2cgen, "export_lib", refused)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        assert forms.compile_trees(model.estimator_) == 0
    trees = fold_trees(model)[0].model.num_tree
    assert f"compiling {trees} trees with" in caplog.text and "cc1: out of memory" in caplog.text
    np.testing.assert_array_equal(model.predict_proba(frame), expected)


def test_a_library_that_does_not_load_leaves_the_trees_to_treelite(cache, caplog):
    model, frame = booster(seed=7)
    expected = model.predict_proba(frame)
    path = compiled.library_path(fold_trees(model)[0].model)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x7fELF truncated")
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        assert forms.compile_trees(model.estimator_) == 2  # the two folds whose libraries it built
    assert f"the compiled trees {path} could not be loaded" in caplog.text
    np.testing.assert_array_equal(model.predict_proba(frame), expected)


def test_a_scorer_compiles_its_boosters_and_flags_the_same_customers(cache, scorer, day, registry_with_models):
    features = scorer.score_transcripts(day.conversations)
    fresh = Scorer.load(registry_with_models.root, load_encoder=False)  # its own forms: the session's stay as they are
    before = fresh.flag_at_risk(day.interactions, transcript_features=features, capacity=50)
    boosters = [trees for model in (fresh.churn, fresh.retaliation, fresh.satisfaction) if model is not None
                for trees in fold_trees(model) if isinstance(trees, forms._Booster)]
    assert boosters and fresh.compile_trees() == len(boosters)
    after = fresh.flag_at_risk(day.interactions, transcript_features=features, capacity=50)
    pd.testing.assert_frame_equal(after, before)


def test_the_nightly_job_and_the_service_compile_their_models_before_scoring(monkeypatch):
    compiled_by = []
    monkeypatch.setattr(Scorer, "load", classmethod(lambda cls, *a, **k: cls.__new__(cls)))
    monkeypatch.setattr(Scorer, "compile_trees", lambda self: compiled_by.append(self) or 0)
    monkeypatch.setattr("carelens.inference.service.create_app", lambda scorer, settings: scorer)
    monkeypatch.setattr(serve, "store_text_as_python_objects", lambda: None)  # a process-wide pandas option
    run = SimpleNamespace(tables=["interactions.parquet"], store=None, models="latest", pinned=False, scoring=None)
    night = tabular_scorer(run)
    service = serve.WorkerSpec(registry=None, version="latest", redact=False, scoring={}, service={}).app()
    assert compiled_by == [night, service]
    assert tabular_scorer(SimpleNamespace(tables=[])) is None and len(compiled_by) == 2  # nothing to predict
