"""The names the tabular models are published under, trained by and scored as."""

TABULAR_MODELS = ("churn", "retaliation")
