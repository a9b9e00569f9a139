"""Modules of the packages this checks import each other one way only (no cycles), counting
imports inside functions too: a deferred import hides a cycle from Python, not from readers."""

from __future__ import annotations

import ast
from pathlib import Path

import bolmo

SRC = Path(bolmo.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in modules}
    return found


def _cycles(packages: tuple[str, ...]) -> list[list[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    inside = {m for m in files if m.startswith(packages)}
    graph = {m: _imports(files[m], inside) - {m} for m in inside}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_train_modules_import_one_way():
    assert _cycles(("bolmo.train",)) == []


def test_checkpoint_and_config_modules_import_one_way():
    assert _cycles(("bolmo.checkpoint", "bolmo.config", "bolmo.olmo", "bolmo.tokenizer")) == []


def test_special_ids_are_defined_only_in_bolmo_config():
    """pad/bos/eos/<bpe_token_end> ids, the byte offset and the vocabulary sizes have one home."""
    names = {"PAD_ID", "BOS_ID", "EOS_ID", "BPE_TOKEN_END_ID", "BYTE_OFFSET", "PLAIN_VOCAB", "FUSED_VOCAB"}
    defined = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                targets = [t for target in node.targets
                           for t in (target.elts if isinstance(target, ast.Tuple) else [target]) if isinstance(t, ast.Name)]
                defined |= {(_module_name(path), t.id) for t in targets if t.id in names}
    assert {module for module, _ in defined} == {"bolmo.config"}
    assert {name for _, name in defined} == names
