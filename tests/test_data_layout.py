"""The layout of `mae_hf.data`: every module imports on its own in a fresh interpreter, the modules import each other
without a cycle (lazy imports inside functions included), and none is over 400 lines."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import mae_hf.data

DATA = Path(mae_hf.data.__file__).parent
MODULES = sorted(path.stem for path in DATA.glob("*.py") if path.stem != "__init__")


def imports_within_data(module: str) -> set[str]:
    """The `mae_hf.data` modules that `module` imports anywhere in its file (top level or inside a function)."""
    tree = ast.parse((DATA / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                found |= {node.module} if node.module else {alias.name for alias in node.names}
            elif node.level == 0 and (node.module or "").startswith("mae_hf.data."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("mae_hf.data.")}
    return {name.split(".")[0] for name in found} & set(MODULES)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as [a, b, ..., a], or None."""
    state = dict.fromkeys(graph, "new")

    def visit(node, path):
        state[node] = "open"
        for successor in sorted(graph[node]):
            if state[successor] == "open":
                return path[path.index(successor) :] + [successor]
            if state[successor] == "new" and (cycle := visit(successor, [*path, successor])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if state[node] == "new" and (cycle := visit(node, [node])):
            return cycle
    return None


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_data_modules_import_each_other_without_a_cycle():
    graph = {module: imports_within_data(module) for module in MODULES}
    assert graph["decoding"] >= {"encoded", "gpu_decoding"}  # the parser sees the imports at all
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_decode_primitives_are_a_leaf_of_the_decoding_modules():
    assert not imports_within_data("encoded") & {"decoding", "gpu_decoding"}
    assert "decoding" not in imports_within_data("gpu_decoding")


def test_every_data_module_imports_first_in_a_fresh_interpreter():
    # Each module imported first, with mae_hf dropped from sys.modules in between: an import-order cycle fails here.
    script = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'mae_hf' or m.startswith('mae_hf.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module('mae_hf.data.' + name)\n"
    )
    repo = str(DATA.parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def test_no_data_module_is_over_400_lines():
    lengths = {path.name: len(path.read_text().splitlines()) for path in DATA.glob("*.py")}
    assert max(lengths.values()) <= 400, lengths
