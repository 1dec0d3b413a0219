"""The package's folders are its layers (docs/ARCHITECTURE.md): each wing imports only the wings
below it, torch stays in the model wing, there are no import circles, and the architecture document
lists exactly the modules that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vibevoice_rpc"
ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"

# The wings: one folder each. A new folder is placed here on purpose (and in ARCHITECTURE.md).
WINGS = {"protocol", "audio", "voice", "transcription", "checkpoint", "model", "remote"}
# The top level: what people and the app start (may import anything), the engine with its
# Backend protocol, and the shared floor (every other top-level module).
ENTRY = {"__main__", "cli", "commands"}
ENGINE = {"engine", "backend"}
# Which part may import which (lazy and TYPE_CHECKING imports count too).
MAY_IMPORT: dict[str, set[str]] = {
    "floor": {"floor"},
    "audio": {"floor"},
    "voice": {"floor"},
    "transcription": {"floor", "audio", "voice"},
    "checkpoint": {"floor"},
    "model": {"floor", "audio", "transcription", "checkpoint"},
    "remote": {"floor", "audio", "transcription"},
    "engine": {
        "floor",
        "audio",
        "voice",
        "transcription",
        "checkpoint",
        "model",
        "remote",
        "engine",
    },
    "protocol": {"floor"},
}
HEAVY = {"torch", "transformers", "accelerate", "bitsandbytes"}  # the model wing's alone


def _modules() -> dict[str, Path]:
    """Dotted module name below the package (``audio.decode``, ``engine``) -> its file."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts)] = path
    return out


def _part(module: str) -> str:
    top = module.split(".")[0]
    if top in WINGS:
        return top
    if top in ENTRY:
        return "entry"
    if top in ENGINE:
        return "engine"
    return "floor"


def _imports(module: str, path: Path) -> set[str]:
    """The package modules ``module`` imports, at any depth."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")[:-1]
    names = set(_modules())
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            candidates = (
                [target] if node.module else [".".join([*base, a.name]) for a in node.names]
            )
            for c in candidates:
                c = c or "__init__"
                if c in names:
                    found.add(c)
                elif f"{c}.__init__" in names:
                    found.add(f"{c}.__init__")
                elif "." in c and c.rsplit(".", 1)[0] in names:  # from .x import name
                    found.add(c.rsplit(".", 1)[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("vibevoice_rpc."):
                found.add(node.module.removeprefix("vibevoice_rpc."))
    return found - {module}


def _graph() -> dict[str, set[str]]:
    return {m: _imports(m, p) for m, p in _modules().items()}


def test_no_import_circles() -> None:
    graph = _graph()
    circles = []
    for start in graph:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for dep in graph.get(node, ()):
                if dep == start:
                    circles.append(" -> ".join([*path, start]))
                elif dep not in path:
                    stack.append((dep, [*path, dep]))
    assert circles == []


def test_every_folder_is_a_wing_and_the_top_level_rooms_exist() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == WINGS
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert ENTRY | ENGINE <= top


def test_each_wing_imports_only_the_wings_below_it() -> None:
    crossing = {}
    for module, deps in _graph().items():
        part = _part(module)
        if part == "entry":
            continue
        bad = sorted(d for d in deps if _part(d) not in MAY_IMPORT[part] and _part(d) != part)
        if bad:
            crossing[module] = bad
    assert crossing == {}


def test_nothing_below_the_protocol_wing_imports_it() -> None:
    graph = _graph()
    crossing = {
        m: sorted(d for d in deps if _part(d) == "protocol")
        for m, deps in graph.items()
        if _part(m) not in ("protocol", "entry") and any(_part(d) == "protocol" for d in deps)
    }
    assert crossing == {}


def test_torch_only_in_the_model_wing() -> None:
    """Nothing outside model/ imports torch, transformers, accelerate or bitsandbytes (health and
    the reader must answer while a CUDA torch takes a minute to import; the remote backend and
    the pipeline need none of them)."""
    found = {}
    for module, path in _modules().items():
        if _part(module) == "model":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            roots: set[str] = set()
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            if roots & HEAVY:
                found.setdefault(module, set()).update(roots & HEAVY)
    assert found == {}


def test_the_architecture_document_lists_exactly_the_modules_that_exist() -> None:
    """Its rooms table names every module as a path (``audio/decode.py``), each once."""
    doc = ARCHITECTURE.read_text(encoding="utf-8")
    table = doc[doc.index("## The rooms") : doc.index("\n## ", doc.index("## The rooms") + 3)]
    named = re.findall(r"`((?:[a-z_]+/)?[a-z_]+\.py)`", table)
    existing = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    existing = {p for p in existing if not p.endswith("__init__.py")} | {"__init__.py"}
    assert sorted(set(named) ^ existing) == []
    assert len(named) == len(set(named)), "a module is named twice"


def test_the_error_table_is_complete_unique_and_documented() -> None:
    """Every error class is in errors.ERROR_TABLE with its own code, and docs/PROTOCOL.md's
    error table lists exactly those codes."""
    import re

    from vibevoice_rpc import errors

    classes = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.RpcError) and obj is not errors.RpcError
    }
    assert classes == set(errors.ERROR_TABLE)
    codes = [cls.code for cls in errors.ERROR_TABLE]
    assert len(codes) == len(set(codes))
    doc = (PACKAGE.parent / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    documented = {int(c) for c in re.findall(r"^\| (-32\d\d\d) \|", doc, flags=re.M)}
    assert documented == set(codes)
