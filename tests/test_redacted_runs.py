"""`--redact` / `redact=True`: personal data masked before scoring and absent from every output file of a run."""
import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from carelens.data.readers import write_transcripts
from carelens.data.redaction import redacted_conversation
from carelens.inference.api import Scorer
from carelens.inference.cli import app
from carelens.models.scoring import as_conversations

EMAIL, PHONE, CARD, ORDER = "jane.doe+air@example.co.uk", "(977) 625-2661", "4111 1111 1111 1111", "3348917502"
SECRETS = (EMAIL, PHONE, CARD, ORDER, "4111111111111111", "977-625-2661", "9776252661")


def leaky_conversations(day) -> list[dict]:
    """The day's conversations with personal data in their text, plus a broken record carrying it too."""
    records = [c.model_dump(exclude_none=True) if hasattr(c, "model_dump") else dict(c) for c in day.conversations]
    for record in records[:10]:
        record["turns"][0]["text"] = (f"my email is {EMAIL}, call me on {PHONE}, card {CARD}, order {ORDER}")
    broken = {"conversation_id": "broken", "customer_id": "c", "turns": [{"speaker": "bot", "text": f"mail {EMAIL}"}]}
    return records + [broken]


def file_texts(folder) -> dict[str, str]:
    """Every file under a run folder as text: Parquet parts as their rows and metadata, the rest as decoded bytes."""
    texts = {}
    for path in folder.rglob("*"):
        if path.is_file():
            texts[str(path)] = (pq.read_table(path).to_pandas().to_json() + str(pq.read_metadata(path).metadata)
                                if path.suffix == ".parquet" else path.read_bytes().decode("utf-8", "replace"))
    return texts


@pytest.mark.parametrize("redact", [True, False])
def test_no_personal_value_survives_in_any_output_of_a_redacted_nightly_run(registry_with_models, tmp_path, redact):
    day = registry_with_models.day
    transcripts = write_transcripts(leaky_conversations(day), tmp_path / "transcripts.jsonl")
    out = tmp_path / "tonight"
    result = CliRunner().invoke(app, ["nightly", "--transcripts", str(transcripts), "--interactions",
                                      str(registry_with_models.day_dir / "interactions.parquet"), "--out", str(out),
                                      "--registry", str(registry_with_models.root), "--no-progress",
                                      *(["--redact"] if redact else [])])
    assert result.exit_code == 0, result.output
    leaks = {path: [s for s in SECRETS if s in text] for path, text in file_texts(out).items()}
    leaks = {path: found for path, found in leaks.items() if found}
    if redact:
        assert not leaks and EMAIL not in result.output
        dead = [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]
        assert [d["line"] for d in dead] == [len(day.conversations) + 1] and "[EMAIL]" in dead[0]["record"]
    else:  # the control: the same run without --redact does carry them, so the scan above can fail
        assert any(path.endswith("dead_letter.jsonl") for path in leaks)


def test_a_redacting_scorer_scores_the_masked_text(registry_with_models):
    conversations = leaky_conversations(registry_with_models.day)[:10]
    plain = Scorer.load(registry_with_models.root)
    masked = Scorer.load(registry_with_models.root, redact=True)
    expected = plain.score_transcripts([redacted_conversation(c) for c in as_conversations(conversations)])
    assert masked.score_transcripts(conversations).equals(expected)
    assert not plain.score_transcripts(conversations).equals(expected)
