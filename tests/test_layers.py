"""The house rules of relay/ (drawn in the README's Development section): one package per layer, and a
layer imports only from the layers below it. admin/ sees the shared core, the mail and policy
decisions it mirrors, the domains' records and checks, and the SMTP side only where it sends a
deliverability test; nothing in relay/ imports admin/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "mail", "policy", "domains", "smtp", "service")  # bottom to top
ADMIN_MAY_IMPORT = ("core", "mail", "policy", "domains")
ADMIN_SMTP_USERS = ("admin/sendtest.py", "admin/sendtest_client.py")  # the in-process and front-door send-test


def relay_imports(path: Path) -> list[tuple[int, str]]:
    """(line, layer) for every `relay.<layer>...` import in the file, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "relay" else [f"relay.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "relay":
                found.append((node.lineno, parts[1] if len(parts) > 1 else ""))
    return found


def test_relay_has_no_modules_outside_a_layer() -> None:
    loose = sorted(p.name for p in (ROOT / "relay").glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"every relay module belongs to a layer package {LAYERS}: {loose}"
    assert sorted(p.name for p in (ROOT / "relay").iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS)


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_from_below(layer: str) -> None:
    allowed = LAYERS[: LAYERS.index(layer) + 1]
    wrong = [f"{path.relative_to(ROOT)}:{line} imports relay.{imported}"
             for path in sorted((ROOT / "relay" / layer).rglob("*.py"))
             for line, imported in relay_imports(path) if imported not in allowed]
    assert wrong == [], "\n".join(wrong)


def test_admin_sees_the_shared_core_and_not_the_running_relay() -> None:
    wrong = []
    for path in sorted((ROOT / "admin").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        allowed = ADMIN_MAY_IMPORT + (("smtp",) if relative in ADMIN_SMTP_USERS else ())
        wrong += [f"{relative}:{line} imports relay.{imported}"
                  for line, imported in relay_imports(path) if imported not in allowed]
    assert wrong == [], "\n".join(wrong)


def test_the_relay_never_imports_the_admin_side() -> None:
    wrong = []
    for path in sorted((ROOT / "relay").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            wrong += [f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"
                      for name in names if name.split(".")[0] == "admin"]
    assert wrong == [], "\n".join(wrong)


def test_the_rules_catch_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an import from a layer above is seen, in a function body too."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from relay.service.main import run\n    from relay import core\n")
    assert relay_imports(sample) == [(2, "service"), (3, "core")]


def test_no_relative_imports_the_layer_check_would_not_see() -> None:
    """`relay_imports` reads absolute imports; a relative one (`from ..service import x`) would slip past."""
    relative = [f"{path.relative_to(ROOT)}:{node.lineno}"
                for top in ("relay", "admin") for path in sorted((ROOT / top).rglob("*.py"))
                for node in ast.walk(ast.parse(path.read_text(), str(path)))
                if isinstance(node, ast.ImportFrom) and node.level > 0]
    assert relative == [], relative
