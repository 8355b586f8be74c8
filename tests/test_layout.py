"""The package's shape, as a rule on folders: each folder is a role and may import only the roles listed
for it (the client side never reaches the server side; ``core/`` reaches nothing but itself, not even
the CLI settings), every module stands in a folder, none is over 400 lines, and no file edits sys.path."""

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "asyncfl"
TOP_LEVEL = {"__init__", "settings"}  # the package's docstring; every entry point's flags
MAY_IMPORT = {  # role -> the roles its modules may import (its own always)
    "core": set(),
    "process": {"core"},
    "net": {"core"},
    "netem": {"core", "net"},
    "settings": {"core", "net"},
    "server": {"core", "net", "netem", "process", "settings"},
    "client": {"core", "net", "process", "settings"},
    "analysis": {"core", "process"},
    "launch": {"core", "net", "netem", "process", "settings"},
}


def role_of(package: Path, path: Path) -> str:
    rel = path.relative_to(package)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_roles(path: Path) -> set[str]:
    """The roles (first component under asyncfl) that the module at ``path`` imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "asyncfl":
                out |= {a.name for a in node.names}
            elif node.module.startswith("asyncfl."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("asyncfl.")}
    return out


def violations(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        role = role_of(package, path)
        if role not in MAY_IMPORT and role != "__init__":
            found.append(f"{path.relative_to(package)}: in no role's folder ({sorted(MAY_IMPORT)})")
            continue
        allowed = MAY_IMPORT.get(role, set()) | {role}
        for bad in sorted(imported_roles(path) - allowed):
            found.append(f"{path.relative_to(package)}: {role} imports {bad}")
    return found


def test_every_folder_imports_only_the_roles_it_may():
    assert violations(PACKAGE) == []


def test_the_rule_catches_a_client_module_importing_the_server_side(tmp_path):
    copy = tmp_path / "asyncfl"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    rounds = copy / "client" / "rounds.py"
    rounds.write_text(rounds.read_text() + "\nfrom asyncfl.server.owner import handle_frame  # noqa\n")
    (copy / "helpers.py").write_text("")
    assert violations(copy) == ["client/rounds.py: client imports server", "helpers.py: in no role's folder "
                                f"({sorted(MAY_IMPORT)})"]


def test_every_module_stands_in_a_role_folder_and_stays_readable():
    flat = {p.stem for p in PACKAGE.glob("*.py")}
    assert flat == TOP_LEVEL
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_no_file_edits_sys_path():
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                 if not any(part.startswith(".venv") for part in p.parts) and "sys.path" in p.read_text() and p != Path(__file__)]
    assert offenders == []


def run_file_literals(package: Path) -> list[str]:
    """Every string constant naming a run file outside core/schema.py, the one place they are spelled."""
    from asyncfl.core import schema

    found = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package) == Path("core/schema.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in schema.NAMES:
                found.append(f"{path.relative_to(package)}:{node.lineno}: {node.value!r}")
    return found


def test_run_file_names_are_spelled_only_in_the_schema():
    assert run_file_literals(PACKAGE) == []


def test_only_the_regime_module_tells_the_regimes_apart_by_name():
    """Everything else asks the regime object (core/regime.resolve: paced, paces, defaults) or reads a
    record through core/regime.recorded_time_scale."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE) == Path("core/regime.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value == "paper"
                                                     for c in [node.left, *node.comparators]):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []


def test_markdown_tables_are_built_only_by_the_helper():
    """A table's separator line is written in one place (analysis/markdown.py); every tool and bench script
    hands it a header and rows."""
    found = []
    for path in [*sorted(PACKAGE.rglob("*.py")), *sorted((PACKAGE.parents[1] / "bench").glob("*.py"))]:
        if path.name == "markdown.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "--- |" in node.value:
                found.append(f"{path.name}:{node.lineno}")
    assert found == []


def test_no_function_runs_over_sixty_lines():
    """A function that needs more is doing several things: each gets its own name (bench/ included)."""
    long = []
    for path in [*sorted(PACKAGE.rglob("*.py")), *sorted((PACKAGE.parents[1] / "bench").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
