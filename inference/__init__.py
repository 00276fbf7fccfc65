"""How a model is used: the Python API, the batch scorer, its engines, the HTTP service and the CLI."""
from carelens.data.lazy import lazy_exports

_EXPORTS = {
    "api": ("Scorer", "FlagCall"),
    "selection": ("per_customer",),
    "nightly": ("run_nightly", "score_batch", "read_parts", "RunConflict"),
    "predict": ("predict_table",),
    "service": ("create_app", "ServiceSettings"),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
