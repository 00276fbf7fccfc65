"""The README: its Python example runs as written and does what its comments say; its layout table matches the tree."""
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


def test_the_layout_table_names_every_module_of_each_layer():
    """The README's layout table matches the tree: each module of a layer is named in that layer's row, and each
    module a row names exists."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for layer in ("data", "models", "training", "inference"):
        [row] = re.findall(rf"^\| `{layer}/` \|.*$", readme, re.M)
        named = set(re.findall(r"`([\w/]+\.py)`", row))
        folders = set(re.findall(r"`(\w+)/`", row)) - {layer}
        modules = {p.relative_to(REPO / layer) for p in (REPO / layer).rglob("*.py") if p.name != "__init__.py"}
        unnamed = [str(m) for m in modules if m.name not in named and str(m) not in named
                   and not (len(m.parts) > 1 and m.parts[0] in folders)]
        absent = [n for n in named if not any(str(m).endswith(n) for m in modules)]
        assert (unnamed, absent) == ([], []), layer
