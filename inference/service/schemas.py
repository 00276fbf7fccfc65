"""The request and response bodies, their fields built from the data contracts so the OpenAPI schema documents them."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator

from carelens.data.contracts import INTERACTIONS, Column, Conversation, not_a_bool
from carelens.inference.selection import checked_selection
from carelens.models.conversation_features import FEATURE_COLUMNS
from carelens.models.drift import MIN_DRIFT_ROWS

#: A number JSON can carry back: NaN and infinity are refused (Python's JSON reader takes NaN, Infinity and 1e400), and
#: so are true and false, which pydantic would read as 1 and 0.
Finite = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(not_a_bool)]
#: A whole number, true and false refused.
Whole = Annotated[int, BeforeValidator(not_a_bool)]


def _lowered(value: Any) -> Any:
    """Text trimmed and lower-cased, as the contract reads categories; anything else as given."""
    return value.strip().lower() if isinstance(value, str) else value


def _text_id(value: Any) -> Any:
    """A whole-number identifier as text, as the contract accepts it; anything else as given."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _contract_field(column: Column) -> tuple[Any, Any]:
    """The pydantic type and field of one contract column: required unless nullable, bounded as the contract is."""
    kinds = {"id": Annotated[str, BeforeValidator(_text_id)], "int": Whole, "float": Finite, "bool": bool,
             "datetime": datetime, "category": Annotated[str, BeforeValidator(_lowered)]}
    kind = Annotated[Literal[column.allowed], BeforeValidator(_lowered)] if column.allowed else kinds[column.kind]
    if column.nullable:
        kind = Optional[kind]
    return kind, Field(None if column.nullable else ..., ge=column.minimum, le=column.maximum,
                       description=column.expectation())


# Built from the contract so the OpenAPI schema documents every column; the Scorer still checks the whole table
# (unique contact_id, declared extra features), and extra keys pass through as the contract allows.
InteractionRecord = create_model("InteractionRecord", __config__=ConfigDict(extra="allow"),
                                 __doc__="One contact, in the interactions contract.",
                                 **{column.name: _contract_field(column) for column in INTERACTIONS.columns})

TranscriptFeatures = create_model("TranscriptFeatures",
                                  __doc__="One conversation's ids and transcript features (null: not measurable), its "
                                          "agent, the turns its features stand on and its call driver.",
                                  conversation_id=(str, ...), customer_id=(str, ...), contact_id=(Optional[str], None),
                                  agent_id=(Optional[str], None),
                                  **{name: (Optional[Finite], None) for name in FEATURE_COLUMNS},
                                  evidence=(Optional[str], Field(None, description="JSON: evidence name → {turn, "
                                                                                   "speaker, quote, score}.")),
                                  driver=(Optional[str], None))


class ScoreRequest(BaseModel):
    """Conversations to score, in the transcripts contract."""

    conversations: list[Conversation] = Field(min_length=1)


class ScoreResponse(BaseModel):
    """The transcript features of each conversation, in request order."""

    conversations: list[TranscriptFeatures]


class FlagRequest(BaseModel):
    """A batch of contacts, optionally their transcripts, and which customers to return."""

    interactions: list[InteractionRecord] = Field(min_length=1)
    transcripts: list[Conversation] = Field(default_factory=list, description="Joined to contacts on contact_id.")
    transcript_features: list[TranscriptFeatures] = Field(
        default_factory=list, description="Features already scored (by /v1/score or `carelens score`), instead of "
                                          "transcripts: flagging then needs no encoder pass.")
    capacity: Optional[Whole] = Field(None, ge=0, description="Return the `capacity` riskiest customers (the calls the "
                                                            "centre can make).")
    threshold: Optional[Finite] = Field(None, ge=0, le=1, description="Return customers whose risk >= threshold.")
    strict: bool = Field(False, description="Answer 422 instead of warning when answered contacts have no "
                                            "conversation features.")

    @model_validator(mode="after")
    def _one_selection(self) -> "FlagRequest":
        checked_selection(self.capacity, self.threshold)
        if self.transcripts and self.transcript_features:
            raise ValueError("give transcripts or transcript_features, not both")
        return self


class CitedTurn(BaseModel):
    """The turn of the customer's conversation a reason stands on."""

    reason: str = Field(description="The reason, as in `reasons`.")
    turn: int = Field(description="The turn's index in its conversation, from 0.")
    speaker: Literal["agent", "customer"]
    quote: str = Field(description="The turn's text, on one line, cut to 120 characters (masked when the service "
                                   "redacts).")


class FlaggedCustomer(BaseModel):
    """A customer at risk, with their riskiest contact, why, and what the centre should do."""

    customer_id: str
    churn_risk: float = Field(description="Calibrated probability of churn.")
    retaliation_risk: float = Field(description="Probability of retaliating: 1 - P(none).")
    retaliation_type: str = Field(description="The likeliest retaliation (escalate, switch or vent) when retaliation is "
                                              "flagged; empty otherwise.")
    reasons: list[str] = Field(description="One to three things worse than typical about the contact that raised the "
                                           "risk most, in words; \"no single cause to act on: …\" when none did.")
    action: str
    risk: float = Field(description="The larger of churn_risk and retaliation_risk; customers are sorted by it.")
    contact_id: str
    agent_id: Optional[str] = Field(None, description="Who answered the contact, when the contact or its "
                                                      "conversation names them.")
    evidence: list[CitedTurn] = Field(default_factory=list, description="For each reason that comes from the "
                                                                       "conversation, the turn it stands on.")
    inferred_csat: Optional[float] = Field(None, description="The survey score (1–5) the customer would likely give "
                                                             "the contact (null without a satisfaction model).")


class CoachingExample(BaseModel):
    """One of the agent's own turns that showed a mechanism least."""

    contact_id: str
    turn: int
    score: float = Field(description="The turn's expected level of the mechanism, 0 (none) to 2 (strong).")
    quote: str


class CoachingHint(BaseModel):
    """A mechanism where the agent lies furthest below the centre, with two of their own turns."""

    mechanism: Literal["emotional_reactions", "interpretations", "explorations"]
    agent: float = Field(description="The agent's shrunk mean level, 0–2.")
    centre: float = Field(description="The centre's mean level, 0–2.")
    examples: list[CoachingExample]


class AgentCard(BaseModel):
    """One agent's scorecard over the request's contacts (measures shrunk toward the centre's mean)."""

    model_config = ConfigDict(extra="allow")

    agent_id: str
    contacts: int
    customers: int
    flagged_share: float = Field(description="Share of the agent's customers flagged.")
    empathy: Optional[float] = Field(None, description="Mean empathy 0–1, shrunk toward the centre's; each mechanism "
                                                       "(0–2) and a 90% interval (`_low`, `_high`) follow as extra "
                                                       "fields.")
    empathy_rank: Optional[int] = Field(None, description="1 = most empathic, by the shrunk mean.")
    coaching: str = Field(description="The hints in one line.")
    hints: list[CoachingHint]


class Joins(BaseModel):
    """How the request's conversations met its contacts on contact_id."""

    transcripts: int = Field(description="Conversations read.")
    matched: int = Field(description="Conversations whose contact_id is one of the contacts'.")
    without_contact_id: int
    without_examples: list[str] = Field(description="The first few of those conversations' ids.")
    contact_field: Optional[str] = Field(description="The field contact_id was read from, when no record had it.")
    dropped_contact: int = Field(description="Conversations whose contact was dropped (batch runs only).")
    dropped_examples: list[str]
    unknown_contact_id: int = Field(description="Conversations naming a contact_id the contacts do not have.")
    unknown_examples: list[str] = Field(description="The first few of those contact_ids.")
    contacts: int
    with_conversation: int
    answered_without: int = Field(description="Answered contacts with no conversation: scored without one.")
    abandoned: int


class DriverRow(BaseModel):
    """One call driver among the request's conversations."""

    driver: str = Field(description="Named by its most distinctive terms.")
    contacts: int
    share: float = Field(description="Share of the conversations with a driver.")
    flagged_share: float = Field(description="Share of its customers flagged.")
    mean_risk: float = Field(description="Mean of the larger of churn and retaliation risk.")
    sentiment: Optional[float] = Field(None, description="The customers' mean mood, -1 to 1.")
    training_share: Optional[float] = Field(None, description="Its share of the training period's conversations.")
    grew: Optional[bool] = Field(None, description="Whether its share rose well beyond the training share.")
    inferred_csat: Optional[float] = Field(None, description="Its customers' mean inferred satisfaction, 1–5.")


class ExpectedPerformance(BaseModel):
    """How well one model's flags over the request's contacts are expected to do, estimated from the calibrated risks
    without labels, beside the held-out figures at training."""

    model: str
    flagged: int = Field(description="Contacts the model's own threshold flagged.")
    expected_positives: float = Field(description="The sum of the model's risk over every contact.")
    expected_precision: Optional[float] = Field(description="The mean risk of the flagged contacts (none flagged: "
                                                            "null).")
    expected_recall: Optional[float] = Field(description="The flagged contacts' share of the summed risk.")
    held_out_precision: float = Field(description="Precision on the held-out rows at training, counted on labels.")
    held_out_expected_precision: float = Field(description="The same estimate on the held-out rows' risks.")
    precision_spread: list[float] = Field(description="Where the held-out estimate lands on most batches of this "
                                                      "many flagged contacts: [low, high].")
    held_out_recall: float = Field(description="Recall on the held-out rows at training, counted on labels.")
    held_out_expected_recall: float = Field(description="The same estimate on the held-out rows' risks.")
    recall_spread: list[float] = Field(description="Where the held-out estimate lands on most batches with this many "
                                                   "expected positives: [low, high].")
    within_spread: bool = Field(description="Both estimates within their spread.")


class FlagResponse(BaseModel):
    """Customers at risk, riskiest first, and what the caller should know about how they were scored."""

    customers: list[FlaggedCustomer]
    warnings: list[str] = Field(description="E.g. how many answered contacts had no conversation features.")
    joins: Optional[Joins] = Field(None, description="How the transcripts met the contacts (none given: null).")
    agents: list[AgentCard] = Field(default_factory=list, description="A scorecard per agent the contacts name, most "
                                                                      "empathic first.")
    drivers: list[DriverRow] = Field(default_factory=list, description="The call drivers of the conversations, "
                                                                       "largest first (empty without a drivers model).")
    expected_performance: list[ExpectedPerformance] = Field(
        default_factory=list, description=f"Per model, the expected precision and recall of its flags; empty under "
                                          f"{MIN_DRIFT_ROWS} contacts, or when the models record no held-out figures.")


class RuntimeReport(BaseModel):
    """How the transcript model's encoder runs in this service, and why."""

    runtime: Optional[str] = Field(None, description="onnx or torch.")
    precision: Optional[str] = Field(None, description="fp32, int8, bf16 or fp16.")
    why: str = Field(description="Why this runtime: `auto`'s measurement on this CPU, or the options given.")
    cpu: Optional[str] = Field(None, description="The CPU model `auto` measured on.")
    measured: dict[str, dict] = Field(default_factory=dict, description="Per candidate runtime: turns/s on the probe, "
                                                                        "the largest change of a probability between "
                                                                        "batch sizes, and whether that is within 1e-4.")
    measured_at: Optional[str] = None
    cached: bool = Field(False, description="Whether the choice was remembered from an earlier load on this CPU.")


class Health(BaseModel):
    """The service is up; which model versions it serves, how the transcript model runs, and for how long."""

    status: Literal["ok"]
    models: dict[str, str] = Field(description="Each loaded model's version.")
    runtime: Optional[RuntimeReport] = Field(None, description="How the transcript model runs (none loaded: null).")
    uptime_s: float


class ModelSummary(BaseModel):
    """One loaded model: its version, when it was made, and its headline test-split metrics."""

    name: str
    version: str
    created_at: Optional[str] = None
    metrics: dict[str, Optional[float]] = Field(description="Headline figures on the held-out test split.")


class Models(BaseModel):
    """Every loaded model."""

    models: list[ModelSummary]
