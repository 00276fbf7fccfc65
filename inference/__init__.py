"""How a model is used: the Python API, the batch scorer, its engines, the HTTP service and the CLI."""
