"""Audit: every file the package writes goes through ``robustlab.io`` (temp file + rename).

A static check of the source: any call that writes a file (``open(..., 'w')``, ``torch.save``,
``np.save``, ``savefig``, ``save_file``, ``Path.write_text``/``write_bytes``, ``json.dump`` to a
stream, ...) must sit inside a ``with atomic_path(...)`` block or write to an in-memory
``io.BytesIO``/``StringIO`` buffer. The failure message lists the offenders (file:line).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "robustlab"
EXEMPT = {"io.py"}  # the atomic writers themselves
# attribute calls that write a file given a path or an open stream
WRITER_METHODS = {
    "save",
    "savez",
    "savez_compressed",
    "savefig",
    "save_file",
    "write_text",
    "write_bytes",
    "tofile",
    "to_csv",
    "imsave",
    "dump",
    "safe_dump",
}
MEMORY = {"BytesIO", "StringIO"}


def _is_atomic_with(node: ast.AST) -> bool:
    if not isinstance(node, ast.With):
        return False
    for item in node.items:
        call = item.context_expr
        if isinstance(call, ast.Call):
            func = call.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "atomic_path":
                return True
    return False


def _memory_buffers(tree: ast.AST) -> set[str]:
    """Names assigned from ``io.BytesIO()``/``StringIO()`` anywhere in the module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in MEMORY:
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _writes_a_file(call: ast.Call, buffers: set[str]) -> bool:
    func = call.func
    arguments = [*call.args, *(k.value for k in call.keywords)]
    if any(isinstance(a, ast.Name) and a.id in buffers for a in arguments):
        return False  # serialising into memory
    if isinstance(func, ast.Name) and func.id == "open":
        mode = (
            call.args[1]
            if len(call.args) > 1
            else next((k.value for k in call.keywords if k.arg == "mode"), None)
        )
        return isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")
    if not isinstance(func, ast.Attribute) or func.attr not in WRITER_METHODS:
        return False
    if func.attr in {"dump", "safe_dump"}:  # json.dump(obj, stream) / yaml.dump(obj, stream)
        return len(call.args) >= 2 or any(k.arg == "stream" for k in call.keywords)
    if func.attr == "save":  # torch.save / np.save / PIL's image.save, not any method named save
        receiver = func.value.id if isinstance(func.value, ast.Name) else ""
        first = call.args[0] if call.args else None
        return (
            receiver in {"torch", "np", "numpy"}
            or "image" in receiver.lower()
            or any(k.arg == "format" for k in call.keywords)
            or isinstance(first, ast.Constant | ast.JoinedStr | ast.BinOp)  # "x.png", p / "x"
        )
    return True


def offenders(package: Path = PACKAGE) -> list[str]:
    """``file:line: call`` for every file write outside ``atomic_path`` under ``package``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name in EXEMPT and path.parent == package:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        buffers = _memory_buffers(tree)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not _writes_a_file(node, buffers):
                continue
            ancestor, atomic = parents.get(node), False
            while ancestor is not None and not atomic:
                atomic = _is_atomic_with(ancestor)
                ancestor = parents.get(ancestor)
            if not atomic:
                where = path.relative_to(package.parent)
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_every_file_write_is_atomic():
    found = offenders()
    assert found == [], "writes that bypass robustlab.io.atomic_path:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("open(p, 'w').write('x')", True),
        ("open(p, 'rb').read()", False),
        ("torch.save(state, p)", True),
        ("image.save(folder / 'x.png')", True),
        ("store.save(index, result)", False),
        ("buffer = io.BytesIO()\ntorch.save(state, buffer)", False),
        ("with atomic_path(p) as tmp:\n    fig.savefig(tmp)", False),
        ("with open(p) as f:\n    np.save(f, a)", True),
        ("text = yaml.safe_dump(values)", False),
        ("json.dump(obj, handle)", True),
        ("write_text(p, 'x')", False),  # robustlab.io's own helper
        ("Path(p).write_text('x')", True),
    ],
)
def test_the_audit_itself(tmp_path, source, flagged):
    package = tmp_path / "robustlab"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "m.py").write_text(source + "\n")
    assert bool(offenders(package)) is flagged
