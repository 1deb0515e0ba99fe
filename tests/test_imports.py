"""The package's import graph: no cycle, and the model files that `save_pretrained` copies for remote code import
only each other (relatively) and outside packages, never `mae_hf`."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mae_hf"


def module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_of(path): path for path in PACKAGE.rglob("*.py")}


def imported(path: Path, known: dict[str, Path], module_level: bool = True) -> set[str]:
    """The mae_hf modules `path` imports (by its top-level statements only, when `module_level`)."""
    tree = ast.parse(path.read_text())
    package = module_of(path) if path.name == "__init__.py" else module_of(path).rpartition(".")[0]
    nodes = tree.body if module_level else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    found.add(f"{base}.{alias.name}")
                elif base in known:
                    found.add(base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    """Counting imports inside functions too: a deferred import is not a way out of a cycle."""
    known = modules()
    graph = {name: imported(path, known, module_level=False) - {name} for name, path in known.items()}
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_remote_code_files_import_no_mae_hf():
    known = modules()
    remote, todo = set(), ["mae_hf.modeling_mae", "mae_hf.modeling_segmentation", "mae_hf.configuration_mae"]
    while todo:
        name = todo.pop()
        if name not in remote:
            remote.add(name)
            todo.extend(imported(known[name], known, module_level=False))
    assert "mae_hf.checkpoint" in remote and "mae_hf.weight_loading" in remote
    for name in remote:
        source = known[name].read_text()
        assert "import mae_hf" not in source and "from mae_hf" not in source, name
        assert known[name].parent == PACKAGE, f"{name}: remote code is copied flat, without subpackages"


def test_the_run_directory_knows_no_trainer_data_or_script_module():
    """`run_directory` (the output dir's life) sits under the Trainer: it reads checkpoints (`checkpoint`) and
    nothing of the data, the trainer or the scripts, which use it."""
    known = modules()
    package = {name for name in known if name.startswith("mae_hf.run_directory")}
    allowed = package | {"mae_hf.checkpoint"}
    for name in package:
        assert imported(known[name], known, module_level=False) <= allowed, name
