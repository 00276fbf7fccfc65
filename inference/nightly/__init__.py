"""The nightly job: the day's transcripts and contacts → features → predictions → flagged customers → summary → manifest.

Each stage has its module and runs once, reading the committed output of the one before: `plan` (inputs hashed and
cut into units, model versions resolved) → `features` (the transcript model, unit by unit, on the local or the Ray
engine) → `predictions` (churn and retaliation per contact, chunk by chunk) → `flags` (per customer, reasons for the
flagged only, drift against the training profiles) → `summary` (summary.html) → `manifest` (`_manifest.json`).
`carelens score` runs the first three. The scoring stages commit unit by unit (`storage`: its dead letters first,
then its Parquet part, by rename), so a re-run skips finished units and a killed run never leaves a half-written part;
`flags` and `summary` commit their files atomically and then a marker under `_stages/`, so a run killed anywhere
finishes, when run again, with the same outputs.
"""
from carelens.data.lazy import lazy_exports

_EXPORTS = {
    "run": ("run_nightly", "score_batch"),
    "storage": ("read_parts",),
    "layout": ("RunConflict",),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
