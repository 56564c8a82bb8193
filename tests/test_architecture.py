"""The import layering of ARCHITECTURE.md holds: each unit imports only units of a lower level (lazy imports
inside functions included), so the package has no import cycle."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "factorch"


def declared_levels() -> dict[str, int]:
    """unit -> level, read from the table in ARCHITECTURE.md (so the document and the code cannot drift)."""
    levels = {}
    for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines():
        m = re.match(r"\| (\d+) \| (.+?) \|", line)
        if m:
            for name in re.findall(r"`([a-z_]+)/?`", m.group(2)):
                levels[name] = int(m.group(1))
    return levels


def imports_of(path: Path) -> set[str]:
    """The factorch units a module imports, anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("factorch"):
            parts = node.module.split(".")
            found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("factorch."))
    return found


def unit_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def test_every_unit_has_a_level():
    levels = declared_levels()
    units = {unit_of(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units - set(levels) == set(), "add these to the table in ARCHITECTURE.md"


def test_imports_go_down_the_levels_only():
    levels = declared_levels()
    breaches = []
    for path in PACKAGE.rglob("*.py"):
        src = unit_of(path)
        if src == "__init__":
            continue
        for dst in imports_of(path) - {src}:
            if dst in levels and levels[dst] >= levels[src]:
                breaches.append(
                    f"{path.relative_to(ROOT)} ({src}, level {levels[src]}) imports {dst} (level {levels[dst]})"
                )
    assert not breaches, "\n".join(breaches)


def test_the_checker_sees_a_lazy_upward_import(tmp_path):
    """The check is not vacuous: an import inside a function counts."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from factorch.api import compress\n    return compress\n")
    assert imports_of(module) == {"api"}
