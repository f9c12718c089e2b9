"""The training loop, read top to bottom: setup → (resume) → train steps → validate / checkpoint → finish.

Runs under ``accelerate launch`` (one process per GPU, or ``ACCELERATE_USE_CPU=true`` CPU processes) and
as a plain ``tatk train`` (one process). Only the model and optimizer go through ``accelerator.prepare``:
each rank builds its own data stream (stream.py) so ranks see disjoint samples and take exactly
``train.steps`` steps; the LR scheduler is stepped once per optimizer step and saved via
``register_for_checkpointing`` (a prepared scheduler would step once per process). Where DDP and
DeepSpeed ZeRO differ (backward, clipping, stepping, loading state) is ``zero.Updates``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from rich.console import Console

from tatk.errors import UserError
from tatk.files import atomic_write_text
from tatk.model.speech import IGNORE
from tatk.shard.format import read_split
from tatk.train.checkpoint import DATA, best_value, checkpoints, keep_best, load_weights, save_checkpoint
from tatk.train.collate import Codec
from tatk.train.optim import param_groups, warmup_cosine
from tatk.train.projector_config import aux_weights
from tatk.train.recipe import Recipe, render_recipe
from tatk.train.speechlm import build_model
from tatk.train.position import DataPosition, max_bad
from tatk.train.progress import StepProgress, figure
from tatk.train.stream import shard_sets, train_loader, wrong_size_tars
from tatk.train.validate import evaluate
from tatk.train.zero import Updates, configure as configure_deepspeed, deepspeed_stage

# Dense bf16 tensor-core peaks (FLOP/s) for MFU; an unknown GPU just gets no MFU column.
PEAK_BF16 = {"A40": 149.7e12, "A100": 312e12, "H100": 989e12, "H200": 989e12, "L40S": 362e12, "L4": 121e12,
             "A10": 125e12, "4090": 165e12, "3090": 71e12}


def train(recipe: Recipe, resume: bool) -> None:
    """Train ``recipe``'s projector (and LLM adapters or decoder) for ``train.steps`` steps; ``resume``
    continues from the newest checkpoint."""
    Trainer(recipe, resume).run()


class Trainer:
    """One training run. ``__init__`` sets everything up (and resumes); ``run`` loops over the steps."""

    def __init__(self, recipe: Recipe, resume: bool):
        self.recipe, self.run_dir, self.ckpt_root = recipe, recipe.run_dir, recipe.run_dir / "checkpoints"
        found = checkpoints(self.ckpt_root)  # fail on a bad run folder before loading anything heavy
        if resume and not found:
            raise UserError(f"--resume: no checkpoint in {self.ckpt_root}")
        if not resume and found:
            raise UserError(f"run.name: {self.run_dir} already has checkpoints; pass --resume or pick another run.name")
        self.cuda = torch.cuda.is_available()
        self.accelerator = self._accelerator()
        # soft_wrap: a log file keeps whole lines (rich would cut them at 80 columns when not on a terminal)
        self.console = Console(quiet=not self.accelerator.is_main_process, highlight=False, soft_wrap=True)
        set_seed(recipe.run.seed)
        self.recipe_text = render_recipe(recipe)
        if self.accelerator.is_main_process:
            self.ckpt_root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "recipe.toml", self.recipe_text)
        self._build(resume)
        self.best = best_value(self.run_dir)  # a resumed run goes on beating its kept best
        self.start = 0
        if resume:
            self._check_resume(found[-1])
            self.updates.load_state(found[-1])
            self.start = int(found[-1].name.split("-")[1])
            self.console.print(f"resumed from {found[-1]} (step {self.start})")
        self.batches = iter(train_loader(recipe, self.codec, self.position, pin_memory=self.cuda))
        self.aux_weights = aux_loss_weights(recipe)
        self.aux_step: dict[str, torch.Tensor] = {}

    def _check_resume(self, ckpt: Path) -> None:
        """DeepSpeed's optimizer state is sharded per rank: it resumes on the number of processes it was saved with."""
        saved = ckpt / DATA
        if self.updates.zero is None or not saved.exists():
            return
        processes = json.loads(saved.read_text())["processes"]
        if processes != self.accelerator.num_processes:
            raise UserError(f"--resume: {ckpt} was saved by {processes} DeepSpeed processes; ZeRO resumes only on the "
                            f"same number (this run has {self.accelerator.num_processes}); DDP and one process can change it")

    def _accelerator(self) -> Accelerator:
        self.tracker = wandb_mode(self.recipe.log.wandb)
        # DeepSpeed on CPU (the tests) has no NCCL: its process group must be told to use gloo
        cpu_deepspeed = not self.cuda and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
        # auto: bf16 autocast on GPU (tensor cores); exact fp32 on CPU, where bf16 is slow without AVX512-BF16 / AMX
        # and would break the exact-loss tests. The demo asks for bf16: its step is ~1.3x faster on this project's CPUs.
        precision = self.recipe.train.precision
        self.bf16 = precision == "bf16" or (precision == "auto" and self.cuda)
        accelerator = Accelerator(mixed_precision="bf16" if self.bf16 else "no", log_with="wandb" if self.tracker else None,
                                  project_dir=str(self.run_dir),
                                  kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if cpu_deepspeed else None)
        if deepspeed_stage(accelerator) is not None:
            configure_deepspeed(accelerator, self.recipe)
        return accelerator

    def _build(self, resume: bool) -> None:
        """Model, optimizer, scheduler and data position, prepared and registered for checkpointing.

        Under bf16 on GPU a frozen or LoRA'd LLM keeps bf16 weights (never updated: half the memory); a fully
        trained one keeps fp32 master weights under bf16 autocast, as every LLM does on CPU. Projector and adapters are fp32."""
        r, acc = self.recipe, self.accelerator
        counts = [c for _, c, _ in shard_sets(r)]
        self.max_bad, self.dropped, self.short_skipped = max_bad(r.data.max_bad_tars, counts), 0, 0
        bad = wrong_size_tars(r)  # before the LLM loads: a damaged copy is named in seconds
        if len(bad) > self.max_bad:
            raise UserError(f"data.max_bad_tars: {len(bad)} training tars missing or not the size their manifest records, "
                            f"more than the {self.max_bad} allowed (first: {bad[0]}; `tatk shard --verify FOLDER` checks every tar)")
        for why in bad:
            self.console.print(f"warning: {why} (within data.max_bad_tars = {self.max_bad}: skipped if unreadable)")
        stats = read_split(r.data.train[0].path, r.data.train[0].split).get("stats")
        model = build_model(r, stats, torch.bfloat16 if self.bf16 and self.cuda and r.model.decoder != "full" else torch.float32)
        if r.model.init_from and not resume:  # stage chaining: start from the previous stage's weights
            load_weights(model, Path(r.model.init_from), allow_new=True)
            self.console.print(f"loaded trained weights from {r.model.init_from}")
        if r.train.gradient_checkpointing:  # recompute LLM activations in backward: less memory, ~30% more compute
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if r.train.compile:  # after gradient checkpointing: the compiled layers are copies that keep its flags
            model.compile_decoder()
        model = model.to(acc.device)
        self.codec = Codec(model.tokenizer, model.layout, model.projector.output_length,
                           audio=model.encoder.inputs if model.encoder is not None else None)  # audio shards: prepared in workers
        self.n_llm = sum(p.numel() for p in model.llm.parameters())
        o = r.optim
        optimizer = torch.optim.AdamW(param_groups(model, o), betas=tuple(o.betas), fused=self.cuda)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(o.warmup_steps, r.train.steps, o.min_lr_ratio))
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.updates = Updates(acc, self.model, self.optimizer, o.grad_clip)
        self.position = DataPosition(acc.process_index, acc.num_processes, r.data.workers, r.run.seed, counts)
        acc.register_for_checkpointing(self.scheduler, self.position)

        def keep_trainable(models, weights, output_dir):  # checkpoints hold trained weights, not the 0.6-3B LLM
            for m, w in zip(models, weights):
                keep = acc.unwrap_model(m).trainable_state_dict().keys()
                for k in [k for k in w if k.removeprefix("module.") not in keep]:
                    del w[k]
        acc.register_save_state_pre_hook(keep_trainable)

    def run(self) -> None:
        r, t, acc = self.recipe, self.recipe.train, self.accelerator
        if self.tracker:
            acc.init_trackers(r.log.project, config=asdict(r),
                              init_kwargs={"wandb": {"mode": self.tracker, "name": r.run.name, "dir": str(self.run_dir)}})
        n_trained = sum(p.numel() for g in self.optimizer.param_groups for p in g["params"])
        self.console.print(f"[bold]{r.run.name}[/]: {n_trained:,} trainable parameters, LLM {self.n_llm:,} ({r.model.decoder}), "
                           f"{acc.num_processes} process(es), steps {self.start + 1}..{t.steps}")
        self.model.train()
        self.window = torch.zeros(3, dtype=torch.float64)  # samples, real tokens, padded tokens (since the last log)
        self.clock = time.perf_counter()
        self.progress = StepProgress(self.console, self.start, t.steps)
        try:
            for step in range(self.start + 1, t.steps + 1):
                self.run_step(step)
        finally:
            self.progress.close()
        acc.end_training()
        last = checkpoints(self.ckpt_root)
        self.console.print(f"done: {last[-1] if last else self.run_dir}")

    def run_step(self, step: int) -> None:
        """One step, then its log line, validation and checkpoint when due."""
        r, t, acc = self.recipe, self.recipe.train, self.accelerator
        loss, grad_norm = self.step(step)
        self.progress.advance(step)
        if step % t.log_every == 0 or step == t.steps:
            self.log(step, self.throughput(loss, grad_norm))
        validated = None
        if r.data.val is not None and ((t.eval_every and step % t.eval_every == 0) or step == t.steps):
            validated = evaluate(acc.unwrap_model(self.model), r, self.codec, acc,
                                 lockstep=self.updates.zero == 3 and acc.num_processes > 1)
            self.log(step, validated)
        better = bool(validated and t.keep_best and validated[t.keep_best] < self.best)  # same on every rank
        if step % t.save_every == 0 or step == t.steps or better:
            ckpt = save_checkpoint(acc, self.position, self.recipe_text, self.ckpt_root, step, t.keep_checkpoints,
                                   acc.unwrap_model(self.model))
            if better:
                self.best = validated[t.keep_best]
                if acc.is_main_process:
                    keep_best(ckpt, self.run_dir, t.keep_best, self.best)
                self.console.print(f"best {t.keep_best} so far ({self.best:.4g}): kept as {self.run_dir / 'best'}")
                acc.wait_for_everyone()

    def step(self, step: int) -> tuple[torch.Tensor, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (loss averaged over ranks, grad norm).

        The step's loss is the mean over every label token of its micro-batches (not a mean of per-batch
        means, which would over-weight short batches): the token count is known up front."""
        acc, device = self.accelerator, self.accelerator.device
        micro_batches = [next(self.batches) for _ in range(self.recipe.train.grad_accum)]
        self.data_events(micro_batches)
        n_labels = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro_batches)
        loss_sum = torch.zeros((), device=device)
        self.aux_step = {name: torch.zeros((), device=device) for name in self.aux_weights}
        for i, batch in enumerate(micro_batches):
            self.window += torch.tensor([batch["n_samples"], batch["real_tokens"], batch["padded_tokens"]], dtype=torch.float64)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
            with self.updates.micro(last=i == len(micro_batches) - 1):
                loss = self.model(batch, reduction="sum") / n_labels
                aux = acc.unwrap_model(self.model).aux_losses if self.aux_weights else {}
                # each micro-batch's auxiliary losses count 1/grad_accum, like its share of the label tokens
                self.updates.backward(loss + sum(self.aux_weights[k] * v for k, v in aux.items()) / len(micro_batches))
            loss_sum += loss.detach().float()
            for k, v in aux.items():
                self.aux_step[k] += v.detach().float() / len(micro_batches)
        loss = acc.reduce(loss_sum, "mean")

        def check(grad_norm: float, when: str) -> None:
            if not (torch.isfinite(loss) and torch.isfinite(torch.as_tensor(grad_norm))):
                last = checkpoints(self.ckpt_root)
                raise UserError(f"loss is {loss.item()} (grad norm {grad_norm}) at step {step}; stopped {when} "
                                f"the update. Last good checkpoint: {last[-1] if last else 'none'}. Try a lower optim.lr")
        grad_norm = self.updates.step(check)
        self.scheduler.step()
        for b in micro_batches:
            self.position.advance(b["position"])
        return loss, grad_norm

    def data_events(self, micro_batches: list[dict]) -> None:
        """Every rank learns of a stream's error or a newly unreadable tar in the same step, so all stop
        together (a rank stopping alone would leave the others waiting in a collective): one tiny all-reduce
        per step, and a gather only when something happened."""
        acc = self.accelerator
        errors = [b["error"] for b in micro_batches if "error" in b]
        bad = {p: why for b in micro_batches for p, why in b["events"]["bad"].items() if p not in self.position.bad}
        self.dropped += sum(b["events"]["dropped"] for b in micro_batches)
        self.short_skipped += sum(b["events"]["short_skipped"] for b in micro_batches)
        flags = acc.reduce(torch.tensor([len(errors), len(bad)], dtype=torch.float32, device=acc.device), "sum")
        if not flags.sum().item():
            return
        from accelerate.utils import gather_object

        reports = gather_object([(errors, bad)])
        for _, b in reports:
            for path, why in b.items():
                if path not in self.position.bad:
                    self.position.bad[path] = why
                    self.console.print(f"warning: skipped an unreadable tar: {why} "
                                       f"({len(self.position.bad)} so far, data.max_bad_tars = {self.max_bad})")
        errors = [e for errs, _ in reports for e in errs]
        if errors:
            raise UserError(errors[0])
        if len(self.position.bad) > self.max_bad:
            raise UserError(f"data.max_bad_tars: {len(self.position.bad)} unreadable tars, more than the {self.max_bad} "
                            f"allowed (first: {next(iter(self.position.bad.values()))})")

    def throughput(self, loss: torch.Tensor, grad_norm: float) -> dict:
        """The log line's numbers: loss, LR, grad norm, and speed over the steps since the last log."""
        acc = self.accelerator
        totals = acc.reduce(self.window.to(acc.device), "sum").cpu()
        elapsed, self.clock = time.perf_counter() - self.clock, time.perf_counter()
        stats = {"loss": loss.item(), "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                 "samples_per_s": totals[0].item() / elapsed, "tokens_per_s": totals[1].item() / elapsed,
                 "real_token_fraction": (totals[1] / totals[2]).item()}
        epochs = self.position.epochs(acc)  # collective
        stats.update({"epoch": epochs[0]} if len(epochs) == 1 else {f"epoch_{i}": e for i, e in enumerate(epochs)})
        counts = acc.reduce(torch.tensor([self.dropped, self.short_skipped], dtype=torch.float64, device=acc.device), "sum")
        stats["dropped"] = int(counts[0].item())
        if self.recipe.data.short_first_epochs:  # the curriculum's long clips, left for later epochs
            stats["short_skipped"] = int(counts[1].item())
        stats["bad_tars"] = len(self.position.bad)
        stats.update({f"aux_{k}": acc.reduce(v, "mean").item() for k, v in self.aux_step.items()})  # unweighted, this step
        peak = next((v for k, v in PEAK_BF16.items() if self.cuda and k in torch.cuda.get_device_name()), None)
        if peak:  # LLM FLOPs per position: forward 2N, backward to the inputs 2N, weight grads 2N when trained fully
            flops = (6 if self.recipe.model.decoder == "full" else 4) * self.n_llm
            stats["mfu"] = flops * totals[2].item() / elapsed / (peak * acc.num_processes)
        self.window.zero_()
        return stats

    def log(self, step: int, stats: dict) -> None:
        """One console line, one metrics.jsonl record (full precision, for scripts and tests), one tracker point."""
        self.accelerator.log(stats, step=step)
        if self.accelerator.is_main_process:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **stats}) + "\n")
            timing = self.progress.logged(stats)
            line = "  ".join(f"{k} {figure(v)}" for k, v in stats.items())
            self.console.print(f"step {step:>6}/{self.recipe.train.steps}  {line}  {timing}")


def aux_loss_weights(recipe: Recipe) -> dict[str, float]:
    """{name: weight} of the auxiliary losses a training forward leaves in ``SpeechLM.aux_losses``: the
    projector's (moe) and the CTC head's (train.ctc_weight)."""
    return aux_weights(recipe.projector) | ({"ctc": recipe.train.ctc_weight} if recipe.train.ctc_weight else {})


def wandb_mode(setting: str) -> str | None:
    """'off' → no tracker; 'auto' → online only when a key is configured (never blocks asking for one)."""
    if setting != "auto":
        return None if setting == "off" else setting
    netrc = Path.home() / ".netrc"
    logged_in = os.environ.get("WANDB_API_KEY") or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    return "online" if logged_in else "offline"
