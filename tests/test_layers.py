"""The apps' layering (DESIGN.md, "Apps"): every module imports only its own app and the apps below
it; ``core`` imports no app; no app imports ``config`` (except ``config.celery``, the Celery app).

Read from the source with ``ast``, so it sees every import: at module level, inside functions, and
inside ``if TYPE_CHECKING:`` blocks alike (a type-only import still ties an app to the one it names).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Bottom to top: an app may import the apps before it in this list.
LAYERS = ["core", "accounts", "tiers", "usage", "billing", "partners", "simulation"]
APPS = [app for app in LAYERS if (ROOT / app).is_dir()]
CONFIG_ALLOWED = {"config.celery"}


def _imported_modules(tree: ast.AST, *, package: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from tiers import billing` names a module of `tiers`: the top-level name is what counts.
    return found


def layer_violations(app: str) -> list[str]:
    allowed = set(LAYERS[: LAYERS.index(app) + 1])
    problems = []
    for path in sorted((ROOT / app).rglob("*.py")):
        relative = path.relative_to(ROOT)
        package = ".".join(relative.with_suffix("").parts[:-1])
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, module in _imported_modules(tree, package=package):
            top = module.split(".")[0]
            if top == "config" and not any(module == ok or module.startswith(ok + ".") for ok in CONFIG_ALLOWED):
                problems.append(f"{relative}:{line} imports {module} (apps never import config)")
            elif top in LAYERS and top not in allowed:
                problems.append(f"{relative}:{line} imports {module} ({top} is above {app})")
    return problems


@pytest.mark.parametrize("app", APPS)
def test_an_app_imports_only_the_apps_below_it(app):
    assert layer_violations(app) == []


def test_core_imports_no_app():
    assert APPS[0] == "core"
    assert layer_violations("core") == []


def test_the_checker_sees_imports_in_functions_and_type_checking_blocks(tmp_path):
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from billing.models import Invoice\n"
        "def f():\n    from partners import services\n"
        "import config.settings\n"
    )
    modules = [module for _, module in _imported_modules(ast.parse(source), package="tiers")]
    assert {"billing.models", "partners", "config.settings"} <= set(modules)


def test_no_module_in_the_apps_is_over_600_lines():
    long = []
    for app in [*APPS, "config"]:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            lines = len(path.read_text().splitlines())
            if lines > 600:
                long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert long == []
