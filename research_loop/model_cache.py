"""The model in the local Hugging Face cache before train.py needs it: train.py runs with the hub offline,
so the loop (which may use the network) downloads a hub model once, before the first run that asks for it."""

from __future__ import annotations

from pathlib import Path

from .config_block import values

# What a token-classification fine-tune reads; weights in safetensors when the repository has them.
PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.safetensors", "tokenizer*", "vocab*", "merges*",
            "spm*", "sentencepiece*"]
FALLBACK_WEIGHTS = ["pytorch_model.bin"]


class ModelCacheError(Exception):
    """The model is not cached and could not be downloaded; one line."""


def model_name(train_py: str) -> str | None:
    name = values(train_py).get("MODEL_NAME")
    return name if isinstance(name, str) else None


def needs_download(name: str) -> bool:
    """A hub id (owner/name), not the bundled "minilm" and not a local folder."""
    return name != "minilm" and not Path(name).expanduser().exists() and name.count("/") == 1


def ensure_cached(name: str | None) -> str | None:
    """Download `name` into the cache when it is a hub model not cached yet; returns a note, or None."""
    if not name or not needs_download(name):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        snapshot_download(name, allow_patterns=PATTERNS, local_files_only=True)
        return None
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    try:
        folder = Path(snapshot_download(name, allow_patterns=PATTERNS))
        if not any(folder.glob("*.safetensors")):
            snapshot_download(name, allow_patterns=FALLBACK_WEIGHTS)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelCacheError(f"model {name!r} is not in the local Hugging Face cache and could not be "
                              f"downloaded ({reason}); check the network, or set MODEL_NAME to a local "
                              "folder or \"minilm\"") from None
    return f"downloaded model {name} into the Hugging Face cache"
