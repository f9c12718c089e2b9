"""The ``tatk`` command line. Each verb is a thin wrapper over one plain function; its docstring is the help."""

from __future__ import annotations

import os
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
    out: Annotated[Optional[Path], typer.Option(help="Output folder for the tars and manifest.json.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Hub dataset id (or a local dataset folder), streamed.")] = None,
    subset: Annotated[Optional[str], typer.Option(help="Dataset config name, e.g. 'medium' for LoquaciousSet.")] = None,
    local: Annotated[Optional[Path], typer.Option(help="Local corpus: folder with metadata.csv / *.jsonl (file,text) or LoquaciousSet parquet files.")] = None,
    split: Annotated[Optional[list[str]], typer.Option(help="Split to read; also the shard name prefix. Repeat for several splits, sharded in turn by one command. Default: train.")] = None,
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
    store: Annotated[str, typer.Option(help="What the shards hold: 'features' (the encoder's output; training never runs it) or 'audio' (16 kHz FLAC; training runs the encoder, so it can adapt it with LoRA).")] = "features",
    max_samples: Annotated[Optional[int], typer.Option(help="Stop after this many input rows (for trials).")] = None,
    workers: Annotated[int, typer.Option(help="Background processes reading units and decoding audio (each reads whole units).")] = 1,
    max_skip_fraction: Annotated[float, typer.Option(help="Stop when one skip reason covers more than this share of the first 1,000 rows or of any unit.")] = 0.5,
    verify: Annotated[Optional[Path], typer.Option(help="Check a shard folder instead: every unit done, every row counted, every tar readable and matching its sha256.")] = None,
    window: Annotated[Optional[str], typer.Option(help="GLM-ASR only: '30s' pads every clip to 30 s (the default, as GLM-ASR's processor does) or 'fit' pads each clip to its next whole second (several times less encoder work on short clips). Whisper is always 30s; waveform encoders always fit.")] = None,
) -> None:
    """Run a frozen audio encoder over a corpus once and write WebDataset shards of its features.

    The corpus is listed as units (source files, or 1,000-row blocks of a listing) that processes and
    workers claim one at a time. Re-running the same command, at any process or worker count, keeps
    finished units and redoes the rest. ``tatk shard --verify OUT`` checks a folder's completeness.
    """
    from tatk.data.corpus import CorpusSpec
    from tatk.shard.run import ShardConfig, run_shards

    if verify is not None:
        from rich.console import Console

        from tatk.shard.progress import print_verified
        from tatk.shard.verify import verify as verify_folder

        try:
            print_verified(Console(stderr=True), verify, verify_folder(verify))
        except UserError as e:
            _fail(str(e))
        return
    if out is None:
        _fail("give --out FOLDER (or --verify FOLDER to check one)")

    splits = split or ["train"]
    corpus = CorpusSpec(
        dataset=dataset, subset=subset, local=local, split=splits[0], audio_column=audio_column, text_column=text_column,
        id_column=id_column, speaker_column=speaker_column, text_transform=text_transform,
    )
    cfg = ShardConfig(
        out=out, corpus=corpus, encoder=encoder, max_seconds=max_seconds, batch_size=batch_size,
        shard_size_mb=shard_size_mb, dtype=dtype, store=store, max_samples=max_samples, workers=workers,
        max_skip_fraction=max_skip_fraction, window=window, command=" ".join(["tatk", *sys.argv[1:]]),
    )
    try:
        run_shards(cfg, splits)
    except UserError as e:
        _fail(str(e))


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="TOML recipe, e.g. recipes/stage1.toml.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe field, e.g. --set optim.lr=3e-4 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's latest checkpoint.")] = False,
) -> None:
    """Train from shards with Accelerate: ``accelerate launch tatk train recipes/stage1.toml``."""
    from tatk.train.recipe import load_recipe
    from tatk.train.loop import train as run_train

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
    from tatk.train.recipe import load_recipe, render_recipe

    try:
        print(render_recipe(load_recipe(recipe, set_ or [])))
    except UserError as e:
        _fail(str(e))


@app.command("eval")
def eval_(
    model: Annotated[Optional[str], typer.Argument(help="Checkpoint or run folder; with --dataset/--local also an export folder, a Hub id, or any transformers ASR model (a baseline: Whisper, wav2vec2-CTC, ...).")] = None,
    data: Annotated[Optional[list[Path]], typer.Option(help="Shard folder (tatk shard output): transcribe its stored features. Repeat for several test sets.")] = None,
    dataset: Annotated[Optional[list[str]], typer.Option(help="Hub dataset id or local dataset folder: transcribe its audio end to end. Repeatable.")] = None,
    subset: Annotated[Optional[str], typer.Option(help="Dataset config name (with --dataset).")] = None,
    local: Annotated[Optional[list[Path]], typer.Option(help="Local corpus folder (metadata.csv / *.jsonl / parquet): transcribe its audio. Repeatable.")] = None,
    split: Annotated[Optional[list[str]], typer.Option(help="Split to evaluate; repeat for several, each a test set of every source (one model load). Default: test.")] = None,
    audio_column: Annotated[str, typer.Option(help="Column holding the audio (LoquaciousSet: wav), as for tatk shard.")] = "wav",
    text_column: Annotated[str, typer.Option(help="Column holding the reference transcript.")] = "text",
    id_column: Annotated[str, typer.Option(help="Column holding the utterance id; missing → row index.")] = "ID",
    speaker_column: Annotated[str, typer.Option(help="Column holding the speaker id; optional.")] = "spk_id",
    text_transform: Annotated[str, typer.Option(help="Reference text transform, as for tatk shard: lower, upper or none.")] = "lower",
    max_samples: Annotated[Optional[int], typer.Option(help="Evaluate only the first N utterances of each test set.")] = None,
    batch_size: Annotated[int, typer.Option(help="Utterances per batch (length-sorted).")] = 16,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Decoding limit per utterance; default: the recipe's eval.max_new_tokens (baselines: their own).")] = None,
    num_beams: Annotated[int, typer.Option(help="Beam search with N beams; 1 is greedy decoding.")] = 1,
    metric: Annotated[str, typer.Option(help="Metrics shown in the table: wer, cer or wer,cer (summary.json always has both).")] = "wer",
    out: Annotated[Optional[Path], typer.Option(help="Output folder (several test sets: their parent, each in eval-<data>-<split>); default <model>/eval-<data>-<split>.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1...; default cuda when available.")] = None,
    compare: Annotated[Optional[tuple[Path, Path]], typer.Option(help="Compare two eval summaries (summary.json or their folders) instead.")] = None,
) -> None:
    """Measure normalised WER and CER (Whisper's English normaliser, corpus-level) and RTFx of a model.

    Writes utterances.jsonl (most errors first) and summary.json per test set. With --compare A B: two summaries side by side.
    """
    from tatk.evaluate.compare import compare as compare_summaries
    from tatk.evaluate.run import EvalOptions, run_evals
    from tatk.evaluate.tables import parse_metrics

    try:
        if compare:
            compare_summaries(*compare)
        elif model is None:
            raise UserError("give a MODEL (checkpoint, run or export folder, Hub id, transformers ASR model), or --compare A B")
        else:
            run_evals(EvalOptions(model=model, data=data, dataset=dataset, subset=subset, local=local, split=split or EvalOptions.split,
                                  max_samples=max_samples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                  num_beams=num_beams, out=out, device=device, metrics=parse_metrics(metric),
                                  audio_column=audio_column, text_column=text_column, id_column=id_column,
                                  speaker_column=speaker_column, text_transform=text_transform))
    except UserError as e:
        _fail(str(e))


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="Run folder written by `tatk train` (holds metrics.jsonl).")],
    eval_dirs: Annotated[Optional[list[Path]], typer.Option("--eval", help="`tatk eval` output folder (repeat to set held-out splits side by side); default: every RUN/eval*/ folder, oldest first, else the newest in RUN/checkpoints/.")] = None,
) -> None:
    """Write RUN/report/: a PNG of training loss and validation WER, the eval summary, the 10 worst and 10 best utterances;
    with several --eval folders, their WERs side by side (table and held-out.png)."""
    from tatk.evaluate.report import write_report

    try:
        out = write_report(run, eval_dirs)
    except UserError as e:
        _fail(str(e))
    print(f"report: {out / 'report.md'}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder, or a run folder (its newest checkpoint).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (new, empty, or an earlier export, which is replaced).")],
    merged: Annotated[Optional[bool], typer.Option("--merged/--no-merged", help="Store every weight (encoder, LLM with LoRA merged): works without the base models. Default: merged when a base model is a local folder, references for Hub ids; --no-merged keeps references (absolute paths) to local folders too: such an export loads on this machine only, and tatk push refuses it.", show_default=False)] = None,
    eval_summary: Annotated[Optional[Path], typer.Option("--eval", help="summary.json from `tatk eval`: its results go in the model card.")] = None,
    license: Annotated[str, typer.Option(help="License id for the model card's metadata.")] = "apache-2.0",
    aligner: Annotated[Optional[str], typer.Option(help="CTC model (Hub id or folder, e.g. facebook/wav2vec2-base-960h) for word timestamps; a folder is copied in.")] = None,
) -> None:
    """Write a Hub-ready model folder: pipeline("automatic-speech-recognition", model=OUT_DIR, trust_remote_code=True)."""
    from tatk.export import export as run_export

    try:
        out = run_export(checkpoint, out_dir, merged=merged, eval_summary=eval_summary, license=license, aligner=aligner)
    except UserError as e:
        _fail(str(e))
    print(f"exported: {out}")


@app.command()
def push(
    export_dir: Annotated[Path, typer.Argument(help="Folder written by `tatk export`.")],
    repo_id: Annotated[str, typer.Argument(help="Hub model repository, e.g. you/tatk-asr (created if missing).")],
    private: Annotated[bool, typer.Option(help="Create the repository as private.")] = False,
    revision: Annotated[Optional[str], typer.Option(help="Branch to upload to (created if missing); default main.")] = None,
    message: Annotated[str, typer.Option(help="Commit message.")] = "Upload tatk model",
    dry_run: Annotated[bool, typer.Option(help="Only validate the folder (and the Space) and list what would be uploaded.")] = False,
    space: Annotated[Optional[str], typer.Option(help="Also publish a demo page for the model: a Gradio Space, e.g. you/tatk-asr-demo (created if missing).")] = None,
) -> None:
    """Upload an export folder to the Hub. The token comes from HF_TOKEN or a cached `hf auth login`."""
    from tatk.export import push as run_push
    from tatk.export.space import push_space

    try:
        files = run_push(export_dir, repo_id, private=private, revision=revision, message=message, dry_run=dry_run)
        space_files = push_space(repo_id, space, private=private, dry_run=dry_run) if space else []
    except UserError as e:
        _fail(str(e))
    _list_files(files, repo_id, dry_run)
    if space:
        _list_files(space_files, f"Space {space}", dry_run)


def _list_files(files: list[tuple[str, int]], where: str, dry_run: bool) -> None:
    for name, size in files:
        print(f"{size:>14,}  {name}")
    total = sum(size for _, size in files)
    print(f"{'would upload' if dry_run else 'uploaded'} {len(files)} files, {total:,} bytes to {where}")


@app.command()
def space(
    model_id: Annotated[str, typer.Argument(help="Hub model repository the Space demos, e.g. you/tatk-asr.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write app.py, requirements.txt and README.md into.")],
    license: Annotated[str, typer.Option(help="License id for the Space's metadata.")] = "apache-2.0",
) -> None:
    """Write a Hugging Face Space folder (Gradio) that demos MODEL_ID; try it with TATK_MODEL=EXPORT_DIR python OUT_DIR/app.py."""
    from tatk.export.space import write_space

    try:
        files = write_space(model_id, out_dir, license=license)
    except UserError as e:
        _fail(str(e))
    for name, size in files:
        print(f"{size:>14,}  {name}")
    print(f"wrote a Space for {model_id}: {out_dir}")


@app.command()
def demo(
    model: Annotated[str, typer.Argument(help="Checkpoint, run or export folder, or Hub id.")],
    port: Annotated[int, typer.Option(help="Port to serve the page on.")] = 7860,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the page to your network.")] = "127.0.0.1",
    share: Annotated[bool, typer.Option(help="Also open a temporary public gradio.live link.")] = False,
    max_seconds: Annotated[float, typer.Option(help="Refuse uploads longer than this, in seconds.")] = 120.0,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1...; default cuda when available.")] = None,
) -> None:
    """Try a model in the browser: upload or record audio and read the transcript (a Gradio page on http://HOST:PORT)."""
    from tatk.export.demo import DemoOptions, run_demo

    try:
        run_demo(DemoOptions(model=model, host=host, port=port, share=share, max_seconds=max_seconds, device=device))
    except UserError as e:
        _fail(str(e))


# oneDNN, PyTorch's CPU kernels for bf16 matrix products and for convolutions, compiles a kernel for every
# shape it meets and keeps the last 1,024. A training stream's batches come in many widths and lengths, so
# a CPU run outgrows that cache within a few hundred steps and then compiles kernels again at every step: the
# main job's bf16 steps took ~1.45x as long from step ~700 on (docs/main-job.md). Same kernels, same sums; read
# by oneDNN when it makes its first kernel, so set here, before any verb runs. The price is memory (the main
# job's training peaked at 5.7 GB instead of 3.3): a value set by the user stays.
ONEDNN_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def main() -> None:
    os.environ.setdefault(ONEDNN_CACHE, "65536")
    app()
