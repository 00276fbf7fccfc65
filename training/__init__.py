"""How a model is made: training entry points, evaluation and reports."""
from carelens.data.lazy import lazy_exports

_EXPORTS = {
    "tabular": ("TASKS", "Task", "LabelledData", "Trained", "load_labelled", "train_tabular", "publish_tabular"),
    "evaluate": ("evaluate_tabular",),
    "transcript_options": ("Options",),
    "transcripts": ("train_transcripts", "publish_trained"),
    "transcript_evaluation": ("evaluate_files",),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
