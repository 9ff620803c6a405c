"""Issue 31: the benchmarks share `benchmarks.common`, never each other's private names; a private name
taken from another module ties that module's insides to a second script that its author can't see."""
from __future__ import annotations

import ast
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _module_name(path: Path) -> str:
    parts = path.relative_to(BENCHMARKS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an `from X import ...` names, relative imports resolved against `module`."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def private_imports(path: Path, text: str | None = None) -> list[str]:
    """`module: name` for each private name (or private module) `path` (or `text` as if at `path`)
    imports from another benchmarks module."""
    module = _module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.ImportFrom):
            source = _imported_from(node, module, path.name == "__init__.py")
            if not source.startswith("benchmarks") or source == module:
                continue
            names = [*source.split(".")[1:], *(alias.name for alias in node.names)]
            found += [f"{module}: {source} {name}" for name in names if name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [f"{module}: {alias.name}" for alias in node.names if alias.name.startswith("benchmarks")
                      and any(part.startswith("_") for part in alias.name.split(".")[1:])]
    return found


def test_no_benchmark_imports_a_private_name_of_another() -> None:
    found = [line for path in sorted(BENCHMARKS.rglob("*.py")) for line in private_imports(path)]
    assert found == []


def test_the_check_sees_a_private_import() -> None:
    """The walk above would pass vacuously if it missed imports: the forms issue 31 found are caught."""
    text = ("from .deploy_integer import _logits\nfrom benchmarks import _results\n"
            "from .. import _machine\nimport benchmarks._jobs\nfrom ..common import report\n")
    found = private_imports(BENCHMARKS / "deploy" / "vit_deploy.py", text)
    assert found == ["benchmarks.deploy.vit_deploy: benchmarks.deploy.deploy_integer _logits",
                     "benchmarks.deploy.vit_deploy: benchmarks _results",
                     "benchmarks.deploy.vit_deploy: benchmarks _machine",
                     "benchmarks.deploy.vit_deploy: benchmarks._jobs"]
