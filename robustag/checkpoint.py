"""Save and load trained embedding models: a state dict and the plain config that built it.

Loading uses `torch.load(weights_only=True)`: a checkpoint holds tensors and plain Python
values only, so opening one never runs code from the file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from robustag.errors import ParameterError, RobustagError
from robustag.models import EmbeddingModel
from robustag.preprocess import TagSplit
from robustag.training import TrainConfig, build_model

FORMAT = 1


def checkpoint_bytes(model: EmbeddingModel, config: TrainConfig, split: TagSplit, extra: dict | None = None) -> bytes:
    """A checkpoint as bytes, as a worker hands a trained model back to the process that caches it;
    `extra` holds plain values such as the training history."""
    payload = {
        "format": FORMAT,
        "config": config.describe(),
        "dataset": split.name,
        "split": split.options.describe(),
        "sizes": [split.n_users, split.n_items, split.n_tags],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_model(path: Path, model: EmbeddingModel, config: TrainConfig, split: TagSplit, extra: dict | None = None) -> None:
    write_checkpoint(path, checkpoint_bytes(model, config, split, extra))


def write_checkpoint(path: Path, data: bytes) -> None:
    """Write atomically: a killed run never leaves half a checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise RobustagError(f"{path}: is a folder; a model is saved to a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RobustagError(f"{path}: could not be written ({reason}); nothing was saved") from error
    finally:
        tmp.unlink(missing_ok=True)  # a failed save leaves nothing behind


def load_model(path: Path | bytes, split: TagSplit, device: torch.device, with_extra: bool = False):
    """(model, config), or (model, config, extra) with `with_extra`, from a file or from a
    checkpoint's bytes (`checkpoint_bytes`)."""
    if isinstance(path, bytes):
        source, path = io.BytesIO(path), "the cached model"
    else:
        path = source = Path(path)
        if not path.is_file():
            raise ParameterError("load", "file not found", path)
    try:
        saved = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ParameterError("load", f"not a robustag checkpoint ({type(error).__name__}: {error})", path) from error
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ParameterError("load", f"not a robustag checkpoint of format {FORMAT}", path)
    sizes = [split.n_users, split.n_items, split.n_tags]
    if saved["dataset"] != split.name or saved["sizes"] != sizes or saved["split"] != split.options.describe():
        raise ParameterError(
            "load", f"trained on {saved['dataset']} {saved['split']} with sizes {saved['sizes']}, "
            f"but this run uses {split.name} {split.options.describe()} with sizes {sizes}", path
        )
    try:
        config = TrainConfig.from_description(saved["config"])
    except RobustagError as error:
        raise ParameterError("load", str(error), path) from error
    model = build_model(split, config)
    model.load_state_dict(saved["state_dict"])
    model = model.to(device).eval()
    return (model, config, saved.get("extra", {})) if with_extra else (model, config)
