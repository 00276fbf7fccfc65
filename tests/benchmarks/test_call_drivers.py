"""Call drivers, measured: on generated data whose every conversation records why the customer came (its issue or
request), the adjusted Rand index of the drivers fitted on one history and assigned on an unseen day; on real text,
the drivers found in 3,000 airline tweets and how the ABCD sample's chats are assigned. Needs a registry with a
trained transcript model (CARELENS_REGISTRY; `make demo` builds one) and, for the real text, ../shared/data."""
import os

import pandas as pd
import pytest
from conftest import requires_shared
from harness import record
from sklearn.metrics import adjusted_rand_score

from carelens.data import synthetic_phrases as phrases
from carelens.data.adapters import read_conversations
from carelens.data.synthetic import generate
from carelens.models.scoring import as_conversations, load_scoring_pipeline
from carelens.training.drivers import fit_drivers, opening_turns

HISTORY, HISTORY_SEED, DAY, DAY_SEED = 6_000, 31, 3_000, 32  # not training seeds of the demo
TWEETS, TWEET_SEED = 3_000, 0


@pytest.fixture(scope="module")
def pipeline():
    registry = os.environ.get("CARELENS_REGISTRY")
    if not registry:
        pytest.skip("set CARELENS_REGISTRY to a registry with a trained transcript model (`make demo` builds one)")
    return load_scoring_pipeline(registry)


def _product_or_request(text: str, reason: str) -> str:
    """What the encoder groups a generated opening by: the product of a problem, the request of a routine contact."""
    return next((p for p in phrases.PRODUCTS if p in text), "?") if reason in phrases.ISSUES else reason


@pytest.mark.slow
def test_drivers_recover_the_generated_contact_reasons(pipeline):
    scoring, metadata = pipeline
    history = as_conversations(generate(HISTORY, seed=HISTORY_SEED).conversations)
    model, found = fit_drivers(scoring, history, metadata["version"])
    day = generate(DAY, seed=DAY_SEED).conversations
    openings = opening_turns(as_conversations(day))
    assigned = model.named(scoring.encode([text for _, text in openings]))
    reasons = [day[position]["contact_reason"] for position, _ in openings]
    products = [_product_or_request(text, reason) for (_, text), reason in zip(openings, reasons)]
    rows = [{"truth": "issue or request (28 kinds)", "ari": round(adjusted_rand_score(reasons, assigned), 3)},
            {"truth": "product of a problem, or request (30 kinds)",
             "ari": round(adjusted_rand_score(products, assigned), 3)}]
    record("call_drivers_generated", {"history": HISTORY, "history_seed": HISTORY_SEED, "day": DAY,
                                      "day_seed": DAY_SEED, "drivers": found["drivers"],
                                      "transcript_model": metadata["version"]}, rows, names=model.names)
    assert rows[0]["ari"] >= 0.7


@pytest.mark.slow
@requires_shared
def test_drivers_of_real_text(pipeline, shared_data):
    scoring, metadata = pipeline
    tweets = pd.read_csv(shared_data / "sentiment" / "airline_tweets_train.csv")["text"].drop_duplicates()
    sample = tweets.sample(TWEETS, random_state=TWEET_SEED).tolist()
    conversations = as_conversations([{"conversation_id": f"T{i}", "customer_id": f"T{i}",
                                       "turns": [{"speaker": "customer", "text": text}]}
                                      for i, text in enumerate(sample)])
    model, found = fit_drivers(scoring, conversations, metadata["version"])
    chats = read_conversations(shared_data / "transcripts" / "abcd_sample.json")
    chat_openings = opening_turns(chats)
    assigned = model.named(scoring.encode([text for _, text in chat_openings]))
    rows = [{"driver": name, "share": share} for name, share in zip(model.names, model.training_share)]
    record("call_drivers_real_text", {"tweets": TWEETS, "seed": TWEET_SEED, "drivers": found["drivers"],
                                      "transcript_model": metadata["version"]}, rows,
           abcd=[{"opening": text[:80], "driver": driver} for (_, text), driver in zip(chat_openings, assigned)])
    assert 4 <= found["drivers"] <= 40 and len(assigned) == len(chats)
