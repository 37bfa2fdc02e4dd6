"""Data flows one way: lower layers never import higher ones (checked statically on the source)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pladis_analysis"
# Each layer and the package modules it must not import.
FORBIDDEN = {
    "maps": ("attention", "diffusion", "probes", "theory", "models", "plotting", "cli"),
    "attention.py": ("diffusion", "probes", "theory", "models", "plotting", "cli"),
    "diffusion": ("probes", "theory", "models", "plotting", "cli"),
    "probes": ("theory", "models", "plotting", "cli"),
    "theory": ("attention", "diffusion", "probes", "models", "plotting", "cli"),
    "models": ("probes", "theory", "plotting", "cli"),
}


def _imported_package_modules(path: Path) -> set[str]:
    """First component under ``pladis_analysis`` of every import in ``path`` (relative imports resolved)."""
    rel = path.relative_to(PACKAGE).parts
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "pladis_analysis" and len(parts) > 1:
                    names.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb from this file's package
                base = list(rel[:-1])[: len(rel) - node.level]
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    names.add(parts[0])
                else:
                    names.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("pladis_analysis."):
                names.add(node.module.split(".")[1])
            elif node.module == "pladis_analysis":
                names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer):
    target = PACKAGE / layer
    files = [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))
    assert files, f"layer {layer} has no source"
    for path in files:
        bad = _imported_package_modules(path) & set(FORBIDDEN[layer])
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}, a higher layer than {layer}"


def test_reference_is_numpy_only():
    source = (PACKAGE / "maps" / "reference.py").read_text()
    assert "import torch" not in source, "the float64 reference must not depend on the code it checks"
