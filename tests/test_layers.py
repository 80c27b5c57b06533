"""ringdist's layers, read from its source: one edge turns OS errors into RingErrors,
imports run one way, down the layers of docs/design.md's table, and no module sets another
module's globals.

Layers, lowest first: `wire` (sans I/O) -> `channel` (the OS edge; with `posixshm`, the
only modules that catch an OSError) -> handshake -> the engine -> the communicator ->
algorithms -> calls -> non-blocking work -> the tuning table -> collectives -> the API.
"""

from __future__ import annotations

import ast
import builtins
import re
import socket
from pathlib import Path


PACKAGE = Path(__file__).resolve().parent.parent / "ringdist"
DESIGN = PACKAGE.parent / "docs" / "design.md"

# Every name an OS error goes by: OSError, its aliases, and every subclass Python defines.
OS_ERROR_NAMES = frozenset({
    "OSError", "IOError", "EnvironmentError",
    "BlockingIOError", "ChildProcessError", "InterruptedError", "ProcessLookupError",
    "ConnectionError", "BrokenPipeError", "ConnectionAbortedError", "ConnectionRefusedError",
    "ConnectionResetError",
    "FileExistsError", "FileNotFoundError", "IsADirectoryError", "NotADirectoryError", "PermissionError",
    "TimeoutError",
})
# ... and as attributes of modules: socket.error, socket.timeout, os.error, select.error, ...
OS_ERROR_ATTRIBUTES = frozenset({
    ("socket", "error"), ("socket", "timeout"), ("socket", "herror"), ("socket", "gaierror"),
    ("os", "error"), ("select", "error"), ("mmap", "error"), ("ssl", "SSLError"),
})

# Modules that may still catch OS errors themselves, and why.
CATCH_ALLOWED = {
    "channel.py",  # the socket edge: where every OSError becomes a RingError
    "posixshm.py",  # the same edge for the portable shared-memory backend (socket files, shm_open)
}

# Import edges let through for now, and why; every other cycle fails the test.
CYCLE_ALLOWED = {("comm", "world")}  # (the one import up: UP_ALLOWED)

# Imports that go up the layers, and why; every other one fails the test.
UP_ALLOWED = {
    ("comm", "world"): "group=None in a program that imported only a submodule: world loaded on first use",
}


def modules() -> dict[str, ast.Module]:
    """Every module of the package, by path relative to it ('comm.py', 'algorithms/ring.py')."""
    return {path.relative_to(PACKAGE).as_posix(): ast.parse(path.read_text(encoding="utf-8"), str(path))
            for path in sorted(PACKAGE.rglob("*.py"))}


def module_name(filename: str) -> str:
    """'comm.py' -> 'comm', 'algorithms/ring.py' -> 'algorithms.ring', 'algorithms/__init__.py' -> 'algorithms'."""
    parts = filename[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1] or ["__init__"]
    return ".".join(parts)


def _names_os_error(node: ast.expr | None) -> bool:
    if node is None:
        return True  # a bare `except:` catches every OSError too
    if isinstance(node, ast.Tuple):
        return any(_names_os_error(e) for e in node.elts)
    if isinstance(node, ast.Name):
        return node.id in OS_ERROR_NAMES
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return (node.value.id, node.attr) in OS_ERROR_ATTRIBUTES or (
            node.value.id == "builtins" and node.attr in OS_ERROR_NAMES)
    return False


def os_error_handlers(tree: ast.Module) -> list[str]:
    """'line N: except ...' for each handler of `tree` that names an OS error (or catches everything)."""
    return [f"line {node.lineno}: except {ast.unparse(node.type) if node.type else ''}".rstrip()
            for node in ast.walk(tree)
            if isinstance(node, ast.ExceptHandler) and _names_os_error(node.type)]


def import_graph(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Module -> the ringdist modules it imports (at the top or inside a function); subpackage
    modules are dotted ('algorithms.ring'), the package itself is '__init__'."""
    names = {module_name(filename) for filename in trees}
    graph: dict[str, set[str]] = {name: set() for name in names}
    for filename, tree in trees.items():
        me = module_name(filename)
        package = me.split(".")[:-1] if not filename.endswith("__init__.py") else (
            [] if me == "__init__" else me.split("."))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - (node.level - 1)] if node.level > 1 else list(package)
                elif node.module == "ringdist" or (node.module or "").startswith("ringdist."):
                    base = []
                else:
                    continue
                module = (node.module or "") if node.level else (node.module or "").removeprefix("ringdist")
                base = base + [p for p in module.split(".") if p]
                for alias in node.names:  # `from x import name`: the module x.name if there is one, else x
                    candidate = ".".join(base + [alias.name])
                    targets.append(candidate if candidate in names else (".".join(base) or "__init__"))
            elif isinstance(node, ast.Import):
                targets += [a.name.removeprefix("ringdist.") for a in node.names if a.name.startswith("ringdist.")]
            elif (isinstance(node, ast.Call) and ast.unparse(node.func) == "importlib.import_module" and node.args
                  and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("ringdist.")):
                targets.append(node.args[0].value.removeprefix("ringdist."))  # a lazy import by name
            graph[me].update(t for t in targets if t in names and t != me)
    return graph


def design_layers(text: str) -> tuple[list[str], dict[str, int]]:
    """The layers of design.md's table, lowest first, and each module's (its row's index): the
    module names in backquotes in a row's second cell; `algorithms` stands for its package."""
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    layers: list[str] = []
    placed: dict[str, int] = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if not row.startswith("| ") or len(cells) != 3 or cells[0] == "layer":
            continue
        layers.append(cells[0])
        names = re.findall(r"`([\w]+)`", cells[1].split("(", 1)[0])  # (the algorithms named in brackets: its package)
        for name in names:
            assert name not in placed, f"design.md's layer table places {name} twice"
            placed[name] = len(layers) - 1
    return layers, placed


def layer_of(module: str, placed: dict[str, int]) -> int | None:
    return placed.get(module.split(".")[0] if module.startswith("algorithms.") else module)


def imports_up(graph: dict[str, set[str]], placed: dict[str, int]) -> list[tuple[str, str]]:
    """The import edges from a module to one in a higher layer."""
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if (la := layer_of(a, placed)) is not None and (lb := layer_of(b, placed)) is not None and lb > la)


def cycles(graph: dict[str, set[str]], allowed: set[tuple[str, str]] = frozenset()) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), edges in `allowed` left out."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if (v, w) in allowed:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def foreign_writes(trees: dict[str, ast.Module]) -> list[str]:
    """Assignments to another ringdist module's attributes (`channel.X = ...`, `buffers.cache.limit = ...`)."""
    found = []
    names = {filename[:-3] for filename in trees}
    for filename, tree in trees.items():
        aliases = set()  # names this module binds to ringdist modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level == 1 and not node.module or node.module == "ringdist"):
                aliases |= {a.asname or a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names if a.name.startswith("ringdist.") and a.asname}
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
            for target in targets:
                root = target
                while isinstance(root, ast.Attribute):
                    root = root.value
                if target is not root and isinstance(root, ast.Name) and root.id in aliases:
                    found.append(f"{filename} line {node.lineno}: {ast.unparse(target)} = ...")
    return found


# ---- the checks ---------------------------------------------------------------------------------


def test_every_os_error_class_python_defines_is_named():
    """OS_ERROR_NAMES misses no subclass of OSError (the check below would not see it)."""
    builtin_os_errors = {name for name, value in vars(builtins).items()
                         if isinstance(value, type) and issubclass(value, OSError)}
    assert builtin_os_errors <= OS_ERROR_NAMES, builtin_os_errors - OS_ERROR_NAMES
    for module, attr in OS_ERROR_ATTRIBUTES:
        if module == "socket":
            assert issubclass(getattr(socket, attr), OSError)


def test_only_the_channel_catches_os_errors():
    offenders = {name: handlers for name, tree in modules().items()
                 if name not in CATCH_ALLOWED and (handlers := os_error_handlers(tree))}
    assert not offenders, f"OS errors caught outside channel.py (use channel's operations): {offenders}"
    assert os_error_handlers(modules()["channel.py"]), "the check reads channel.py's handlers at all"


def test_the_check_sees_os_errors_however_they_are_named():
    source = """
try: pass
except OSError: pass
try: pass
except (ValueError, socket.timeout): pass
try: pass
except ConnectionResetError as exc: pass
try: pass
except builtins.BlockingIOError: pass
try: pass
except: pass
try: pass
except (ValueError, KeyError, RingTimeoutError): pass
"""
    found = os_error_handlers(ast.parse(source))
    assert [line.split(":")[0] for line in found] == ["line 3", "line 5", "line 7", "line 9", "line 11"], found


def test_ringdist_imports_run_one_way():
    graph = import_graph(modules())
    assert "wire" in graph["channel"] and "tuning" in graph["collectives"]  # the graph is read at all
    assert "comm" in graph["algorithms.ring"] and "algorithms.base" in graph["algorithms.doubling"]
    assert not cycles(graph, CYCLE_ALLOWED), f"import cycles between ringdist modules: {cycles(graph, CYCLE_ALLOWED)}"
    for a, b in CYCLE_ALLOWED:  # an allowance that is no longer needed goes too
        assert b in graph[a], f"{a} no longer imports {b}: drop it from CYCLE_ALLOWED"


def test_every_module_has_its_layer_in_the_design_table():
    layers, placed = design_layers(DESIGN.read_text(encoding="utf-8"))
    assert layers[0] == "wire" and layers[-1] == "API" and len(layers) >= 8, layers  # the table is read at all
    graph = import_graph(modules())
    unplaced = sorted(m for m in graph if layer_of(m, placed) is None)
    assert not unplaced, f"modules design.md's layer table does not place: {unplaced}"
    gone = sorted(set(placed) - {m.split(".")[0] for m in graph})
    assert not gone, f"design.md's layer table names modules that do not exist: {gone}"


def test_the_design_table_names_every_algorithm_module():
    section = DESIGN.read_text(encoding="utf-8").split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| algorithms |"))
    named = set(re.findall(r"`(\w+)`", row.split("|")[2].split("(", 1)[1]))
    found = {path.stem for path in (PACKAGE / "algorithms").glob("*.py")} - {"__init__"}
    assert named == found, f"in the table, not a module: {sorted(named - found)}; a module not in it: {sorted(found - named)}"


def test_imports_go_down_the_layers():
    _, placed = design_layers(DESIGN.read_text(encoding="utf-8"))
    graph = import_graph(modules())
    up = [edge for edge in imports_up(graph, placed) if edge not in UP_ALLOWED]
    assert not up, f"imports of a higher layer's module (design.md's table): {up}"
    for a, b in UP_ALLOWED:  # an allowance that is no longer needed goes too
        assert b in graph[a], f"{a} no longer imports {b}: drop it from UP_ALLOWED"


def test_the_layer_check_sees_an_import_up_however_it_is_made():
    table = ("\n## Layers\n\n| layer | modules | holds |\n|---|---|---|\n| wire | `a`, `b` | x |\n"
             "| comm | `c`, `algorithms` (`ring`) | y |\n| API | `d` | z |\n\n## Next\n")
    layers, placed = design_layers(table)
    assert layers == ["wire", "comm", "API"] and placed == {"a": 0, "b": 0, "c": 1, "algorithms": 1, "d": 2}
    trees = {"a.py": ast.parse("def f():\n    importlib.import_module('ringdist.d')\n"),
             "b.py": ast.parse("from .algorithms import ring\n"), "c.py": ast.parse("from . import b, d\n"),
             "d.py": ast.parse("import ringdist.a\n"), "algorithms/__init__.py": ast.parse(""),
             "algorithms/ring.py": ast.parse("from ..d import x\n")}
    assert imports_up(import_graph(trees), placed) == [
        ("a", "d"), ("algorithms.ring", "d"), ("b", "algorithms.ring"), ("c", "d")]


def test_the_cycle_finder_sees_cycles_through_any_import_form():
    trees = {
        "a.py": ast.parse("from . import b\n"),
        "b.py": ast.parse("def f():\n    from .c import thing\n"),
        "c.py": ast.parse("import ringdist.a\n"),
        "d.py": ast.parse("from ringdist import a\n"),
    }
    graph = import_graph(trees)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles(graph, {("c", "a")}) == []


def test_no_module_sets_another_modules_globals():
    found = foreign_writes(modules())
    assert not found, f"configure other modules through a function of theirs: {found}"


def test_the_foreign_write_check_sees_attribute_writes():
    trees = {"world.py": ast.parse("from . import buffers, channel\nbuffers.cache.limit = 1\nchannel.X += 2\n"
                                   "local = 3\nobj.attr = 4\n"),
             "buffers.py": ast.parse(""), "channel.py": ast.parse("")}
    assert foreign_writes(trees) == ["world.py line 2: buffers.cache.limit = ...", "world.py line 3: channel.X = ..."]


def test_every_package_of_the_source_is_installed():
    # A wheel (not an editable install) holds only the packages pyproject.toml lists: one left
    # out (ringdist.algorithms was) makes `import ringdist` fail wherever it is installed so.
    import re
    root = PACKAGE.parent
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    listed = set(re.findall(r'"([\w.]+)"', re.search(r"^packages = \[(.*?)\]", text, re.M).group(1)))
    dirs = dict(re.findall(r'"(\w+)" = "(\w+)"', re.search(r"^package-dir = \{(.*?)\}", text, re.M).group(1)))
    found = set()
    for name, folder in dirs.items():
        for init in sorted((root / folder).rglob("__init__.py")):
            parts = init.parent.relative_to(root / folder).parts
            found.add(".".join((name, *parts)))
    assert found == listed, f"packages with an __init__.py: {sorted(found)}; listed: {sorted(listed)}"


def test_the_launcher_and_a_bare_import_load_no_numpy():
    # The launcher reads the library's settings and serves its rendezvous, and numpy is most of a
    # start-up's import time: it loads none, nor does `import ringdist` until the API's first use,
    # which loads it whole (`world` first: a collective with no init() makes the default group).
    import subprocess
    import sys

    code = ("import sys\n"
            "import ringdist_launch.launch, ringdist_launch.job, ringdist\n"
            "from ringdist import settings, rendezvous, endpoint, errors\n"
            "print('numpy' in sys.modules)\n"
            "import numpy as np\n"
            "print(ringdist.all_sum(np.arange(3)).tolist(), 'ringdist.world' in sys.modules, "
            "ringdist.RingError is errors.RingError, 'init' in dir(ringdist))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["False", "[0, 1, 2] True True True"], res.stdout
