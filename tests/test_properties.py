"""Property tests: every reader, the Scorer and the batch path under hostile input give a result that satisfies the
contract or the toolkit's own error naming the file, record and field; never a library's exception, never a silent
drop. `CARELENS_FUZZ_EXAMPLES` sets the examples per property (`make fuzz`: 10,000)."""
import json
import math
import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carelens.data.adapters import read_abcd, read_airline_tweets, read_epitome
from carelens.data.contracts import INTERACTIONS, LABELS, RETALIATION_TYPES, SPEAKERS, TableContract
from carelens.data.errors import CareLensError
from carelens.data.readers import read_interactions, read_labels, read_transcripts
from carelens.data.synthetic import generate
from carelens.inference.nightly.features import score_unit
from carelens.inference.nightly.layout import DEAD_LETTER
from carelens.inference.nightly.predictions import predicted_chunk
from carelens.inference.nightly.run import score_batch
from carelens.inference.nightly.units import planned_file, table_chunks

EXAMPLES = int(os.environ.get("CARELENS_FUZZ_EXAMPLES", 20))
fuzz = settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])

# Any code point, lone surrogates included (hypothesis leaves them out of text by default).
ANY_CHARACTER = st.characters(exclude_categories=())
NASTY_STRINGS = st.sampled_from([
    "", " ", "\x00", "a\x00b", "\u202eevil", "שלום", "😀👍🏽", "\ud800", "x\udfffy", "NaN", "nan", "inf", "-inf",
    "1e400", "-0", "1e308", "9" * 40, "99999-01-01", "1677-09-21", "2262-04-12T00:00:00", "0000-00-00", "true",
    "yes", "none", "null", "[]", "{}", "\r\n", "\t", "x" * 1_000_000,
])
TEXT = st.one_of(st.text(ANY_CHARACTER, max_size=20), NASTY_STRINGS)
NUMBERS = st.one_of(st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True, allow_infinity=True))
CELLS = st.one_of(TEXT, NUMBERS, st.booleans(), st.none(), st.binary(max_size=6),
                  st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
                  st.datetimes().map(lambda d: d.isoformat()))
JSON = st.recursive(st.one_of(st.none(), st.booleans(), NUMBERS, TEXT),
                    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
                    max_leaves=8)


def base_interactions() -> pd.DataFrame:
    day = generate(4, seed=5)
    return day.interactions.head(4).astype(object).reset_index(drop=True)


@st.composite
def hostile_tables(draw, base: pd.DataFrame) -> pd.DataFrame:
    """A valid table with some cells replaced by hostile values, and perhaps a column dropped, added or repeated,
    or a row repeated."""
    frame = base.copy()
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(list(frame.columns)))
        values = frame[name].tolist()
        values[draw(st.integers(0, len(frame) - 1))] = draw(CELLS)
        frame[name] = pd.Series(values, index=frame.index, dtype=object)
    change = draw(st.sampled_from(["none", "drop", "extra", "repeat column", "repeat row"]))
    column = draw(st.sampled_from(list(frame.columns)))
    if change == "drop":
        frame = frame.drop(columns=[column])
    elif change == "extra":
        frame[draw(st.text(min_size=1, max_size=8))] = pd.Series([draw(CELLS)] * len(frame), dtype=object)
    elif change == "repeat column":
        frame = pd.concat([frame, frame[[column]]], axis=1)
    elif change == "repeat row":
        frame = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    return frame


def arrow_column(values: list) -> pa.Array:
    """A Parquet-writable column for any values: as they are, else as text, else as raw bytes (not UTF-8 when the
    text held lone surrogates)."""
    for attempt in (lambda: pa.array(values, from_pandas=True), lambda: pa.array([None if v is None else str(v)
                                                                                  for v in values])):
        try:
            column = attempt()
        except (pa.ArrowException, ValueError, TypeError, OverflowError, UnicodeEncodeError):
            continue
        if not (pa.types.is_struct(column.type) and column.type.num_fields == 0):  # Parquet cannot store those
            return column
    return pa.array([None if v is None else str(v).encode("utf-8", "surrogatepass") for v in values], pa.binary())


def written(frame: pd.DataFrame, path, kind: str):
    """The frame as a CSV (text, as any tool would write it) or a Parquet file (typed where the values allow)."""
    if kind == "csv":
        # Lines end in CRLF, as RFC 4180 and spreadsheets write them: the writer then quotes a field holding a bare
        # carriage return (a generated column name "\ryI"), which it leaves bare with "\n" endings, and every reader
        # takes a bare one for the end of a line, so the file would hold one row more than the frame.
        text = frame.to_csv(index=False, lineterminator="\r\n")
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    else:
        columns = [arrow_column(frame.iloc[:, i].tolist()) for i in range(frame.shape[1])]
        pq.write_table(pa.Table.from_arrays(columns, names=[str(c) for c in frame.columns]), path)
    return path


def assert_own_error(exc: BaseException, source: str) -> None:
    """The toolkit's error, naming the source and, for a record, the record and field."""
    assert isinstance(exc, CareLensError), f"{type(exc).__name__} escaped: {exc}"
    message = str(exc)
    assert message.startswith(source), message
    if getattr(exc, "row", None) is not None:
        assert re.search(r"(row|line|entry) \d+", message), message


def assert_satisfies(frame: pd.DataFrame, contract: TableContract) -> None:
    """Every contract column typed, present where required, finite and within bounds, ids unique."""
    for column in contract.columns:
        if column.optional and column.name not in frame.columns:
            continue
        values = frame[column.name]
        assert column.nullable or values.notna().all(), column.name
        present = values.dropna()
        if column.kind in ("int", "float"):
            numbers = present.astype(float)
            assert np.isfinite(numbers).all(), column.name
            assert column.minimum is None or (numbers >= column.minimum).all(), column.name
            assert column.maximum is None or (numbers <= column.maximum).all(), column.name
        if column.allowed:
            assert present.isin(column.allowed).all(), column.name
        if column.kind == "id":
            assert all(isinstance(v, str) and v.strip() for v in present), column.name
    assert frame[contract.unique].is_unique


def reads(reader, path, contract=None):
    """The reader's result, checked against the contract; or its own error, checked to name the file."""
    try:
        result = reader(path)
    except Exception as exc:  # noqa: BLE001 - the property is about which exceptions escape
        assert_own_error(exc, str(path))
        return None
    if contract is not None:
        assert_satisfies(result, contract)
    return result


BASE = base_interactions()


@fuzz
@given(frame=hostile_tables(BASE), kind=st.sampled_from(["csv", "parquet"]))
def test_property_interactions_reader(tmp_path_factory, frame, kind):
    path = written(frame, tmp_path_factory.mktemp("i") / f"interactions.{kind}", kind)
    reads(read_interactions, path, INTERACTIONS)


LABEL_BASE = pd.DataFrame({"contact_id": ["k1", "k2", "k3"], "churned": [0, 1, 0],
                           "retaliation": list(RETALIATION_TYPES[:3])}, dtype=object)


@fuzz
@given(frame=hostile_tables(LABEL_BASE), kind=st.sampled_from(["csv", "parquet"]))
def test_property_labels_reader(tmp_path_factory, frame, kind):
    path = written(frame, tmp_path_factory.mktemp("l") / f"labels.{kind}", kind)
    reads(read_labels, path, LABELS)


def valid_conversation(index: int) -> dict:
    return {"conversation_id": f"v{index}", "customer_id": f"c{index}", "contact_id": f"k{index}",
            "started_at": "2026-11-22T09:30:00", "turns": [{"speaker": "customer", "text": "my bag is lost"},
                                                           {"speaker": "agent", "text": "sorry to hear that"}]}


@st.composite
def hostile_records(draw) -> object:
    """A conversation with a hostile value somewhere in it, or any JSON value at all."""
    if draw(st.booleans()):
        return draw(JSON)
    record = valid_conversation(draw(st.integers(0, 3)))
    target = draw(st.sampled_from(["conversation_id", "customer_id", "contact_id", "started_at", "channel", "turns",
                                   "speaker", "text", "start_s", "end_s", "extra"]))
    value = draw(st.one_of(JSON, CELLS.filter(lambda v: not isinstance(v, bytes))))
    if target in ("speaker", "text", "start_s", "end_s"):
        record["turns"][draw(st.integers(0, 1))][target] = value
    else:
        record[target] = value
    return record


def json_line(record: object) -> str:
    """A record as one line of JSON, as a careless writer might produce it (NaN literals, lone surrogates escaped)."""
    return json.dumps(record, ensure_ascii=True, allow_nan=True, default=str)


@fuzz
@given(records=st.lists(hostile_records(), min_size=1, max_size=4), junk=st.sampled_from(["", "{", "\x00", "[1,"]))
def test_property_transcripts_jsonl_reader(tmp_path_factory, records, junk):
    path = tmp_path_factory.mktemp("t") / "transcripts.jsonl"
    path.write_text("\n".join(map(json_line, records)) + "\n" + junk + "\n", encoding="utf-8")
    conversations = reads(read_transcripts, path)
    if conversations is not None:
        assert len(conversations) == len(records) + bool(junk.strip())
        assert all(t.speaker in SPEAKERS and math.isfinite(t.start_s if t.start_s is not None else 0)
                   for c in conversations for t in c.turns)


LONG_BASE = pd.DataFrame({"conversation_id": ["a", "a", "b", "b"], "turn_index": [0, 1, 0, 1],
                          "speaker": ["customer", "agent", "customer", "agent"],
                          "text": ["my bag is lost", "sorry", "thanks", "welcome"],
                          "customer_id": ["c1", "c1", "c2", "c2"], "start_s": [0.0, 2.0, 0.0, 1.5]}, dtype=object)


@fuzz
@given(frame=hostile_tables(LONG_BASE))
def test_property_long_form_parquet_reader(tmp_path_factory, frame):
    path = written(frame, tmp_path_factory.mktemp("p") / "long.parquet", "parquet")
    conversations = reads(read_transcripts, path)
    if conversations is not None:
        assert sum(len(c.turns) for c in conversations) == len(frame)


@fuzz
@given(records=st.lists(st.one_of(JSON, st.fixed_dictionaries(
    {"convo_id": st.one_of(st.integers(), TEXT), "original": st.lists(st.one_of(
        st.tuples(st.sampled_from(["agent", "customer", "action", "bot"]), TEXT), JSON), max_size=4)})), max_size=3))
def test_property_abcd_reader(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("a") / "abcd.json"
    path.write_text(json.dumps(records, ensure_ascii=True, default=str), encoding="utf-8")
    conversations = reads(read_abcd, path)
    if conversations is not None:
        assert len(conversations) == len(records)


@fuzz
@given(frame=hostile_tables(pd.DataFrame({"text": ["late again", "thanks!", "ok"],
                                          "label": ["negative", "positive", "neutral"]}, dtype=object)),
       kind=st.sampled_from(["csv", "parquet"]))
def test_property_airline_tweets_reader(tmp_path_factory, frame, kind):
    path = written(frame, tmp_path_factory.mktemp("s") / f"tweets.{kind}", kind)
    tweets = reads(read_airline_tweets, path)
    if tweets is not None:
        assert len(tweets) == len(frame) and tweets["text"].str.strip().str.len().gt(0).all()


@fuzz
@given(frame=hostile_tables(pd.DataFrame({"seeker_post": ["I feel alone", "help"], "response_post": ["I hear you", "ok"],
                                          "level": [2, 0], "sp_id": ["s1", "s2"], "rp_id": ["r1", "r2"]},
                                         dtype=object)))
def test_property_epitome_reader(tmp_path_factory, frame):
    path = written(frame, tmp_path_factory.mktemp("e") / "epitome_interpretations_train.csv", "csv")
    pairs = reads(read_epitome, path)
    if pairs is not None:
        assert len(pairs) == len(frame) and pairs["level"].isin([0, 1, 2]).all()


# -- the Scorer and the batch path --------------------------------------------------------------------------------

@fuzz
@given(frame=hostile_tables(BASE))
def test_property_scorer_predicts_or_names_the_row(scorer, frame):
    records = frame.loc[:, ~frame.columns.duplicated()].to_dict("records")  # a list of dicts cannot repeat a key
    try:
        predicted = scorer.predict(records)
    except Exception as exc:  # noqa: BLE001 - the property is about which exceptions escape
        assert_own_error(exc, "interactions")
        return
    risks = predicted[["churn_risk", "retaliation_risk"]].to_numpy(float)
    assert np.isfinite(risks).all() and ((risks >= 0) & (risks <= 1)).all()
    given = {(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)).strip()  # bytes are read as UTF-8
             for v in (r["customer_id"] for r in records)}
    assert set(predicted["customer_id"]) <= given


@fuzz
@given(records=st.lists(hostile_records(), min_size=1, max_size=3))
def test_property_scorer_scores_transcripts_or_names_the_record(scorer, records):
    try:
        features = scorer.score_transcripts(records)
    except Exception as exc:  # noqa: BLE001
        assert_own_error(exc, "conversations")
        return
    assert len(features) == len(records)


@fuzz
@given(records=st.lists(hostile_records(), min_size=1, max_size=4), table=hostile_tables(BASE),
       kind=st.sampled_from(["csv", "parquet"]), chunk=st.integers(1, 3))
def test_property_batch_units_keep_in_equal_out_plus_dead(scorer, tmp_path_factory, records, table, kind, chunk):
    """The batch path's two scoring steps, unit by unit, with the models loaded once: every record comes out as a
    features or prediction row or as a dead letter with a reason."""
    folder = tmp_path_factory.mktemp("u")
    transcripts = folder / "day.jsonl"
    transcripts.write_text("\n".join(map(json_line, records)) + "\n", encoding="utf-8")
    planned = planned_file(transcripts, 0, chunk)
    scored = [score_unit(scorer.transcripts, unit) for unit in planned.units]
    assert planned.records == len(records) == sum(len(f) + len(d) for f, d in scored)
    assert all(d["reason"] and d["line"] for _, dead in scored for d in dead)
    path = written(table, folder / f"interactions.{kind}", kind)
    numeric, categorical = scorer.extra_columns()
    try:
        for chunk_frame in table_chunks(path, chunk):
            predicted, dead = predicted_chunk(scorer, chunk_frame, str(path), 2, None, numeric, categorical)
            assert len(predicted) + len(dead) == len(chunk_frame)
            assert np.isfinite(predicted[["churn_risk", "retaliation_risk"]].to_numpy(float)).all()
    except Exception as exc:  # noqa: BLE001 - a file rejected whole is named, with the toolkit's error
        assert_own_error(exc, str(path))


@settings(fuzz, max_examples=max(5, EXAMPLES // 50))
@given(records=st.lists(hostile_records(), min_size=1, max_size=4), table=hostile_tables(BASE),
       kind=st.sampled_from(["csv", "parquet"]))
def test_property_batch_run_keeps_in_equal_out_plus_dead(registry_with_models, tmp_path_factory, records, table,
                                                         kind):
    """The whole `score_batch` run (models loaded from the registry each time, so a 50th of the examples): a balanced
    manifest, and one dead-letter line per record that went dead."""
    folder = tmp_path_factory.mktemp("b")
    transcripts = folder / "day.jsonl"
    transcripts.write_text("\n".join(map(json_line, records)) + "\n", encoding="utf-8")
    interactions = written(table, folder / f"interactions.{kind}", kind)
    manifest = score_batch([transcripts], folder / "out", registry_with_models.root, interactions=[interactions],
                           chunk_size=2, show_progress_bar=False)
    counts = manifest["by_input"]
    assert manifest["balanced"] and counts["transcripts"]["in"] == len(records)
    rejected = [r["source"] for r in manifest["rejected_inputs"]]
    assert counts["interactions"]["in"] == (0 if str(interactions) in rejected else len(table))
    dead = (folder / "out" / DEAD_LETTER).read_text(encoding="utf-8").splitlines()
    assert len(dead) == counts["transcripts"]["dead"] + counts["interactions"]["dead"]
    assert all(json.loads(line)["reason"] for line in dead)
