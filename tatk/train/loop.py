"""The training loop, read top to bottom: setup → (resume) → train steps → validate / checkpoint → finish.

Runs under ``accelerate launch`` (one process per GPU, or ``ACCELERATE_USE_CPU=true`` CPU processes) and
as a plain ``tatk train`` (one process). Only the model and optimizer go through ``accelerator.prepare``:
each rank builds its own data stream (tatk/train/stream.py) so ranks see disjoint samples and take exactly
``train.steps`` steps; the LR scheduler is stepped once per optimizer step and saved via
``register_for_checkpointing`` (a prepared scheduler would step once per process).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, gather_object, set_seed
from rich.console import Console

from tatk.train.collate import Codec
from tatk.train.stream import DataPosition, train_loader, val_batches
from tatk.train.checkpoint import checkpoints, load_weights, save_checkpoint
from tatk.errors import UserError
from tatk.train.speechlm import IGNORE, build_model
from tatk.train.recipe import Recipe, render_recipe
from tatk.files import atomic_write_text
from tatk.shard.format import read_split
from tatk.train.zero import configure as configure_deepspeed
from tatk.train.zero import deepspeed_stage

# Dense bf16 tensor-core peaks (FLOP/s) for MFU; an unknown GPU just gets no MFU column.
PEAK_BF16 = {"A40": 149.7e12, "A100": 312e12, "H100": 989e12, "H200": 989e12, "L40S": 362e12, "L4": 121e12,
             "A10": 125e12, "4090": 165e12, "3090": 71e12}


def param_groups(model, o) -> list[dict]:
    """AdamW groups for the trainable parameters only (frozen weights never reach the optimizer).

    Matrices decay; norm gains and biases do not (decaying them just shrinks the scale). LLM weights
    (LoRA adapters or the full decoder) get their own, usually much lower, learning rate ``o.llm_lr``,
    and the encoder's LoRA adapters theirs, ``o.encoder_lr``.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    part = lambda n: n.split(".", 1)[0] if n.startswith(("llm.", "encoder.")) else "adapter"  # noqa: E731
    groups = []
    for name, lr, norm_lr in (("adapter", o.lr, o.norm_lr), ("llm", o.llm_lr, o.llm_lr), ("encoder", o.encoder_lr, o.encoder_lr)):
        mine = [p for n, p in trainable if part(n) == name]
        groups += [{"name": f"{name}_matrices", "params": [p for p in mine if p.ndim >= 2], "lr": lr, "weight_decay": o.weight_decay},
                   {"name": f"{name}_norms_biases", "params": [p for p in mine if p.ndim < 2], "lr": norm_lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def warmup_cosine(warmup: int, total: int, floor: float):
    """LR multiplier for optimizer step s (0-based): linear warmup, then cosine down to ``floor``."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        progress = min((s - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def wandb_mode(setting: str) -> str | None:
    """'off' → no tracker; 'auto' → online only when a key is configured (never blocks asking for one)."""
    if setting != "auto":
        return None if setting == "off" else setting
    netrc = Path.home() / ".netrc"
    logged_in = os.environ.get("WANDB_API_KEY") or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    return "online" if logged_in else "offline"


@torch.no_grad()
def evaluate(model, recipe: Recipe, codec: Codec, accelerator: Accelerator, lockstep: bool = False) -> dict:
    """Validation loss over the held-out shards and WER of greedy transcripts, summed over ranks.

    ``lockstep`` (ZeRO-3 on several ranks, where every forward all-gathers weights from all ranks): ranks
    run the same number of forwards and generate calls; a rank out of batches repeats its last one, uncounted.

    WER is normalised exactly as `tatk eval` computes it (tatk/wer.py), so the two numbers mean the same."""
    from tatk.wer import score

    model.eval()
    loss_sum, pairs = torch.zeros(2, device=accelerator.device), []
    stream = val_batches(recipe, codec, accelerator.process_index, accelerator.num_processes)
    limit, i, batch = recipe.eval.max_batches or math.inf, 0, None
    while True:
        raw = next(stream, None) if i < limit else None
        need = recipe.eval.wer_samples - len(pairs)
        more, decode = raw is not None, raw is not None and need > 0
        if lockstep:  # go on while any rank has a batch / still decodes
            flags = accelerator.reduce(torch.tensor([more, decode], dtype=torch.float32, device=accelerator.device), "sum")
            more, decode = bool(flags[0] > 0), bool(flags[1] > 0)
            if more and raw is None and batch is None:
                raise UserError(f"data.val: process {accelerator.process_index} got no held-out batch; "
                                "use more held-out utterances than processes")
        if not more:
            break
        if raw is not None:
            texts = raw["texts"]
            batch = {k: v.to(accelerator.device) for k, v in raw.items() if torch.is_tensor(v)}
        n = int((batch["labels"][:, 1:] != IGNORE).sum()) if raw is not None else 0
        with accelerator.autocast():
            loss_sum += torch.stack([model(batch).float() * n, torch.tensor(float(n), device=accelerator.device)])
            if decode:
                k = max(need, 1)
                hyps = model.generate(batch["feats"][:k], batch["feat_lens"][:k], recipe.eval.max_new_tokens)
                if raw is not None and need > 0:
                    pairs += list(zip(texts[:need], hyps))
        i += 1
    model.train()
    loss_sum = accelerator.reduce(loss_sum, "sum")
    pairs = gather_object(pairs)
    return {"val_loss": (loss_sum[0] / loss_sum[1]).item(),
            "wer": score([r for r, _ in pairs], [h for _, h in pairs]).wer}


def train(recipe: Recipe, resume: bool) -> None:
    """Train ``recipe``'s projector (and LLM adapters or decoder) for ``train.steps`` steps; ``resume``
    continues from the newest checkpoint."""
    # ---- setup: where things go, and fail on a bad run folder before loading anything heavy
    run_dir, ckpt_root = recipe.run_dir, recipe.run_dir / "checkpoints"
    found = checkpoints(ckpt_root)
    if resume and not found:
        raise UserError(f"--resume: no checkpoint in {ckpt_root}")
    if not resume and found:
        raise UserError(f"run.name: {run_dir} already has checkpoints; pass --resume or pick another run.name")
    cuda = torch.cuda.is_available()
    tracker = wandb_mode(recipe.log.wandb)
    # DeepSpeed on CPU (the tests) has no NCCL: its process group must be told to use gloo
    cpu_deepspeed = not cuda and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    # bf16 autocast on GPU (tensor cores); exact fp32 on CPU, where bf16 is slow and breaks exact-loss tests
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", log_with="wandb" if tracker else None,
                              project_dir=str(run_dir),
                              kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if cpu_deepspeed else None)
    zero = deepspeed_stage(accelerator)  # None: DDP or one process; else the ZeRO stage (tatk/train/zero.py)
    if zero is not None:
        configure_deepspeed(accelerator, recipe)
    console = Console(quiet=not accelerator.is_main_process, highlight=False)
    set_seed(recipe.run.seed)
    recipe_text = render_recipe(recipe)
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "recipe.toml", recipe_text)

    # ---- model: a frozen or LoRA'd LLM keeps bf16 weights on GPU (never updated: half the memory); a
    # fully trained one keeps fp32 master weights under bf16 autocast. Projector and adapters are fp32.
    stats = read_split(recipe.data.train[0].path, recipe.data.train[0].split).get("stats")
    llm_dtype = torch.bfloat16 if cuda and recipe.model.decoder != "full" else torch.float32
    model = build_model(recipe, stats, llm_dtype)
    if recipe.model.init_from and not resume:  # stage chaining: start from the previous stage's weights
        load_weights(model, Path(recipe.model.init_from), allow_new=True)
        console.print(f"loaded trained weights from {recipe.model.init_from}")
    if recipe.train.gradient_checkpointing:  # recompute LLM activations in backward: less memory, ~30% more compute
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = model.to(accelerator.device)
    codec = Codec(model.tokenizer, model.layout, model.projector.output_length,
                  audio=model.encoder.inputs if model.encoder is not None else None)  # audio shards: prepare in workers
    n_llm = sum(p.numel() for p in model.llm.parameters())
    o = recipe.optim
    optimizer = torch.optim.AdamW(param_groups(model, o), betas=tuple(o.betas), fused=cuda)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(o.warmup_steps, recipe.train.steps, o.min_lr_ratio))
    model, optimizer = accelerator.prepare(model, optimizer)
    position = DataPosition(accelerator.process_index, accelerator.num_processes, recipe.data.workers)
    accelerator.register_for_checkpointing(scheduler, position)

    def keep_trainable(models, weights, output_dir):  # checkpoints hold trained weights, not the 0.6-3B LLM
        for m, w in zip(models, weights):
            keep = accelerator.unwrap_model(m).trainable_state_dict().keys()
            for k in [k for k in w if k.removeprefix("module.") not in keep]:
                del w[k]
    accelerator.register_save_state_pre_hook(keep_trainable)

    start = 0
    if resume:
        # not strict: the frozen LLM is not in the checkpoint
        accelerator.load_state(str(found[-1]), **({"strict": False} if zero is None else {"load_module_strict": False}))
        start = int(found[-1].name.split("-")[1])
        console.print(f"resumed from {found[-1]} (step {start})")
    if tracker:
        accelerator.init_trackers(recipe.log.project, config=asdict(recipe),
                                  init_kwargs={"wandb": {"mode": tracker, "name": recipe.run.name, "dir": str(run_dir)}})
    batches = iter(train_loader(recipe, codec, position, pin_memory=cuda))
    t = recipe.train
    peak = next((v for k, v in PEAK_BF16.items() if cuda and k in torch.cuda.get_device_name()), None)
    console.print(f"[bold]{recipe.run.name}[/]: {sum(p.numel() for g in optimizer.param_groups for p in g['params']):,} "
                  f"trainable parameters, LLM {n_llm:,} ({recipe.model.decoder}), {accelerator.num_processes} process(es), "
                  f"steps {start + 1}..{t.steps}")

    # ---- train: each step is grad_accum micro-batches, then one clipped AdamW step
    model.train()
    window = torch.zeros(4, dtype=torch.float64)  # samples, real tokens, padded tokens, LLM positions
    clock = time.perf_counter()
    for step in range(start + 1, t.steps + 1):
        # The step's loss is the mean over every label token of its grad_accum micro-batches (not a mean
        # of per-batch means, which would over-weight short batches): the token count is known up front.
        micro_batches = [next(batches) for _ in range(t.grad_accum)]
        n_labels = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro_batches)
        loss_sum = torch.zeros((), device=accelerator.device)
        for micro, batch in enumerate(micro_batches):
            window += torch.tensor([batch["n_samples"], batch["real_tokens"], batch["padded_tokens"], 0.0], dtype=torch.float64)
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
            last_micro = micro == t.grad_accum - 1
            if zero is not None:  # the engine reduces gradients (ZeRO-2/3: every micro-batch) up to this boundary
                model.set_gradient_accumulation_boundary(last_micro)
            # DDP all-reduces gradients only on the last micro-batch: the others just accumulate locally
            with accelerator.no_sync(model) if not last_micro and zero is None else nullcontext():
                loss = model(batch, reduction="sum") / n_labels
                if zero is None:
                    accelerator.backward(loss)
                else:  # the loss is already scaled for the whole window: DeepSpeed must not divide it again
                    model.backward(loss, scale_wrt_gas=False)
            loss_sum += loss.detach().float()
        loss = accelerator.reduce(loss_sum, "mean")

        def stop(grad_norm, when: str):
            if not (torch.isfinite(loss) and torch.isfinite(torch.as_tensor(grad_norm))):
                last = checkpoints(ckpt_root)
                raise UserError(f"loss is {loss.item()} (grad norm {float(grad_norm)}) at step {step}; stopped {when} "
                                f"the update. Last good checkpoint: {last[-1] if last else 'none'}. Try a lower optim.lr")
        if zero is None:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), o.grad_clip or float("inf"))
            stop(grad_norm, "before")
            optimizer.step()
        else:  # the engine clips (optim.grad_clip) and steps; its gradient norm is known only afterwards
            stop(0.0, "before")
            model.step()
            grad_norm = float(model.get_global_grad_norm())
            stop(grad_norm, "after")  # not saved: the last checkpoint stays the last good one
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        for b in micro_batches:
            position.advance(b["position"])

        if step % t.log_every == 0 or step == t.steps:
            totals = accelerator.reduce(window.to(accelerator.device), "sum").cpu()
            elapsed, clock = time.perf_counter() - clock, time.perf_counter()
            stats = {"loss": loss.item(), "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                     "samples_per_s": totals[0].item() / elapsed, "tokens_per_s": totals[1].item() / elapsed,
                     "real_token_fraction": (totals[1] / totals[2]).item()}
            if peak:  # LLM FLOPs per position: forward 2N, backward to the inputs 2N, weight grads 2N when trained fully
                flops = (6 if recipe.model.decoder == "full" else 4) * n_llm
                stats["mfu"] = flops * totals[2].item() / elapsed / (peak * accelerator.num_processes)
            window.zero_()
            log(accelerator, console, run_dir, step, stats)
        if recipe.data.val is not None and ((t.eval_every and step % t.eval_every == 0) or step == t.steps):
            log(accelerator, console, run_dir, step, evaluate(accelerator.unwrap_model(model), recipe, codec, accelerator,
                                                              lockstep=zero == 3 and accelerator.num_processes > 1))
        if step % t.save_every == 0 or step == t.steps:
            save_checkpoint(accelerator, position, recipe_text, ckpt_root, step, t.keep_checkpoints,
                            accelerator.unwrap_model(model))

    # ---- finish
    accelerator.end_training()
    console.print(f"done: {checkpoints(ckpt_root)[-1] if checkpoints(ckpt_root) else run_dir}")


def log(accelerator: Accelerator, console: Console, run_dir: Path, step: int, stats: dict) -> None:
    """One console line, one metrics.jsonl record (full precision, for scripts and tests), one tracker point."""
    accelerator.log(stats, step=step)
    if accelerator.is_main_process:
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **stats}) + "\n")
        console.print(f"step {step:>6}  " + "  ".join(f"{k} {v:.4g}" for k, v in stats.items()))
