"""``tatk export --aligner``: the CTC model that gives an export word timestamps (``tatk/model/align.py``).

A Hub id is recorded with its revision and loaded from the Hub when first used. A local folder is copied
into the export's ``aligner/`` subfolder (weights rewritten as safetensors), so the export loads from any
folder or machine and from the Hub once pushed; the original folder's name and content hash are recorded
for provenance (not its path, which a pushed export would publish).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tatk.errors import UserError, first_line

SUBFOLDER = "aligner"


@dataclass
class AlignerChoice:
    """A checked ``--aligner``: what goes into the exported config."""

    name: str  # Hub id, or the local folder it came from
    revision: str  # Hub commit, or sha256: of the local folder's files
    local: bool  # copied into the export's SUBFOLDER


def check_aligner(name: str) -> AlignerChoice:
    """Fail in one line, before any heavy work, unless ``name`` is a CTC model with a character tokenizer."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

    from tatk.shard.encoders import _revision

    try:
        config = AutoConfig.from_pretrained(name)
        vocab = AutoTokenizer.from_pretrained(name).get_vocab()
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--aligner {name}: cannot load a CTC model and its tokenizer ({first_line(e)})") from None
    if config.model_type not in MODEL_FOR_CTC_MAPPING_NAMES:
        known = ", ".join(sorted(MODEL_FOR_CTC_MAPPING_NAMES)[:6])
        raise UserError(f"--aligner {name}: model type {config.model_type!r} has no CTC head ({known}, ...)")
    if not any(len(token) == 1 and token.isalpha() for token in vocab):
        raise UserError(f"--aligner {name}: its vocabulary has no letters; forced alignment needs characters")
    local = Path(name).is_dir()
    return AlignerChoice(str(Path(name).resolve()) if local else name, _revision(name, config), local)


def bundle_aligner(choice: AlignerChoice, export_dir: Path) -> None:
    """Copy a local aligner into ``export_dir / SUBFOLDER`` (model, tokenizer, feature extractor)."""
    if not choice.local:
        return
    from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer

    dest = export_dir / SUBFOLDER
    try:
        AutoModelForCTC.from_pretrained(choice.name).save_pretrained(dest)  # safetensors, whatever the source held
        AutoTokenizer.from_pretrained(choice.name).save_pretrained(dest)
        AutoFeatureExtractor.from_pretrained(choice.name).save_pretrained(dest)
    except (OSError, ValueError) as e:
        raise UserError(f"--aligner {choice.name}: cannot copy it into the export ({first_line(e)})") from None


def config_fields(choice: AlignerChoice | None) -> dict:
    """The exported config's ``aligner*`` fields."""
    if choice is None:
        return {}
    name = Path(choice.name).name if choice.local else choice.name
    return {"aligner": name, "aligner_revision": choice.revision, "aligner_subfolder": SUBFOLDER if choice.local else ""}
