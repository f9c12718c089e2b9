"""The ``tatk`` command line. Each verb is a thin wrapper over one plain function; its docstring is the help."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tatk.errors import UserError

app = typer.Typer(
    name="tatk",
    help="Tiny Audio Training Kit: shard a corpus through a frozen encoder once, then train an LLM-based recognizer.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def shard(
    out: Annotated[Path, typer.Option(help="Output folder for the tars and manifest.json.")],
    dataset: Annotated[Optional[str], typer.Option(help="Hub dataset id (or a local dataset folder), streamed.")] = None,
    subset: Annotated[Optional[str], typer.Option(help="Dataset config name, e.g. 'medium' for LoquaciousSet.")] = None,
    local: Annotated[Optional[Path], typer.Option(help="Local corpus: folder with metadata.csv / *.jsonl (file,text) or LoquaciousSet parquet files.")] = None,
    split: Annotated[str, typer.Option(help="Split to read; also the shard name prefix.")] = "train",
    encoder: Annotated[str, typer.Option(help="Encoder: Hub id or local folder (GLM-ASR, Whisper, HuBERT/wav2vec2), or 'mel' / 'mel:N' for N-bin log-mel.")] = "zai-org/GLM-ASR-Nano-2512",
    audio_column: Annotated[str, typer.Option(help="Column holding the audio (LoquaciousSet: wav).")] = "wav",
    text_column: Annotated[str, typer.Option(help="Column holding the transcript.")] = "text",
    id_column: Annotated[str, typer.Option(help="Column holding the utterance id; missing → row index.")] = "ID",
    speaker_column: Annotated[str, typer.Option(help="Column holding the speaker id; optional.")] = "spk_id",
    text_transform: Annotated[str, typer.Option(help="Target text transform: lower, upper or none.")] = "lower",
    max_seconds: Annotated[float, typer.Option(help="Skip (and count) clips longer than this.")] = 30.0,
    batch_size: Annotated[int, typer.Option(help="Utterances per encoder forward (length-sorted).")] = 16,
    shard_size_mb: Annotated[float, typer.Option(help="Target size of one tar, in MB.")] = 256.0,
    dtype: Annotated[str, typer.Option(help="Stored feature dtype: float16 or float32.")] = "float16",
    max_samples: Annotated[Optional[int], typer.Option(help="Stop after this many input rows (for trials).")] = None,
    workers: Annotated[int, typer.Option(help="Background processes decoding and resampling audio.")] = 1,
) -> None:
    """Run a frozen audio encoder over a corpus once and write WebDataset shards of its features.

    Re-running the same command resumes: finished shards are verified and kept, the rest are redone.
    Under ``accelerate launch`` each process takes every N-th utterance and writes its own shards.
    """
    from tatk.corpus import CorpusSpec
    from tatk.shard import ShardConfig, run_shard

    corpus = CorpusSpec(
        dataset=dataset, subset=subset, local=local, split=split, audio_column=audio_column, text_column=text_column,
        id_column=id_column, speaker_column=speaker_column, text_transform=text_transform,
    )
    cfg = ShardConfig(
        out=out, corpus=corpus, encoder=encoder, max_seconds=max_seconds, batch_size=batch_size,
        shard_size_mb=shard_size_mb, dtype=dtype, max_samples=max_samples, workers=workers,
        command=" ".join(["tatk", *sys.argv[1:]]),
    )
    try:
        run_shard(cfg)
    except UserError as e:
        _fail(str(e))


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="TOML recipe, e.g. recipes/stage1.toml.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe field, e.g. --set optim.lr=3e-4 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's latest checkpoint.")] = False,
) -> None:
    """Train from shards with Accelerate: ``accelerate launch tatk train recipes/stage1.toml``."""
    from tatk.recipes import load_recipe
    from tatk.train import train as run_train

    try:
        run_train(load_recipe(recipe, set_ or []), resume=resume)
    except UserError as e:
        _fail(str(e))


@app.command()
def validate(
    recipe: Annotated[Path, typer.Argument(help="TOML recipe to check.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe field (repeatable).")] = None,
) -> None:
    """Check a recipe against its shards and print it fully resolved."""
    from tatk.recipes import load_recipe, render_recipe

    try:
        print(render_recipe(load_recipe(recipe, set_ or [])))
    except UserError as e:
        _fail(str(e))


def main() -> None:
    app()
