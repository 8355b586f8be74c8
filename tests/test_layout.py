"""The package's shape: client-side modules never reach server-side ones, modules stay readable, and no
file edits sys.path."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "asyncfl"
SERVER_SIDE = {"servers", "worker", "netem", "wsserver"}
CLIENT_SIDE = {"client", "rounds", "feed", "runfolder", "remote", "state", "aggregation", "live", "evaluator"}


def asyncfl_imports(module: str) -> set[str]:
    """The asyncfl modules ``module`` imports (first level), by name."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "asyncfl":
                out |= {a.name for a in node.names}
            elif node.module.startswith("asyncfl."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("asyncfl.")}
    return out


def reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for dep in asyncfl_imports(todo.pop()) - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_every_module_is_classified_or_shared():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert SERVER_SIDE | CLIENT_SIDE <= modules


def test_client_side_modules_never_import_server_side_ones():
    for module in sorted(CLIENT_SIDE):
        assert not reachable(module) & SERVER_SIDE, f"{module} reaches {reachable(module) & SERVER_SIDE}"


def test_shared_modules_import_no_role():
    # The launcher runs both roles' processes; the analysis reads run folders: neither is a role.
    tools = {"__init__", "launch", "analyze", "plot", "collect", "verdicts"}
    shared = {p.stem for p in PACKAGE.glob("*.py")} - SERVER_SIDE - CLIENT_SIDE - tools
    for module in sorted(shared):
        assert not reachable(module) & (SERVER_SIDE | CLIENT_SIDE), module


def test_no_file_edits_sys_path():
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                 if ".venv" not in p.parts and "sys.path" in p.read_text() and p != Path(__file__)]
    assert offenders == []
