"""The package's layout holds (STYLE, Layout): a small root, one home per name, a pure core, a light training
package, and a one-line docstring on every package saying what lives there."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "babylon_assets"
# Modules whose name may repeat the domain they adapt, as Dagster projects name them (assets/windows.py beside
# resources/store.py beside db/store.py).
ADAPTER_FOLDERS = {"assets", "resources"}
# What core/ may import: the standard library, pydantic, and itself.
CORE_MAY_IMPORT = {"pydantic", "babylon_assets"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def test_the_package_root_holds_at_most_eight_modules():
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root_modules) <= 8, root_modules


def test_no_name_stands_at_two_layers():
    homes: dict[str, list[str]] = defaultdict(list)
    for path in _modules():
        relative = path.relative_to(PACKAGE)
        if path.name != "__init__.py":
            homes[path.stem].append(str(relative))
    for folder in PACKAGE.iterdir():
        if folder.is_dir() and (folder / "__init__.py").exists():
            homes[folder.name].append(f"{folder.name}/")
    clashes = {}
    for name, places in homes.items():
        adapters = [place for place in places if "/" in place and place.split("/")[0] in ADAPTER_FOLDERS]
        others = [place for place in places if place not in adapters]
        # A rule in core/ never shares its name with its driver, an asset module included.
        if len(others) > 1 or (adapters and any(place.startswith("core/") for place in others)):
            clashes[name] = places
    assert not clashes, f"one name, several homes: {clashes}"


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
            if node.module.startswith("babylon_assets.") and not node.module.startswith("babylon_assets.core"):
                roots.add(node.module)
    return roots


def test_core_imports_only_the_standard_library_pydantic_and_itself():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    offenders = {}
    for path in sorted((PACKAGE / "core").glob("*.py")):
        outside = {root for root in _imported_roots(path) if root not in stdlib and root not in CORE_MAY_IMPORT}
        if outside:
            offenders[path.name] = sorted(outside)
    assert not offenders, f"core/ must stay pure: {offenders}"


def test_the_training_step_imports_nothing_of_the_platform():
    probe = (
        "import sys, babylon_assets.training.grpo, babylon_assets.training.base_models; "
        "print(','.join(sorted(m for m in ('dagster', 'sqlalchemy', 'art', 'litellm', 'wandb', 'aiohttp') "
        "if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "", f"bench/train_step.py would need: {result.stdout.strip()}"


def test_every_package_says_what_lives_there():
    missing = []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        if "migrations" in init.parts:
            continue
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        if not docstring or len(docstring.splitlines()) > 2:
            missing.append(str(init.relative_to(PACKAGE)))
    assert not missing, f"a one-line docstring (what lives here, what it may import) is missing in {missing}"
