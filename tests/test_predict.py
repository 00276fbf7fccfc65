"""`carelens predict`: any table a churn or retaliation model was trained on, scored row for row."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from carelens.data.contracts import ContractError
from carelens.data.synthetic import sample_dir
from carelens.inference.cli import app
from carelens.inference.predict import predict_table
from carelens.models.registry import Registry
from carelens.models.tabular import load_tabular
from carelens.training.tabular import TASKS, load_labelled, publish_tabular, train_tabular

runner = CliRunner()
# The bundled day has only 19 vent contacts: calibration folds warn that the class is small, which these tests accept.
pytestmark = pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")


def own_table(n: int, seed: int) -> pd.DataFrame:
    """A bring-your-own-data table, not the interactions contract: numbers, text and a yes/no target."""
    rng = np.random.default_rng(seed)
    calls, plan = rng.poisson(2, n), rng.choice(["Yes", "No"], n)
    left = rng.random(n) < 1 / (1 + np.exp(-(calls - 3 + (plan == "Yes") * 1.5)))
    return pd.DataFrame({"State": rng.choice(["KS", "OH", "NJ"], n), "Service calls": calls, "Intl plan": plan,
                         "Minutes": rng.normal(180, 50, n).round(1), "Left": np.where(left, "yes", "no")})


def contract_table() -> pd.DataFrame:
    """The bundled day's interactions with their labels: a contract table whose target is `retaliation`."""
    sample = sample_dir()
    return pd.read_parquet(sample / "interactions.parquet").merge(pd.read_parquet(sample / "labels.parquet"),
                                                                  on="contact_id")


def published(registry: Registry, path, name: str, target: str) -> None:
    """Train and publish as `carelens train <name> --data PATH --target TARGET` does, with a short booster."""
    task = TASKS[name]
    publish_tabular(train_tabular(load_labelled(path, task, target=target), task, rounds=15, trees=30, spread_seeds=1), registry)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A registry with churn trained on an own CSV and retaliation trained on a contract CSV."""
    folder = tmp_path_factory.mktemp("predict")
    own, contract = folder / "own.csv", folder / "contract.csv"
    own_table(400, seed=3).to_csv(own, index=False)
    contract_table().to_csv(contract, index=False)
    registry = Registry(folder / "registry")
    published(registry, own, "churn", "Left")
    published(registry, contract, "retaliation", "retaliation")
    return registry


def predict(registry: Registry, name: str, data, out, *more: str):
    return runner.invoke(app, ["predict", name, "--registry", str(registry.root), "--data", str(data),
                               "--out", str(out), *more])


def test_own_table_is_scored_row_for_row_with_the_models_risk(registry, tmp_path):
    table = own_table(250, seed=11)
    table.to_csv(tmp_path / "next.csv", index=False)
    result = predict(registry, "churn", tmp_path / "next.csv", tmp_path / "scores.csv")
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(tmp_path / "scores.csv")
    model, _ = load_tabular(registry, "churn")
    assert list(scores.columns) == ["row", "risk", "flagged", "predicted"]
    assert len(scores) == 250 and scores["row"].tolist() == list(range(2, 252))
    np.testing.assert_allclose(scores["risk"], model.risk(table), rtol=1e-9)
    assert (scores["flagged"] == (scores["risk"] >= model.threshold_)).all()
    assert (scores["predicted"] == model.predict(table)).all()
    assert 0 < scores["flagged"].sum() < 250
    assert f"250 rows scored with churn, {scores['flagged'].sum()} flagged" in result.output


def test_keys_come_through_and_parquet_goes_both_ways(registry, tmp_path):
    table = own_table(40, seed=12).drop(columns="Left").assign(customer_id=[f"00{i}" for i in range(40)])
    table.to_parquet(tmp_path / "next.parquet")
    result = predict(registry, "churn", tmp_path / "next.parquet", tmp_path / "out" / "scores.parquet",
                     "--version", "v1")
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(tmp_path / "out" / "scores.parquet")
    assert list(scores.columns) == ["customer_id", "risk", "flagged", "predicted"]
    assert scores["customer_id"].tolist() == table["customer_id"].tolist()


def test_a_missing_feature_column_is_named_and_nothing_is_written(registry, tmp_path):
    own_table(30, seed=13).drop(columns="Minutes").to_csv(tmp_path / "next.csv", index=False)
    result = predict(registry, "churn", tmp_path / "next.csv", tmp_path / "scores.csv")
    assert result.exit_code == 2
    assert "no feature column(s) Minutes" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "scores.csv").exists()


def test_an_unknown_output_type_is_refused(registry, tmp_path):
    own_table(30, seed=14).to_csv(tmp_path / "next.csv", index=False)
    result = predict(registry, "churn", tmp_path / "next.csv", tmp_path / "scores.txt")
    assert result.exit_code == 2 and "expected one of .csv, .parquet" in result.output


def test_multi_class_rows_carry_each_class_probability(registry, tmp_path):
    table = contract_table().drop(columns=["churned", "retaliation"])
    # Written as yes/no, the booleans only score because the contract types them.
    table[["abandoned", "resolved"]] = table[["abandoned", "resolved"]].replace({True: "yes", False: "no"})
    table.to_csv(tmp_path / "day.csv", index=False)
    scores = predict_table(registry, "retaliation", tmp_path / "day.csv")
    model, _ = load_tabular(registry, "retaliation")
    classes = ["p_escalate", "p_none", "p_switch", "p_vent"]
    assert list(scores.columns) == ["customer_id", "contact_id", "risk", "flagged", "predicted", *classes]
    assert scores["contact_id"].tolist() == table["contact_id"].tolist()
    np.testing.assert_allclose(scores[classes].sum(axis=1), 1.0)
    np.testing.assert_allclose(scores["risk"], 1 - scores["p_none"])
    np.testing.assert_allclose(scores["risk"], model.risk(contract_table()), rtol=1e-9)
    assert set(scores.loc[scores["flagged"], "predicted"]) <= {"escalate", "switch", "vent"}


def test_a_contract_table_is_validated_by_the_contract(registry, tmp_path):
    table = contract_table()
    table.loc[2, "channel"] = "fax"
    table.to_csv(tmp_path / "day.csv", index=False)
    with pytest.raises(ContractError, match=r"day\.csv: row 4, column 'channel'"):
        predict_table(registry, "retaliation", tmp_path / "day.csv")


def test_an_out_that_is_a_folder_is_refused_before_any_work(registry, tmp_path):
    own_table(30, seed=15).to_csv(tmp_path / "next.csv", index=False)
    folder = tmp_path / "scores.csv"
    folder.mkdir()
    for command in (["predict", "churn", "--data", str(tmp_path / "next.csv")], ["export", "churn"],
                    ["featurize", "--transcripts", str(sample_dir() / "transcripts.jsonl")]):
        result = runner.invoke(app, [*command, "--registry", str(registry.root), "--out", str(folder)])
        assert result.exit_code == 2, (command, result.output)
        assert f"--out {folder}: is a folder; expected a file to write" in " ".join(result.output.split()), command
    assert list(folder.iterdir()) == []


def test_a_fifo_or_a_device_as_data_is_refused_by_name_without_reading_it(registry, tmp_path):
    import os
    os.mkfifo(tmp_path / "pipe.csv")
    for data, kind in ((tmp_path / "pipe.csv", "a FIFO"), (Path("/dev/zero"), "a character device"),
                       (tmp_path, "a directory")):
        result = predict(registry, "churn", data, tmp_path / "scores.csv")
        assert result.exit_code == 2, result.output
        assert f"{data}: is {kind}, expected a regular file" in " ".join(result.output.split())


def test_an_out_that_is_a_fifo_or_a_device_is_refused_by_name_before_any_work(registry, tmp_path, time_limit):
    import os
    own_table(30, seed=15).to_csv(tmp_path / "next.csv", index=False)
    os.mkfifo(tmp_path / "scores.csv")  # writing to it would wait for ever for a reader
    for out, kind in ((tmp_path / "scores.csv", "a FIFO"), (Path("/dev/null"), "a character device")):
        for command in (["predict", "churn", "--data", str(tmp_path / "next.csv")], ["export", "churn"],
                        ["featurize", "--transcripts", str(sample_dir() / "transcripts.jsonl")]):
            with time_limit(60):
                result = runner.invoke(app, [*command, "--registry", str(registry.root), "--out", str(out)])
            assert result.exit_code == 2, (command, result.output)
            assert f"--out {out}: is {kind}; expected a file to write" in " ".join(result.output.split()), command
