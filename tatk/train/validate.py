"""Validation during training: loss over a fixed list of held-out utterances and WER of greedy transcripts.

The list is the first ``eval.max_samples`` utterances of ``data.val`` in manifest order, whatever the
number of processes; rank r of R takes the r-th contiguous part of it and reads only the tar ranges that
hold that part. Loss is summed over label tokens and token counts on every rank and reduced, WER counts
errors over the first ``eval.wer_samples`` utterances of the list gathered from all ranks: so 1 or N
processes give the same numbers (to float rounding: batches are cut differently).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from tatk.errors import UserError
from tatk.model.speech import IGNORE
from tatk.shard.format import read_split
from tatk.train.collate import Codec, length_batches
from tatk.train.recipe import Recipe
from tatk.train.tars import read_range
from tatk.wer import score


def val_part(recipe: Recipe, rank: int, world: int) -> list[tuple[str, int, int, int]]:
    """(tar path, first, end, index of ``first`` in the list) ranges holding this rank's part of the list."""
    v = recipe.data.val
    shards = read_split(v.path, v.split)["shards"]
    total = sum(t["samples"] for t in shards)
    n = min(recipe.eval.max_samples or total, total)
    lo, hi = n * rank // world, n * (rank + 1) // world
    out, base = [], 0
    for t in shards:
        a, b = max(lo, base), min(hi, base + t["samples"])
        if a < b:
            out.append((str(Path(v.path) / t["name"]), a - base, b - base, a))
        base += t["samples"]
    return out


def val_batches(recipe: Recipe, codec: Codec, rank: int, world: int) -> Iterator[tuple[dict, list[int]]]:
    """This rank's part of the list as (batch, list index of each row); groups sorted by length and cut
    to ``data.max_tokens``. Utterances that cannot make a batch (too short to project, too long) are left
    out on every world size alike."""
    group: list = []

    def flush():
        for b in length_batches([s for s, _ in group], recipe.data.max_tokens):
            index = {id(s): i for s, i in group}
            yield codec.collate(b), [index[id(s)] for s in b]
        group.clear()

    for path, first, end, at in val_part(recipe, rank, world):
        for k, raw in enumerate(read_range(path, first, end)):
            s = codec.decode(raw)
            if s.n_audio >= 1 and s.n_tokens <= recipe.data.max_tokens:
                group.append((s, at + k))
            if len(group) == recipe.data.group_size:
                yield from flush()
    yield from flush()


@torch.no_grad()
def evaluate(model, recipe: Recipe, codec: Codec, accelerator: Accelerator, lockstep: bool = False) -> dict:
    """{"val_loss", "wer"} of ``model`` (unwrapped) on the validation list, each rank reading its part; with a
    routed projector (moe) also ``util_expert<e>``: the share of top-k routing choices per expert over the
    held-out frames (uniform: 1/experts; an expert near 0 is dead).

    ``lockstep`` (ZeRO-3 on several ranks, where every forward all-gathers weights from all ranks): ranks
    run the same number of forwards and generate calls; a rank out of batches repeats its last one, uncounted.

    WER is normalised exactly as `tatk eval` computes it (tatk/wer.py), so the two numbers mean the same."""
    model.eval()
    loss_sum, pairs = torch.zeros(2, device=accelerator.device), []
    routed = getattr(model.projector, "routed", None)
    routed = torch.zeros(len(routed), device=accelerator.device) if routed is not None else None
    stream = val_batches(recipe, codec, accelerator.process_index, accelerator.num_processes)
    batch, rows = None, []
    while True:
        item = next(stream, None)
        decode_rows = [j for j, i in enumerate(item[1]) if i < recipe.eval.wer_samples] if item else []
        more, decode = item is not None, bool(decode_rows)
        if lockstep:  # go on while any rank has a batch / still decodes
            flags = accelerator.reduce(torch.tensor([more, decode], dtype=torch.float32, device=accelerator.device), "sum")
            more, decode = bool(flags[0] > 0), bool(flags[1] > 0)
            if more and item is None and batch is None:
                raise UserError(f"data.val: process {accelerator.process_index} got no held-out batch; "
                                "use more held-out utterances (eval.max_samples) than processes")
        if not more:
            break
        if item is not None:
            raw, index = item
            texts, rows = raw["texts"], decode_rows
            batch = {k: v.to(accelerator.device) for k, v in raw.items() if torch.is_tensor(v)}
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        with accelerator.autocast():
            if item is not None:
                loss_sum += torch.stack([model(batch, reduction="sum").float(), torch.tensor(float(n), device=accelerator.device)])
                if routed is not None:  # the loss forward's routing (generate's runs follow)
                    routed += model.projector.routed.to(routed.device)
            else:
                model(batch)  # lockstep: the other ranks' forwards need this rank's all-gathers; uncounted
            if decode:
                pick = rows or [0]
                hyps = model.generate(batch["feats"][pick], batch["feat_lens"][pick], recipe.eval.max_new_tokens)
                if item is not None and rows:
                    pairs += [(index[j], texts[j], h) for j, h in zip(rows, hyps)]
    model.train()
    loss_sum = accelerator.reduce(loss_sum, "sum")
    pairs = sorted(gather_object(pairs))
    stats = {"val_loss": (loss_sum[0] / loss_sum[1]).item(), "wer": score([r for _, r, _ in pairs], [h for _, _, h in pairs]).wer}
    if routed is not None:
        routed = accelerator.reduce(routed, "sum")
        stats.update({f"util_expert{e}": (c / routed.sum().clamp_min(1)).item() for e, c in enumerate(routed)})
    return stats
