"""``tatk push``: validate an export folder and upload it to a Hub model repository with huggingface_hub."""

from __future__ import annotations

import json
from pathlib import Path

from tatk.errors import UserError, first_line
from tatk.export.build import AUTO_MAP, REQUIRED


def check_export(folder: str | Path) -> list[tuple[str, int]]:
    """Validate an export folder (config with auto_map, code, readable weights, tokenizer, preprocessor);
    returns (relative path, bytes) of every file that would be uploaded."""
    return _checked(folder)[1]


def _checked(folder: str | Path) -> tuple[dict, list[tuple[str, int]]]:
    """``check_export``, also returning the folder's config.json (read once)."""
    from safetensors import safe_open

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{folder}: not a tatk export (missing {missing[0]})")
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as e:
        raise UserError(f"{folder / 'config.json'}: not valid JSON ({first_line(e)})") from None
    if config.get("auto_map", {}).get("AutoModel") != AUTO_MAP["AutoModel"] or "custom_pipelines" not in config:
        raise UserError(f"{folder / 'config.json'}: no tatk auto_map / custom_pipelines (not written by tatk export)")
    for f in sorted(folder.rglob("*.safetensors")):  # the aligner/ subfolder's too
        try:
            with safe_open(str(f), "pt"):  # checks the header against the file's size
                pass
        except Exception as e:  # noqa: BLE001  safetensors raises its own types for truncated or garbled files
            raise UserError(f"{f}: cannot read weights ({first_line(e)})") from None
    return config, [(str(p.relative_to(folder)), p.stat().st_size) for p in sorted(folder.rglob("*"))
                    if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def push(export_dir: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         message: str = "Upload tatk model", dry_run: bool = False) -> list[tuple[str, int]]:
    """Upload an export folder to a Hub model repository (created if missing); returns the files. An export
    that references a local base folder (``tatk export --no-merged``) is refused: it would not load elsewhere.

    The token comes from huggingface_hub's usual places (``HF_TOKEN``, a cached login); it is never printed.
    """
    config, files = _checked(export_dir)
    if not config.get("merged"):  # --no-merged: bases by reference, and a local one only exists on this machine
        for part in ("encoder", "llm"):
            if Path(str(config.get(part, ""))).is_absolute():
                raise UserError(f"{export_dir}: its {part} is the local folder {config[part]}, which nobody who loads "
                                "the model from the Hub has; re-export with `tatk export --merged` to push it")
    if dry_run:
        return files
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(folder_path=str(export_dir), repo_id=repo_id, revision=revision, commit_message=message,
                          ignore_patterns=[".*", "**/.*"])
    except Exception as e:  # noqa: BLE001  every failure becomes one line; push_error re-raises what it does not know
        raise push_error(e, repo_id, revision) from None
    return files


def push_error(e: Exception, repo_id: str, revision: str | None) -> UserError:
    """One ``error:`` line for a failed upload: no network, a rejected or read-only token, a missing repository
    or revision, another HTTP error. The token never appears (scrubbed from the server's text, too). Exceptions
    that are not about the Hub or the network are re-raised: they are bugs, and their traceback is wanted."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"cannot push to {repo_id}"
    if isinstance(e, OfflineModeIsEnabled):
        why = "HF_HUB_OFFLINE is set (unset it to reach the Hub)"
    elif isinstance(e, LocalTokenNotFoundError):
        why = "no Hugging Face token (set HF_TOKEN or run `hf auth login`)"
    elif isinstance(e, RevisionNotFoundError):
        why = f"revision {revision or 'main'!r} not found"
    elif isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else None
        why = {401: "the token was rejected (401: invalid or expired; set HF_TOKEN or run `hf auth login`)",
               403: "the token may not write there (403: read-only token, or not your namespace; use a write token)",
               }.get(status) or ("repository not found, or the token cannot see it (404)" if isinstance(e, RepositoryNotFoundError)
                                 or status == 404 else f"the Hub answered {status}: {first_line(e)}")
    elif isinstance(e, (httpx2.TransportError, ConnectionError, TimeoutError)):
        why = f"cannot reach the Hub at {constants.ENDPOINT} ({type(e).__name__}: {first_line(e)})"
    elif isinstance(e, (OSError, ValueError, httpx2.HTTPError)):  # local files, bad repo ids
        why = first_line(e)
    else:
        raise e
    token = get_token()
    return UserError(f"{where}: {why.replace(token, '***') if token else why}")
