"""Dependencies point one way: data ← models ← training/inference, inference reaches training only where it gathers, and no
module of a layer imports back, through the layer's other modules, a module that imports it."""
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


def module_name(relative: str) -> str:
    """carelens.layer.module for a file path (a package's `__init__.py` is the package)."""
    parts = list(Path(relative).with_suffix("").parts)
    return ".".join(["carelens", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def imported_modules(relative: str, source: str, known: set[str]) -> set[str]:
    """The known carelens modules the source imports, at module level or inside functions alike; `from p import m`
    names the module p.m where that is one, else p."""
    package = module_name(relative).split(".")
    package = package if relative.endswith("__init__.py") else package[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = ".".join(absolute_module(node, package))
            found |= {f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module for alias in node.names}
    return found & known


def cycles_inside_layers(sources: dict[str, str]) -> list[str]:
    """'a -> b -> a' for each import cycle among the modules of one layer (`sources`: relative path → text)."""
    known = {module_name(relative): relative for relative in sources}
    graph = {}
    for module, relative in known.items():
        layer = module.split(".")[1]
        graph[module] = sorted(m for m in imported_modules(relative, sources[relative], set(known))
                               if m != module and m.split(".")[1] == layer)
    cycles, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in graph[module]:
            if state.get(target) == "open":
                cycles.append(" -> ".join([*stack[stack.index(target):], target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


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


def test_no_import_cycle_inside_a_layer():
    cycles = cycles_inside_layers({f: (REPO / f).read_text(encoding="utf-8") for f in layer_files()})
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("sources, cycles", [
    ({"inference/batch.py": "from carelens.inference.engines import local\n",
      "inference/engines/__init__.py": "", "inference/engines/local.py": "def run():\n    from ..batch import plan\n"},
     ["carelens.inference.batch -> carelens.inference.engines.local -> carelens.inference.batch"]),
    ({"inference/api.py": "from . import reasons\n", "inference/reasons.py": "import carelens.inference.api\n"},
     ["carelens.inference.api -> carelens.inference.reasons -> carelens.inference.api"]),
    ({"models/a.py": "from carelens.models import b\n", "models/b.py": "from carelens.models.c import x\n",
      "models/c.py": "def f():\n    from .a import y\n"},
     ["carelens.models.a -> carelens.models.b -> carelens.models.c -> carelens.models.a"]),
])
def test_the_checker_names_a_planted_cycle_inside_a_layer(sources, cycles):
    assert cycles_inside_layers(sources) == cycles


@pytest.mark.parametrize("sources", [
    {"inference/api.py": "from . import reasons\n", "inference/reasons.py": "from carelens.models import tabular\n",
     "models/tabular.py": "from carelens.data import contracts\n", "data/contracts.py": ""},
    {"models/a.py": "from carelens.models.b import x\n", "models/b.py": "from carelens.data.a import y\n",
     "data/a.py": ""},
])
def test_the_checker_finds_no_cycle_where_imports_point_one_way(sources):
    assert cycles_inside_layers(sources) == []


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
