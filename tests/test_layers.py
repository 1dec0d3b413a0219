"""The package's layers point one way (docs/ARCHITECTURE.md): no import circles, and nothing on the
engine side (the model, the pipeline, the runners, audio) imports the protocol side."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vibevoice_rpc"
PROTOCOL = {"dispatcher", "jsonrpc", "transport", "server", "cli", "commands", "__main__"}
# Below both sides: plain data, the error table, platform glue. Every module is in one of the three.
SHARED = {
    "__init__",
    "messages",
    "errors",
    "config",
    "formats",
    "logsink",
    "redact",
    "watchdog",
    "winapi",
    "split_bundle",
}
ENGINE_SIDE = {
    "engine",
    "loader",
    "runtime",
    "planner",
    "model_source",
    "download",
    "hub_listing",
    "gpu",
    "tiny",
    "tiny_answer",
    "pipeline",
    "windowing",
    "stream",
    "prompt",
    "parser",
    "repetition",
    "language",
    "generation",
    "remote",
    "remote_client",
    "remote_errors",
    "remote_http",
    "audio",
    "audio_paths",
    "audio_soundfile",
    "audio_pyav",
    "audio_ffmpeg",
    "audio_sink",
    "job",
}


def _graph() -> dict[str, set[str]]:
    """Module → the package modules it imports (at any depth: lazy imports count too)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in modules:
        deps: set[str] = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(alias.name for alias in node.names)
        graph[name] = deps & modules
    return graph


def test_no_import_circles() -> None:
    graph = _graph()
    circles = []
    for start in graph:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    circles.append(" -> ".join([*path, start]))
                elif dep not in path:
                    stack.append((dep, [*path, dep]))
    assert circles == []


def test_every_module_has_its_layer() -> None:
    """A new module is placed on purpose (and in docs/ARCHITECTURE.md), not left out of the check."""
    modules = set(_graph())
    assert modules - PROTOCOL - ENGINE_SIDE - SHARED == set()
    assert (PROTOCOL | ENGINE_SIDE | SHARED) - modules == set()
    assert not (PROTOCOL & ENGINE_SIDE or PROTOCOL & SHARED or ENGINE_SIDE & SHARED)


def test_the_shared_modules_import_neither_side() -> None:
    graph = _graph()
    crossing = {
        m: sorted(graph[m] & (PROTOCOL | ENGINE_SIDE))
        for m in SHARED
        if graph[m] & (PROTOCOL | ENGINE_SIDE)
    }
    assert crossing == {}


def test_torch_stays_on_the_engine_side() -> None:
    """The protocol side and the shared modules never import torch or transformers (health and the
    reader must answer while a CUDA torch takes a minute to import)."""
    heavy = {"torch", "transformers", "accelerate", "bitsandbytes"}
    found = {}
    for name in PROTOCOL | SHARED:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            roots: set[str] = set()
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            if roots & heavy:
                found.setdefault(name, set()).update(roots & heavy)
    assert found == {}


def test_the_engine_side_never_imports_the_protocol_side() -> None:
    graph = _graph()
    assert ENGINE_SIDE <= set(graph), ENGINE_SIDE - set(graph)
    crossing = {m: sorted(graph[m] & PROTOCOL) for m in ENGINE_SIDE if graph[m] & PROTOCOL}
    assert crossing == {}


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
