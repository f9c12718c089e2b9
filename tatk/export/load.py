"""The transformers pipeline users get, for anything tatk can name: a checkpoint or run folder (exported to a
temporary folder first), an export folder, or a Hub id."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from tatk.errors import UserError, first_line
from tatk.export.build import export
from tatk.export.push import check_export


def load_pipeline(model: str, device: str = "cpu"):
    """A transformers ASR pipeline for a checkpoint or run folder (exported to a temporary folder first, so
    it is exactly what users get), an export folder or a Hub id. Call it with paths, arrays or
    ``{"raw": wave, "sampling_rate": sr}`` dicts, or lists of those with ``batch_size``."""
    from transformers import pipeline

    dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    path = Path(model)

    def build(where: str):
        try:
            return pipeline("automatic-speech-recognition", model=where, trust_remote_code=True, device=device, dtype=dtype)
        except (OSError, LookupError) as e:  # LookupError: a base model the export names is missing (MissingBaseModel)
            raise UserError(f"{model}: cannot load the model ({first_line(e)})") from None

    if path.is_dir() and (path / "recipe.toml").is_file():
        with tempfile.TemporaryDirectory(prefix="tatk-export-") as tmp:
            return build(str(export(path, Path(tmp) / "model", merged=False)))  # references: no copy of the bases
    if path.is_dir():
        check_export(path)
    return build(model)
