"""Golden files: compare rendered text with tests/golden, or rewrite it (``--update-golden``,
what ``make golden`` passes)."""

from __future__ import annotations

from pathlib import Path


def check_golden(path: Path, text: str, update: bool) -> None:
    """``text`` equals the golden file ``path`` (written first when ``update``)."""
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} missing; run `make golden`"
    assert text == path.read_text(), f"{path.name} changed; review, then run `make golden`"


def check_golden_tree(root: Path, rendered: dict[str, str], update: bool, pattern: str) -> None:
    """``rendered`` (relative path -> text) equals the golden files under ``root`` matching
    ``pattern``, none missing and none extra (written first when ``update``)."""
    if update:
        for rel, text in rendered.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    expected = {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob(pattern))
        if p.is_file()
    }
    assert rendered == expected, (
        f"rendered files under {root.name} changed; review, then run `make golden`"
    )
