"""Import an experiment script (they live in experiments/, outside the package) as a module for tests."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name: str) -> ModuleType:
    """``experiments/<name>.py`` as a module, registered in ``sys.modules`` (dataclasses look it up there)."""
    path = EXPERIMENTS / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"no experiment script {str(path)!r}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
