"""How a model is made: training entry points, evaluation and reports."""
