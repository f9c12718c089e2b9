"""A Hugging Face Space that demos a pushed model: ``tatk space`` writes its folder, ``tatk push --space`` uploads it.

The folder holds ``app.py`` (``tatk/export/app.py`` verbatim, its ``MODEL_ID`` set to the model's Hub id),
``requirements.txt`` (what the model code needs, pinned to the versions installed here, so the Space runs
what was tested) and ``README.md`` (the Space's YAML header: sdk gradio at the installed gradio version,
app_file, the model it uses).
"""

from __future__ import annotations

import ast
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tatk.errors import UserError, first_line
from tatk.files import atomic_write_text

# What the exported model code and app.py import (gradio itself comes from the header's sdk_version).
PACKAGES = ("torch", "transformers", "numpy", "safetensors", "huggingface_hub", "soundfile", "soxr")
FILES = ("README.md", "app.py", "requirements.txt")
APP = Path(__file__).with_name("app.py")


def _pin(name: str) -> str:
    """``name==X.Y.Z`` at the installed version, without a local label (``2.13.0+cpu`` is PyPI's ``2.13.0``)."""
    try:
        return f"{name}=={version(name).split('+')[0]}"
    except PackageNotFoundError:
        raise UserError(f"{name} is not installed here, so its version cannot be pinned for the Space") from None


def _check_id(repo_id: str, what: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"{what} {repo_id!r}: not a Hub repository id ({first_line(e)})") from None
    if "/" not in repo_id:
        raise UserError(f"{what} {repo_id!r}: give it as owner/name")


def app_source(model_id: str) -> str:
    """``tatk/export/app.py`` with ``MODEL_ID = None`` replaced by the model's id."""
    source, line = APP.read_text(), "MODEL_ID = None"
    if source.count(line) != 1:
        raise RuntimeError(f"{APP}: expected one line starting {line!r}")
    return source.replace(line, f"MODEL_ID = {model_id!r}")


def space_card(model_id: str, license: str) -> str:
    """README.md: the Space's YAML header (huggingface_hub's ``SpaceCardData``) and a short description."""
    from huggingface_hub import SpaceCard, SpaceCardData

    data = SpaceCardData(title=model_id.split("/")[-1][:30], sdk="gradio", sdk_version=version("gradio"),
                         python_version=".".join(platform.python_version_tuple()[:2]), app_file="app.py",
                         models=[model_id], license=license, tags=["tatk", "automatic-speech-recognition"],
                         emoji="🎙️", colorFrom="blue", colorTo="indigo", pinned=False)
    body = (f"# {model_id}\n\nUpload or record audio and read its transcript, from [{model_id}]"
            f"(https://huggingface.co/{model_id}), a speech recognizer trained with tatk.\n")
    return str(SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def write_space(model_id: str, out_dir: str | Path, license: str = "apache-2.0") -> list[tuple[str, int]]:
    """Write the Space folder for ``model_id`` (a Hub model id) into ``out_dir``; returns (file, bytes)."""
    _check_id(model_id, "model")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    texts = {"app.py": app_source(model_id), "requirements.txt": "\n".join(map(_pin, PACKAGES)) + "\n",
             "README.md": space_card(model_id, license)}
    for name, text in texts.items():
        atomic_write_text(out / name, text)
    return check_space(out)


def check_space(folder: str | Path) -> list[tuple[str, int]]:
    """Validate a Space folder (its three files; app.py parses; each requirement is ``name==version``; the
    header says sdk gradio, app_file app.py and names a model); returns (file, bytes) of each file."""
    from huggingface_hub import SpaceCard
    from packaging.requirements import InvalidRequirement, Requirement

    folder = Path(folder)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{folder}: not a Space folder (missing {missing[0]})")
    try:
        ast.parse((folder / "app.py").read_text())
    except SyntaxError as e:
        raise UserError(f"{folder / 'app.py'}: not valid Python ({first_line(e)})") from None
    for line in (folder / "requirements.txt").read_text().splitlines():
        try:
            pinned = [s for s in Requirement(line).specifier if s.operator == "=="]
        except InvalidRequirement as e:
            raise UserError(f"{folder / 'requirements.txt'}: {line!r} ({first_line(e)})") from None
        if not pinned:
            raise UserError(f"{folder / 'requirements.txt'}: {line!r} is not pinned (name==version)")
    meta = SpaceCard.load(folder / "README.md").data
    if meta.sdk != "gradio" or meta.app_file != "app.py" or not meta.models:
        raise UserError(f"{folder / 'README.md'}: header needs sdk: gradio, app_file: app.py and models")
    return [(f, (folder / f).stat().st_size) for f in FILES]


def push_space(model_id: str, space_id: str, private: bool = False, license: str = "apache-2.0",
               dry_run: bool = False) -> list[tuple[str, int]]:
    """Write the Space for ``model_id`` to a temporary folder, validate it and (unless ``dry_run``) upload it
    to the Space ``space_id`` (created with sdk gradio if missing); returns its files. The token comes from
    huggingface_hub's usual places; it is never printed."""
    import tempfile

    _check_id(space_id, "Space")
    with tempfile.TemporaryDirectory(prefix="tatk-space-") as tmp:
        files = write_space(model_id, tmp, license=license)
        if not dry_run:
            _upload(tmp, space_id, private, f"Demo of {model_id}")
    return files


def _upload(folder: str, space_id: str, private: bool, message: str) -> None:
    from huggingface_hub import HfApi

    from tatk.export.push import push_error

    api = HfApi()
    try:
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=space_id, repo_type="space", commit_message=message)
    except Exception as e:  # noqa: BLE001  one line for network, token, repository errors (push_error)
        raise push_error(e, f"the Space {space_id}", None) from None
