"""The house rules of tts_lib/, read from the source: stage folders import only downwards, module-level imports
form no cycle, and only the family's own folder imports Fish Speech's modules (the few places left are listed
here, and the list may only shrink)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tts_lib"
# Lowest first: a module may import from its own stage and the ones before it, never from a later one.
STAGES = ("common", "models", "data", "training", "listening", "launch", "versions")
TOP = "top"  # cli.py, gpu_check.py, __main__.py: commands over every stage

# Upward imports still there, each (importing module, imported module): none left; kept for the next one's name.
KNOWN_UPWARD: set[tuple[str, str]] = set()
# Modules outside tts_lib/models/ that still import Fish Speech's own modules (issue 13: the family-neutral core
# removes them). A new one fails this test; so does one that no longer does (take it off the list).
KNOWN_FISH_IMPORTS: set[str] = set()  # modules outside tts_lib/models/ allowed to import Fish Speech: none


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """tts_lib modules `path` imports (`from tts_lib.x import y` counts y when it is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    known = modules()
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tts_lib")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("tts_lib"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return {name for name in found if name in known}


def stage_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in STAGES:
        return parts[1]
    return TOP if len(parts) > 1 else "package"


def test_the_top_of_tts_lib_shows_the_stages():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(STAGES)
    loose = {p.stem for p in PACKAGE.glob("*.py")}
    assert loose == {"__init__", "__main__", "cli", "gpu_check"}, "a module belongs in its stage's folder"


def test_stages_import_only_downwards():
    order = {stage: i for i, stage in enumerate(STAGES)} | {TOP: len(STAGES), "package": -1}
    upward = set()
    for name, path in modules().items():
        for target in imports(path):
            if order[stage_of(target)] > order[stage_of(name)]:
                upward.add((name, target))
    assert upward - KNOWN_UPWARD == set(), "imports from a later stage back into an earlier one"
    assert KNOWN_UPWARD - upward == set(), "fixed: take these off KNOWN_UPWARD"


def test_module_level_imports_have_no_cycle():
    # a module naming its own package (a family's modules their __init__) is not a cycle: Python runs the package first
    graph = {
        name: {t for t in imports(path, top_level_only=True) if t != name and not name.startswith(t + ".")}
        for name, path in modules().items()
    }
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_only_the_family_folder_imports_fish_speech():
    offenders = {
        name
        for name, path in modules().items()
        if not name.startswith("tts_lib.models")
        and any(t.startswith("tts_lib.models.fish_speech") for t in imports(path))
    }
    assert offenders - KNOWN_FISH_IMPORTS == set(), "a new import of Fish Speech's modules outside tts_lib/models/"
    assert KNOWN_FISH_IMPORTS - offenders == set(), "fixed: take these off KNOWN_FISH_IMPORTS"
