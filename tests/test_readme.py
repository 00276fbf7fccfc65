"""The README's Python example runs as written and does what its comments say."""
import re

import numpy as np

from conftest import REPO


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_python_blocks()[0], "README.md", "exec"), namespace)
    day, model = namespace["day"], namespace["model"]
    assert len(day) == 500
    assert day["churn_risk"].between(0, 1).all()
    assert np.array_equal(day["flag"].to_numpy(), day["churn_risk"].to_numpy() >= model.threshold_)
    assert namespace["metadata"]["version"] == "v1"
