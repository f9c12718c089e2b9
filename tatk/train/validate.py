"""Validation during training: loss over the held-out shards and WER of greedy transcripts, summed over ranks."""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from tatk.errors import UserError
from tatk.model.speech import IGNORE
from tatk.train.collate import Codec
from tatk.train.recipe import Recipe
from tatk.train.stream import val_batches
from tatk.wer import score


@torch.no_grad()
def evaluate(model, recipe: Recipe, codec: Codec, accelerator: Accelerator, lockstep: bool = False) -> dict:
    """{"val_loss", "wer"} of ``model`` (unwrapped) on ``data.val``, each rank reading its share; with a routed
    projector (moe) also ``util_expert<e>``: the share of top-k routing choices per expert over the held-out frames
    (uniform: 1/experts; an expert near 0 is dead).

    ``lockstep`` (ZeRO-3 on several ranks, where every forward all-gathers weights from all ranks): ranks
    run the same number of forwards and generate calls; a rank out of batches repeats its last one, uncounted.

    WER is normalised exactly as `tatk eval` computes it (tatk/wer.py), so the two numbers mean the same."""
    model.eval()
    loss_sum, pairs = torch.zeros(2, device=accelerator.device), []
    routed = getattr(model.projector, "routed", None)
    routed = torch.zeros(len(routed), device=accelerator.device) if routed is not None else None
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
            if routed is not None and raw is not None:  # the loss forward's routing (generate's runs follow)
                routed += model.projector.routed.to(routed.device)
            if decode:
                k = max(need, 1)
                hyps = model.generate(batch["feats"][:k], batch["feat_lens"][:k], recipe.eval.max_new_tokens)
                if raw is not None and need > 0:
                    pairs += list(zip(texts[:need], hyps))
        i += 1
    model.train()
    loss_sum = accelerator.reduce(loss_sum, "sum")
    pairs = gather_object(pairs)
    stats = {"val_loss": (loss_sum[0] / loss_sum[1]).item(), "wer": score([r for r, _ in pairs], [h for _, h in pairs]).wer}
    if routed is not None:
        routed = accelerator.reduce(routed, "sum")
        stats.update({f"util_expert{e}": (c / routed.sum().clamp_min(1)).item() for e, c in enumerate(routed)})
    return stats
