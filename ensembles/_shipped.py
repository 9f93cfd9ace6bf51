"""The portable runtime's modules that travel with a rendered repository: each is copied into a
model's version directory as ``1/_trtbuild_<module>.py``, where the model imports it."""

from __future__ import annotations

from pathlib import Path


def shipped(*modules: str) -> dict[str, Path | None]:
    """``trtbuild/runtime/<module>.py`` for each of ``modules``, keyed by where it goes."""
    import trtbuild.runtime

    source = Path(trtbuild.runtime.__file__).parent
    return {f"1/_trtbuild_{m}.py": source / f"{m}.py" for m in modules}
