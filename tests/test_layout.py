"""The shape of provisioning/: no import cycles (lazy imports included), and no module that
re-exports another's constants, so each rule and number has one home."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "provisioning"


def modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text()) for path in PACKAGE.glob("*.py")}


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while (node := parents.get(node)) is not None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(tree: ast.Module, names: set[str]) -> set[str]:
    """The provisioning modules `tree` imports, at any depth (inside functions too)."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "provisioning":
                found |= {alias.name for alias in node.names if alias.name in names}
            elif node.module.startswith("provisioning."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("provisioning."):
                    found.add(alias.name.split(".")[1])
    return found & names


def test_provisioning_has_no_import_cycles():
    trees = modules()
    graph = {name: imports(tree, set(trees)) - {name} for name, tree in trees.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    # The layering the modules' docstrings describe: rules and jobs depend on no store.
    assert not graph["rules"] & {"store", "services", "api", "auth"}
    assert "store" not in graph["jobs"]


def test_no_module_re_exports_another_modules_constants():
    trees = modules()
    for name, tree in trees.items():
        imported = {
            alias.asname or alias.name
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("provisioning")
            for alias in node.names
        }
        for node in tree.body:
            if isinstance(node, ast.Assign):
                for value in ast.walk(node.value):
                    is_copy = (
                        isinstance(value, ast.Attribute)
                        and isinstance(value.value, ast.Name)
                        and value.value.id in imported
                        and value.attr.isupper()
                    )
                    assert not is_copy, f"{name}: {ast.unparse(node)} copies another's constant"
