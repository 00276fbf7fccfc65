"""Data contracts, readers, adapters for public formats, and the seed-calibrated synthetic generator."""
import os

from carelens.data.lazy import lazy_exports

# OpenMP threads (scikit-learn's boosting, torch) spin-wait between tasks by default: on 2 cores shared with other work
# that made `carelens train` 9 times slower (18 min 44 s, not done, against 2 min 4 s). Every carelens import passes
# here before OpenMP loads; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {
    "errors": ("CareLensError", "UsageError"),
    "contracts": ("ContractError", "Conversation", "Turn", "Column", "TableContract", "INTERACTIONS", "LABELS",
                  "CHANNELS", "RETALIATION_TYPES", "check_table", "validated"),
    "readers": ("read_table", "read_interactions", "read_labels", "read_transcripts", "write_transcripts"),
    "adapters": ("read_airline_tweets", "read_epitome", "read_abcd"),
    "synthetic": ("GeneratorParams", "SyntheticData", "generate", "write_synthetic", "marginals", "sample_dir"),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
