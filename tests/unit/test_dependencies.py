"""Every package that dray_broker and dray_pipelines import is the standard library, the project's own, or a
dependency that pyproject.toml declares: an import that only works because another dependency happens to pull the
package in breaks the day that one stops."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OWN = {"dray_broker", "dray_pipelines"}


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def declared_distributions() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_normalized(re.split(r"[\s\[<>=~!;]", dependency, maxsplit=1)[0]) for dependency in project["dependencies"]}


def imported_modules() -> dict[str, set[str]]:
    """Top-level module -> the files that import it (imports inside functions too; relative ones are the project's)."""
    found: dict[str, set[str]] = {}
    for package in sorted(OWN):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared():
    declared = declared_distributions()
    distributions = packages_distributions()
    imported = imported_modules()
    assert {"kio", "aiohttp", "botocore", "pyiceberg", "dagster"} <= set(imported)  # the scan sees imports
    undeclared = {}
    for module, files in sorted(imported.items()):
        if module in OWN or module in sys.stdlib_module_names:
            continue
        providers = {_normalized(d) for d in distributions.get(module, [])}
        if not providers & declared:
            undeclared[module] = (sorted(providers) or ["(no installed distribution)"], sorted(files)[:3])
    assert not undeclared, "imported but not declared in pyproject.toml [project] dependencies: " + "; ".join(
        f"{module} (from {', '.join(dists)}; imported by {', '.join(files)})"
        for module, (dists, files) in undeclared.items())
