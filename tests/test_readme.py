"""The README's Python example runs as written and does what its comments say."""
import re

from carelens.inference.selection import ACTIONS, CHURN_ONLY_ACTION
from conftest import REPO


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_python_blocks()[0], "README.md", "exec"), namespace)
    predicted, flagged = namespace["predicted"], namespace["flagged"]
    assert predicted["customer_id"].is_unique and len(predicted) == 500
    assert predicted["churn_risk"].between(0, 1).all() and predicted["retaliation_risk"].between(0, 1).all()
    assert len(flagged) == 20 and flagged["risk"].is_monotonic_decreasing
    assert flagged["risk"].iloc[-1] >= predicted[["churn_risk", "retaliation_risk"]].max(axis=1).nlargest(20).min()
    assert flagged["action"].isin([*ACTIONS.values(), CHURN_ONLY_ACTION]).all()
    assert flagged["reasons"].map(len).between(1, 3).all()
    assert namespace["scorer"].versions == {"churn": "v1", "retaliation": "v1"}
