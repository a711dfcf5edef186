"""The package stays livable: no import circle (function-level imports counted), every module importable on
its own, and the loop's core importing no concrete agent."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "research_loop"
MODULES = sorted(PACKAGE.rglob("*.py"))
CONCRETE_AGENTS = {"anthropic_agent", "openai_agent", "claude_code_agent", "builtin_agent", "optuna_agent", "registry"}
# The command line picks the agent, and the consensus command asks LLMs itself; the loop's core may not.
COMMAND_PACKAGES = {"cli", "consensus"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def imports_of(path: Path) -> set[str]:
    """The package modules this one imports, function-level (lazy) imports included."""
    name = module_name(path).removesuffix(".__init__")
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    known = {module_name(other).removesuffix(".__init__") for other in MODULES}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1]) if node.level else ""
            target = ".".join(part for part in (base, node.module or "") if part)
            found |= {candidate for candidate in (target, *(f"{target}.{alias.name}" for alias in node.names))
                      if candidate in known}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
    return found - {name}


def test_no_import_circle_counting_function_level_imports():
    graph = {module_name(path).removesuffix(".__init__"): imports_of(path) for path in MODULES}
    circles = []

    def visit(node, trail):
        for target in sorted(graph[node]):
            if target in trail:
                circles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in done:
                visit(target, trail + [target])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert circles == []


def test_the_circle_check_sees_function_level_imports():
    """cli/commands.py imports the loop only inside run_night: the graph above must still have that edge."""
    source = (PACKAGE / "cli" / "commands.py").read_text()
    assert "\nfrom research_loop.loop import" not in source and "    from research_loop.loop import" in source
    assert "research_loop.loop" in imports_of(PACKAGE / "cli" / "commands.py")
    assert "research_loop.agents.base" in imports_of(PACKAGE / "agents" / "registry.py")


def test_the_tree_shows_the_pipeline_few_top_level_modules_and_every_package_says_what_it_owns():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    packages = [path for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"]
    assert {path.name for path in packages} >= {"cli", "night", "proposals", "execution", "evaluation", "records",
                                                 "report", "consensus", "agents"}
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and len(doc) > 40, package.name


def test_every_module_imports_on_its_own():
    """A circle of imports breaks one of these in a fresh interpreter (where the import order matters)."""
    failed = []
    for path in MODULES:
        name = module_name(path)
        done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=PACKAGE.parent, capture_output=True,
                              text=True, timeout=120, check=False)
        if done.returncode != 0:
            failed.append(f"{name}: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    assert failed == []


@pytest.mark.parametrize("path", [path for path in MODULES if "agents" not in path.parts
                                  and not COMMAND_PACKAGES & set(path.parts)], ids=lambda path: path.stem)
def test_the_core_imports_no_concrete_agent(path):
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[-1])
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[-1] for alias in node.names}
    assert not imported & CONCRETE_AGENTS


def test_the_fixed_data_api_needs_nothing_of_the_build_step():
    """Every job carries prepare.py but not research_loop/: importing it must not reach the build step (or
    anything heavy), and `python prepare.py` still builds data/ through it."""
    code = ("import sys, prepare; print([m for m in sys.modules if m.startswith('research_loop') or "
            "m in ('datasets', 'seqeval', 'numpy', 'torch')])")
    done = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    shown = subprocess.run([sys.executable, "prepare.py", "--help"], cwd=PACKAGE.parent, capture_output=True, text=True,
                           check=True)
    assert "--aux NAME=SOURCE" in shown.stdout and "--holdout-frac" in shown.stdout
