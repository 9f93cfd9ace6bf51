"""Engine directories for trtbuild's portable runtime (``--runtime torch``).

There is nothing to compile: the "engine" is the checkpoint's weights as safetensors (cast to the
serving dtype when asked), its config, its generation config and a normalised tokenizer, plus the
trtbuild manifest. The Triton ``tensorrt_llm`` model of the portable flavor loads it with
transformers, on CPU or any CUDA GPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from trtbuild._atomic import atomic_dir
from trtbuild.errors import SpecError

MANIFEST = "trtbuild-engine.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
MODEL_FILES = ("config.json", "generation_config.json")


def prepare_portable_engine(
    checkpoint: Path, out_dir: Path, *, dtype: str = "auto", force: bool = False
) -> Path:
    """Write a portable-runtime engine directory for ``checkpoint`` into ``out_dir``."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise SpecError(f"{checkpoint} has no config.json; pass a Hugging Face checkpoint directory")
    weights = sorted(checkpoint.glob("*.safetensors"))
    if not weights:
        raise SpecError(
            f"{checkpoint} has no *.safetensors weights; convert .bin weights with "
            "transformers' save_pretrained(safe_serialization=True) first"
        )
    if not (checkpoint / "tokenizer.json").is_file():
        raise SpecError(f"{checkpoint} has no tokenizer.json (a fast tokenizer is required)")
    with atomic_dir(out_dir, force=force) as tmp:
        for name in (*MODEL_FILES, *TOKENIZER_FILES, "model.safetensors.index.json"):
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, tmp / name)
        for w in weights:
            _copy_weights(w, tmp / w.name, dtype)
        normalise_tokenizer_config(tmp)
        manifest = {
            "format": 1,
            "runtime": "torch",
            "dtype": dtype,
            "source": {"path": str(checkpoint.resolve())},
            "files": sorted(p.name for p in tmp.iterdir()),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def normalise_tokenizer_config(directory: Path) -> None:
    """Make transformers 4.x able to load a tokenizer saved by transformers 5."""
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") in (None, "TokenizersBackend"):
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.pop("backend", None)
        path.write_text(json.dumps(config, indent=2) + "\n")


def _copy_weights(src: Path, dst: Path, dtype: str) -> None:
    if dtype == "auto":
        shutil.copy2(src, dst)
        return
    import torch
    from safetensors.torch import load_file, save_file

    target = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    tensors = load_file(str(src))
    cast = {k: (v.to(target) if v.is_floating_point() else v) for k, v in tensors.items()}
    save_file(cast, str(dst), metadata={"format": "pt"})
