"""What a model is: tabular churn/retaliation estimators, the transcript transformer and its scoring pipeline, the
artifact registry."""
from carelens.data.lazy import lazy_exports

_EXPORTS = {
    "registry": ("Registry", "Artifact", "RegistryError"),
    "tabular": ("RiskModel", "SchemaError", "load_tabular"),
    "transcript": ("TranscriptModel", "load_transcript_model"),
    "scoring": ("TranscriptPipeline", "ScoringOptions", "load_scoring_pipeline", "score_turns", "transcript_features"),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
