"""Hostile label files (`carelens label suggest` CSVs filled in by a person, then `train transcripts --labels`)."""
import pandas as pd
import pytest
from typer.testing import CliRunner

from carelens.data.adapters import read_labelled_text, read_suggested
from carelens.data.contracts import ContractError

HEADER = ("conversation_id,turn_index,speaker,context,text,model_guess,uncertainty,sentiment,emotional_reactions,"
          "interpretations,explorations\r\n")
BAG = "c1,0,customer,,my bag is lost,negative 0.40,0.9,negative,,,\r\n"
SORRY = "c1,1,agent,my bag is lost,so sorry,x,0.8,,2,,1\r\n"


def _written(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("content, encoding", [
    (HEADER.replace("text", "t\xe9xt") + BAG, "latin-1"),  # a spreadsheet's 'CSV' in the local code page
    ('"speaker,context\r\n' + BAG, "utf-8"),  # a quote never closed in the header
])
def test_a_label_file_whose_header_cannot_be_read_is_refused_naming_it(tmp_path, content, encoding):
    path = _written(tmp_path / "to_label.csv", content, encoding)
    with pytest.raises(ContractError, match=r"to_label\.csv: cannot be read as CSV"):
        read_labelled_text([path])


def test_a_label_file_saved_with_a_byte_order_mark_reads_as_one(tmp_path):
    path = _written(tmp_path / "to_label.csv", "\ufeff" + HEADER + BAG)
    assert read_labelled_text([path]).sentiment.to_dict("records") == [{"text": "my bag is lost", "label": "negative"}]


@pytest.mark.parametrize("row, column", [
    ("c1,0,customer,,,x,0.9,negative,,,\r\n", "text"),
    ("c1,0,customer,,   ,x,0.9,positive,,,\r\n", "text"),
    ("c1,1,agent,my bag,,x,0.8,,1,,\r\n", "text"),
])
def test_a_labelled_turn_without_text_is_refused_with_its_row(tmp_path, row, column):
    path = _written(tmp_path / "to_label.csv", HEADER + BAG + row)
    with pytest.raises(ContractError, match=rf"row 3, column '{column}': .*expected non-empty text"):
        read_suggested(path)


def test_wholly_blank_rows_a_spreadsheet_leaves_are_skipped(tmp_path):
    path = _written(tmp_path / "to_label.csv", HEADER + ",,,,,,,,,,\r\n" + BAG + " , ,,,,,,,,,\r\n" + SORRY)
    sentiment, empathy = read_suggested(path)
    assert sentiment["text"].tolist() == ["my bag is lost"]
    assert empathy["response"].tolist() == ["so sorry"]


def test_the_same_turn_labelled_twice_differently_in_one_file_is_refused_naming_both_rows(tmp_path):
    other = BAG.replace(",negative,,,", ",positive,,,")
    path = _written(tmp_path / "to_label.csv", HEADER + BAG + SORRY + other)
    with pytest.raises(ContractError, match=r"to_label\.csv: row 4, column 'sentiment': got 'positive', but row 2 "
                                            r"of .*to_label\.csv labels the same turn 'negative'"):
        read_labelled_text([path])


def test_the_same_turn_labelled_differently_in_two_files_is_refused_naming_both(tmp_path):
    first = _written(tmp_path / "a.csv", HEADER + BAG + SORRY)
    second = _written(tmp_path / "b.csv", HEADER + SORRY.replace(",2,,1", ",2,,0"))
    with pytest.raises(ContractError, match=r"b\.csv: row 2, column 'explorations': got '0', but row 3 of "
                                            r".*a\.csv labels the same turn '1'"):
        read_labelled_text([first, second])


def test_a_label_file_given_twice_counts_each_turn_once(tmp_path):
    # Twice the rows would weigh the file double and put copies of one turn in both the train and the test split.
    path = _written(tmp_path / "to_label.csv", HEADER + BAG + SORRY + BAG)
    labelled = read_labelled_text([path, path])
    assert labelled.sentiment.to_dict("records") == [{"text": "my bag is lost", "label": "negative"}]
    assert labelled.empathy["response"].tolist() == ["so sorry"]


def test_a_labels_file_that_is_not_one_is_refused_as_a_label_file(tmp_path):
    from carelens.inference.cli import app
    path = _written(tmp_path / "to_label.csv", HEADER.replace(",", ";") + BAG.replace(",", ";"))
    result = CliRunner().invoke(app, ["train", "transcripts", "--labels", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "label files from `carelens label suggest` need speaker" in result.output
    assert "airline" not in result.output


@pytest.mark.parametrize("out", ["folder", "to_label.parquet"])
def test_label_suggest_refuses_an_out_it_cannot_write_as_a_label_file_before_any_work(tmp_path, out):
    from carelens.inference.cli import app
    (tmp_path / "folder").mkdir()
    result = CliRunner().invoke(app, ["label", "suggest", "--transcripts", str(tmp_path / "none.jsonl"),
                                      "--registry", str(tmp_path / "no-registry"), "--out", str(tmp_path / out)])
    assert result.exit_code == 2, result.output
    assert f"--out {tmp_path / out}" in result.output


def test_label_suggest_makes_the_folder_its_out_goes_in(tmp_path):
    from carelens.data.synthetic import generate, write_synthetic
    from carelens.inference.cli import app
    from carelens.models.transcript import TranscriptModel, publish
    from tiny_encoder import tiny_encoder
    publish(TranscriptModel.from_encoder(tiny_encoder(tmp_path / "encoder"), max_length=32), tmp_path / "registry",
            {"note": "untrained heads, for tests"})
    write_synthetic(generate(10, seed=3), tmp_path / "day")
    out = tmp_path / "new" / "to_label.csv"
    result = CliRunner().invoke(app, ["label", "suggest", "--transcripts", str(tmp_path / "day" / "transcripts.jsonl"),
                                      "--registry", str(tmp_path / "registry"), "--out", str(out), "--n", "4"])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == 4 and len(read_suggested(out)[0]) == 0


@pytest.fixture
def no_starter(monkeypatch):
    """The starter fetches its sources and trains for minutes: a test that gets that far fails at once instead."""
    def trained(*_, **__):
        raise AssertionError("the starter was built before its options were checked")
    monkeypatch.setattr("carelens.training.starter.build_starter", trained)


@pytest.mark.parametrize("command", [["train", "transcripts", "--labels", "LABELS"], ["train", "starter"],
                                     ["train", "churn", "--data", "LABELS"]])
@pytest.mark.parametrize("option", ["--out", "--runs"])
def test_a_training_destination_that_is_a_file_is_refused_before_training(tmp_path, no_starter, command, option):
    # Checked after training, the model would be lost (--out) or a published run would end in a traceback (--runs).
    from carelens.inference.cli import app
    labels = _written(tmp_path / "to_label.csv", HEADER + BAG + SORRY)
    taken = _written(tmp_path / "taken", "mine")
    places = {"--out": str(tmp_path / "registry"), "--runs": str(tmp_path / "runs"), option: str(taken)}
    argv = [str(labels) if a == "LABELS" else a for a in command]
    result = CliRunner().invoke(app, [*argv, "--out", places["--out"], "--runs", places["--runs"]])
    assert result.exit_code == 2, result.output
    assert f"{option} {taken}: is a file; expected a folder" in result.output
    assert taken.read_text() == "mine"


SEEDED = [["generate", "-n", "3"], ["train", "churn", "--data", "LABELS"], ["train", "transcripts", "--labels", "LABELS"],
          ["train", "starter"], ["label", "suggest", "--transcripts", "LABELS"]]
THREADED = [["train", "transcripts", "--labels", "LABELS"], ["train", "starter"]]


@pytest.mark.parametrize("command, setting", [
    *[(command, ["--seed", seed]) for command in SEEDED for seed in ("-1", str(2 ** 32))],
    *[(command, ["--threads", "0"]) for command in THREADED],
    (["train", "transcripts", "--labels", "LABELS"], ["--batch-size", "0"]),
])
def test_a_seed_or_size_no_library_takes_is_a_usage_error_before_any_work(tmp_path, no_starter, command, setting):
    # A seed past NumPy's 32-bit random states, or zero threads, failed in a traceback once the data was read.
    from carelens.inference.cli import app
    labels = _written(tmp_path / "to_label.csv", HEADER + BAG + SORRY)
    argv = [str(labels) if a == "LABELS" else a for a in command]
    result = CliRunner().invoke(app, [*argv, *setting, "--out", str(tmp_path / "out.csv")])
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output and setting[0] in result.output
    assert not (tmp_path / "out.csv").exists()
