"""Training recipes: a TOML file read into typed, documented config objects, checked before any heavy work.

Every field below is a recipe key (``[section] field = value``); ``--set section.field=value`` overrides
one, its value parsed as TOML (bare words are taken as strings). Relative paths are relative to the
folder ``tatk`` runs from (the repository root in the shipped recipes).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from tatk.errors import UserError
from tatk.train.checks import check_recipe
from tatk.train.projector_config import KIND_TABLES, MoeConfig, MosaConfig, QformerConfig


@dataclass
class RunConfig:
    name: str = "run"  #: run folder is <out_dir>/<name>: checkpoints, metrics.jsonl, recipe.toml
    out_dir: str = "runs"  #: parent of run folders
    seed: int = 0  #: seeds weights init and the data order; same seed → same run


@dataclass
class FeaturesConfig:
    encoder: str = ""  #: encoder id the shards were made with; must equal every manifest's encoder.id
    dim: int = 0  #: feature size per frame; must equal every manifest's encoder.dim
    normalize: str = "utterance"  #: none | utterance (mean/var per clip) | global (manifest stats)
    window: str = ""  #: encoder window the shards were made with: 30s | fit (`tatk shard --window`); empty: read from the manifests, which must agree


@dataclass
class ModelConfig:
    llm: str = "Qwen/Qwen3-0.6B"  #: causal LM: Hub id or local folder
    prompt: str = "Transcribe: "  #: user-turn text placed before the audio in the LLM's chat template (an LLM without one: plain text, then the audio and a newline)
    decoder: str = "frozen"  #: frozen (stage 1) | lora (adapters from [lora]) | full (every LLM weight trained)
    encoder: str = "frozen"  #: frozen | lora (adapters from [encoder_lora]; needs data.content = "audio")
    init_from: str = ""  #: checkpoint folder of an earlier stage whose trained weights are loaded first


@dataclass
class LoraConfig:
    r: int = 64  #: adapter rank
    alpha: int = 32  #: scaling numerator: the update is (alpha / r) · B·A
    dropout: float = 0.05  #: dropout on the adapter's input
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  #: LLM Linear names, or ["all-linear"]


@dataclass
class EncoderLoraConfig:
    """LoRA adapters on the audio encoder (model.encoder = "lora"); see tatk/train/tower.py."""

    r: int = 8  #: adapter rank
    alpha: int = 16  #: scaling numerator: the update is (alpha / r) · B·A; 16 at r 8 is the common alpha = 2r
    dropout: float = 0.05  #: dropout on the adapter's input
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj"])  #: encoder Linear names; every encoder's attention has q_proj, k_proj, v_proj (+ o_proj in GLM-ASR, out_proj in Whisper/HuBERT)


@dataclass
class ProjectorConfig:
    kind: str = "mlp"  #: mlp | swiglu | conv | mosa | moe | qformer (see tatk/model/projectors.py and docs/projectors.md)
    stack: int = 4  #: encoder frames per LLM position (conv: must be 4; qformer: qformer.window / qformer.queries)
    hidden: int = 2048  #: projector hidden width (qformer: its transformer width)
    train: bool = True  #: false keeps the projector as loaded from model.init_from (stage 2 with a fixed projector)
    mosa: MosaConfig | None = None  #: options of kind = "mosa" (only with that kind; defaults when absent)
    moe: MoeConfig | None = None  #: options of kind = "moe" (only with that kind; defaults when absent)
    qformer: QformerConfig | None = None  #: options of kind = "qformer" (only with that kind; defaults when absent)

    def __post_init__(self):
        if self.kind in KIND_TABLES and getattr(self, self.kind) is None:  # resolved recipes show every option
            setattr(self, self.kind, KIND_TABLES[self.kind]())


@dataclass
class ShardSet:
    path: str = ""  #: folder written by `tatk shard` (manifest.json + tars)
    split: str = "train"  #: split inside that folder (tar name prefix)
    weight: float = 1.0  #: share of training samples drawn from this set, relative to the others


@dataclass
class HeldOut:
    path: str = ""  #: folder written by `tatk shard` for validation
    split: str = "train"  #: split inside that folder


@dataclass
class DataConfig:
    train: list[ShardSet] = field(default_factory=list)  #: one [[data.train]] table per shard set
    val: HeldOut | None = None  #: held-out shards for validation loss and WER; none → no validation
    max_tokens: int = 4096  #: LLM positions per micro-batch (rows × longest row, padding included)
    group_size: int = 64  #: samples sorted by length together before being cut into batches
    shuffle_buffer: int = 512  #: samples in the streaming shuffle buffer
    round_shards: int = 4  #: units (tars, or sample ranges of a small set's tars) read interleaved per shuffle round (the unit of resumable data state)
    resample: bool = False  #: false: every set is read in epochs, each a seeded permutation of its tars dealt to the streams (each tar once per epoch); true: tars drawn at random with replacement
    short_first_epochs: float = 0.0  #: curriculum, short clips first: while a unit lies in its set's first N epochs (fractional: 0.05 is the first 5 % of the units dealt), only its clips of at most short_first_seconds train; the others are skipped there and counted (`short_skipped` in metrics.jsonl). 0: off
    short_first_seconds: float = 0.0  #: the longest clip used within short_first_epochs
    max_bad_tars: int = -1  #: unreadable or truncated tars skipped (with a warning) before training stops; -1: 1 % of all training tars, rounded up
    workers: int = 2  #: DataLoader worker processes per rank (0: read in the training process)
    content: str = "features"  #: what the shards hold: features (encoder output) | audio (`tatk shard --store audio`; the model runs the encoder)


@dataclass
class AugmentConfig:
    """Training-batch augmentation (tatk/train/augment.py): SpecAugment-style masking of stored features, and
    swapped tokens in the transcript history the decoder reads."""

    time_masks: int = 0  #: time masks per utterance (0: none); each spans 0..time_width frames
    time_width: int = 10  #: widest time mask, in encoder frames (GLM-ASR: 50 per second)
    freq_masks: int = 0  #: feature-dimension masks per utterance (0: none)
    freq_width: int = 8  #: widest feature-dimension mask, in dimensions
    token_swap: float = 0.0  #: share of the transcript tokens the decoder reads (teacher forcing) swapped for another transcript token of the batch, targets unchanged: it cannot lean on its history and must listen (0: none)


@dataclass
class OptimConfig:
    lr: float = 1e-4  #: peak learning rate (projector matrices)
    llm_lr: float = 2e-5  #: peak learning rate of trained LLM weights (LoRA adapters or the full decoder)
    encoder_lr: float = 2e-5  #: peak learning rate of the encoder's LoRA adapters (model.encoder = "lora")
    norm_lr: float = 1e-4  #: peak learning rate of norm gains and biases (no weight decay)
    weight_decay: float = 0.01  #: AdamW decay of projector matrices
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  #: AdamW betas
    warmup_steps: int = 500  #: linear warmup from 0, then cosine decay
    min_lr_ratio: float = 0.1  #: cosine floor as a fraction of the peak
    grad_clip: float = 1.0  #: max global grad norm (0: no clipping)


@dataclass
class TrainConfig:
    steps: int = 1000  #: optimizer steps; every rank takes exactly this many
    grad_accum: int = 1  #: micro-batches per optimizer step
    log_every: int = 10  #: steps between console/tracker lines
    eval_every: int = 1000  #: steps between validations (0: only at the end)
    save_every: int = 1000  #: steps between checkpoints (the last step is always saved)
    keep_checkpoints: int = 3  #: newest checkpoints kept on disk
    keep_best: str = ""  #: "" (off) | wer | val_loss: also keep the checkpoint with the lowest such validation value as <run>/best (`tatk eval RUN:best`, `tatk export RUN:best`); a validation that improves it saves a checkpoint
    precision: str = "auto"  #: auto (bf16 autocast on GPU, fp32 on CPU) | bf16 (autocast on any device: on a CPU, fast only with AVX512-BF16 or AMX instructions) | fp32; trained weights stay fp32 either way
    ctc_weight: float = 0.0  #: weight of an auxiliary CTC loss on the projected frames (0: off): a linear head (LLM width × vocabulary + 1 parameters; Qwen3-0.6B: 156 M) learns to read the transcript's tokens off the audio positions, which can teach a from-scratch decoder to listen sooner; trained at optim.lr, kept in checkpoints, not exported
    attention: str = "sdpa"  #: the LLM's attention implementation (transformers' attn_implementation): sdpa (PyTorch's fused kernels) | eager (matmul + softmax: on CPU, for rows of ~60 positions, a step in 0.76x sdpa's time, whose CPU backward is slow; docs/main-job.md) | flash_attention_2 (GPU, needs the flash-attn package)
    compile: bool = False  #: compile the LLM's decoder layers (torch.compile through Accelerate's compile_regions) for training forwards (dynamic shapes; validation and decoding stay eager): the first steps wait for the compiler (~1-2 min on 2 CPU cores, cached in /tmp/torchinductor_<user> for later runs), then the demo's CPU training loop takes a step in 0.79-0.90x eager's time (docs/main-job.md); not with DeepSpeed
    gradient_checkpointing: bool = False  #: recompute LLM activations in backward (lora/full decoders; also the encoder's with model.encoder = "lora"): less memory, more compute


@dataclass
class EvalConfig:
    max_samples: int = 1000  #: validation list: the first N utterances of data.val in manifest order, the same on any number of processes (0: the whole split)
    wer_samples: int = 64  #: the first N utterances of that list are also decoded greedily for WER
    max_new_tokens: int = 128  #: decoding limit per utterance


@dataclass
class LogConfig:
    wandb: str = "auto"  #: auto (online with an API key, else offline) | offline | off
    project: str = "tatk"  #: wandb project


@dataclass
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    encoder_lora: EncoderLoraConfig = field(default_factory=EncoderLoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name


def _convert(value, tp, key: str):
    """Check ``value`` (parsed TOML) against type hint ``tp``; build dataclasses; raise UserError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(value, inner, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a table, got {value!r}")
        hints = typing.get_type_hints(tp)
        unknown = sorted(set(value) - set(hints))
        if unknown:
            where = f"{key}.{unknown[0]}" if key else unknown[0]
            raise UserError(f"{where}: unknown recipe key (known here: {', '.join(hints)})")
        return tp(**{k: _convert(v, hints[k], f"{key}.{k}" if key else k) for k, v in value.items()})
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise UserError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _apply_override(raw: dict, item: str) -> None:
    """Apply one ``section.key=value`` (list items by index: ``data.train.0.weight=2``) to the raw TOML dict."""
    if "=" not in item:
        raise UserError(f"--set {item}: expected section.key=value")
    dotted, text = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word such as a model id or a path
    *parents, last = dotted.strip().split(".")
    node = raw
    for part in parents:
        node = node[int(part)] if isinstance(node, list) and part.isdigit() else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def load_recipe(path: Path, overrides: list[str], check_shards: bool = True) -> Recipe:
    """Read a TOML recipe, apply ``--set`` overrides, type-check it and check it against its shard manifests.

    ``check_shards=False`` skips the shard checks: a checkpoint's recipe.toml is read that way by eval
    and export, which must work where the training shards are not.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    for item in overrides:
        _apply_override(raw, item)
    recipe = _convert(raw, Recipe, "")
    check_recipe(recipe, check_shards)
    return recipe


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def render_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as TOML (defaults filled in); loading it back gives the same recipe."""
    lines: list[str] = []
    for section in dataclasses.fields(recipe):
        obj = getattr(recipe, section.name)
        scalars = {k: v for k, v in dataclasses.asdict(obj).items() if not isinstance(v, (dict, type(None)))
                   and not (isinstance(v, list) and v and isinstance(v[0], dict))}
        lines.append(f"[{section.name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
        lines.append("")
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines.append(f"[{section.name}.{f.name}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in dataclasses.asdict(value).items()] + [""]
            elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
                for item in value:
                    lines.append(f"[[{section.name}.{f.name}]]")
                    lines += [f"{k} = {_toml_value(v)}" for k, v in dataclasses.asdict(item).items()] + [""]
    return "\n".join(lines)
