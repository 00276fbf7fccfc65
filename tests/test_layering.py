"""Dependencies point one way: data ← models ← training/inference, and inference reaches training only where it gathers."""
import ast
from pathlib import Path

import pytest

from conftest import REPO

LAYERS = ("data", "models", "training", "inference")
FORBIDDEN = {
    "data": {"models", "training", "inference"},
    "models": {"training", "inference"},
    "training": {"inference"},
    "inference": {"training"},
}
#: The root CLI and the demo gather the training commands beside the inference ones; nothing else in inference may.
GATHERERS = {"inference/cli.py", "inference/demo.py"}


def absolute_module(node: ast.ImportFrom, package: list[str]) -> list[str]:
    """The module an ImportFrom names, with a relative one (`from ..training import x`) resolved against `package`."""
    base = package[:len(package) - node.level + 1] if node.level else []
    return [*base, *(node.module.split(".") if node.module else [])]


def imported_layers(source: str, package: list[str]) -> list[tuple[int, str]]:
    """(line, layer) for every carelens layer the source imports, at module level or inside functions alike."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = absolute_module(node, package)
            # `from carelens import training` names the layer in the imported names, not in the module.
            modules = [[*module, alias.name] for alias in node.names] if module == ["carelens"] else [module]
        else:
            continue
        found += [(node.lineno, m[1]) for m in modules if len(m) > 1 and m[0] == "carelens" and m[1] in LAYERS]
    return found


def forbidden_edges(relative: str, source: str) -> list[str]:
    """'file:line: layer → layer' for each import of `source` (at `relative`, e.g. data/readers.py) the layout forbids."""
    layer, *folders = Path(relative).parent.parts
    forbidden = FORBIDDEN[layer] - ({"training"} if relative in GATHERERS else set())
    return [f"{relative}:{line}: {layer} → {target}"
            for line, target in imported_layers(source, ["carelens", layer, *folders]) if target in forbidden]


def layer_files() -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for layer in LAYERS for p in (REPO / layer).rglob("*.py"))


def test_every_layer_has_modules_to_check():
    files = layer_files()
    assert {f.split("/")[0] for f in files} == set(LAYERS)
    assert "inference/api.py" in files and "models/tabular.py" in files


def test_no_module_imports_a_layer_the_layout_forbids():
    violations = [v for f in layer_files() for v in forbidden_edges(f, (REPO / f).read_text(encoding="utf-8"))]
    assert not violations, "forbidden imports:\n" + "\n".join(violations)


@pytest.mark.parametrize("relative, source, edge", [
    ("models/tabular.py", "def fit():\n    from carelens.training.tabular import TASKS\n", "models/tabular.py:2: models → training"),
    ("data/readers.py", "import carelens.models.registry as r\n", "data/readers.py:1: data → models"),
    ("data/readers.py", "from carelens import inference\n", "data/readers.py:1: data → inference"),
    ("training/tabular.py", "from ..inference import api\n", "training/tabular.py:1: training → inference"),
    ("inference/score.py", "x = 1\nfrom carelens.training.cli import train_app\n", "inference/score.py:2: inference → training"),
])
def test_the_checker_names_a_forbidden_edge(relative, source, edge):
    assert forbidden_edges(relative, source) == [edge]


@pytest.mark.parametrize("relative, source", [
    ("inference/cli.py", "from carelens.training.cli import train_app\n"),
    ("inference/demo.py", "def demo():\n    from carelens.training.tabular import TASKS\n"),
    ("training/cli.py", "from carelens.models.registry import Registry\nfrom carelens.data.terminal import console\n"),
    ("inference/api.py", "from . import reasons\nfrom carelens.inference.reasons import pushes\n"),
    ("data/readers.py", "from carelens.data.contracts import INTERACTIONS\nimport carelens\n"),
])
def test_the_checker_lets_allowed_edges_pass(relative, source):
    assert forbidden_edges(relative, source) == []
