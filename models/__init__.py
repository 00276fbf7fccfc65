"""What a model is: tabular churn/retaliation estimators, the transcript transformer, the artifact registry."""
