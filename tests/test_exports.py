"""Each layer package names its public API in `__all__`, resolved on first use so that importing it stays light."""
import importlib
import pkgutil
import subprocess
import sys

import pytest

PACKAGES = ("carelens.data", "carelens.models", "carelens.training", "carelens.inference")
HEAVY = ("torch", "transformers", "ray")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves_and_is_listed(package):
    module = importlib.import_module(package)
    assert module.__all__ and len(set(module.__all__)) == len(module.__all__)
    unresolved = [name for name in module.__all__ if not hasattr(module, name)]
    assert not unresolved, f"{package}: {', '.join(unresolved)} do not resolve"
    assert set(module.__all__) <= set(dir(module))


@pytest.mark.parametrize("package", PACKAGES)
def test_no_public_name_is_also_a_submodule(package):
    # Importing a submodule sets the package attribute of its name, which would replace a public name.
    module = importlib.import_module(package)
    submodules = {info.name for info in pkgutil.iter_modules(module.__path__)}
    assert not submodules & set(module.__all__)


def test_names_are_the_objects_their_modules_define():
    from carelens.data import ContractError, generate
    from carelens.inference import Scorer, score_batch
    from carelens.models import Registry
    from carelens.training import TASKS
    assert ContractError is importlib.import_module("carelens.data.contracts").ContractError
    assert generate is importlib.import_module("carelens.data.synthetic").generate
    assert Scorer is importlib.import_module("carelens.inference.api").Scorer
    assert score_batch is importlib.import_module("carelens.inference.nightly.run").score_batch
    assert Registry is importlib.import_module("carelens.models.registry").Registry
    assert TASKS is importlib.import_module("carelens.training.tabular").TASKS


def test_an_unknown_name_is_an_attribute_error():
    import carelens.inference
    with pytest.raises(AttributeError, match="'carelens.inference' has no attribute 'Scorers'"):
        carelens.inference.Scorers


def test_importing_the_packages_and_the_cli_loads_no_heavy_library():
    code = (f"import sys; import {', '.join(PACKAGES)}, carelens.inference.cli; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_carelens_version_prints_the_installed_package_and_exits():
    from importlib.metadata import version

    from typer.testing import CliRunner

    from carelens.inference.cli import app
    result = CliRunner().invoke(app, ["--version"])
    assert (result.exit_code, result.output) == (0, f"carelens {version('carelens')}\n")
    assert "--version" in CliRunner().invoke(app, ["--help"]).output
