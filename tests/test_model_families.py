"""The shipped model-family recipes validate and take a training step, each on tiny random models of the
same architecture classes as its real ones, with shards made by `tatk shard` through the tiny encoder.

The recipes name Hub models and shard folders that do not exist here, so every run points them at the
tiny stand-ins with ``--set``; everything else (projector kind and stacking, decoder mode, LoRA settings,
init_from chaining) is the recipe's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, run_tatk

FAMILIES = {  # recipe → (tiny encoder kind, tiny LLM architecture)
    "stage1.toml": ("glmasr", "qwen3"),  # GLM-ASR-Nano + Qwen3-0.6B, the main stage-1 recipe
    "whisper-smollm3.toml": ("whisper", "smollm3"),
    "hubert-smollm3.toml": ("hubert", "smollm3"),
}


@pytest.fixture(scope="module")
def family(tiny_encoders, speech, tmp_path_factory):
    """family(recipe) → --set overrides pointing the recipe at tiny stand-ins (shards made once per encoder)."""
    from tatk.synthetic.tinyllm import build_tiny_llm, build_tiny_smollm3

    root = tmp_path_factory.mktemp("families")
    llms = {"qwen3": build_tiny_llm(root / "qwen3"), "smollm3": build_tiny_smollm3(root / "smollm3")}
    shards: dict[str, Path] = {}

    def overrides(recipe: str, run: str) -> list[str]:
        kind, llm = FAMILIES.get(recipe, ("glmasr", "qwen3"))
        if kind not in shards:
            shards[kind] = root / f"shards-{kind}"
            run_tatk("shard", "--local", speech["folder"], "--encoder", tiny_encoders[kind], "--out", shards[kind])
        sets = {"run.out_dir": root / "runs", "run.name": run, "features.encoder": tiny_encoders[kind],
                "features.dim": 64, "model.llm": llms[llm], "projector.hidden": 64,
                "data.train.0.path": shards[kind], "data.val.path": shards[kind], "data.val.split": "train",
                "data.workers": 0, "data.group_size": 8, "data.shuffle_buffer": 8, "data.round_shards": 1,
                "train.steps": 2, "train.save_every": 2, "train.log_every": 1, "train.eval_every": 0,
                "eval.max_samples": 8, "eval.wer_samples": 2, "eval.max_new_tokens": 4, "log.wandb": "off"}
        return [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]

    overrides.root = root
    return overrides


def metrics_losses(run: Path) -> list[float]:
    import json

    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.mark.parametrize("recipe", list(FAMILIES))
def test_family_recipe_validates_and_trains(family, recipe):
    sets = family(recipe, recipe.removesuffix(".toml"))
    shown = run_tatk("validate", REPO / "recipes" / recipe, *sets).stdout
    real = (REPO / "recipes" / recipe).read_text()
    for key in ("kind", "stack"):  # the recipe's own projector survives the overrides
        line = next(l for l in real.splitlines() if l.startswith(f"{key} ="))
        assert line.split("#")[0].strip().replace(" ", "") in shown.replace(" ", "")
    run_tatk("train", REPO / "recipes" / recipe, *sets)
    run = family.root / "runs" / recipe.removesuffix(".toml")
    losses = metrics_losses(run)
    assert len(losses) == 2 and all(l == l and l > 0 for l in losses)
    assert (run / "checkpoints" / "step-000002" / "model.safetensors").is_file()


def test_stage2_recipe_chains_from_stage1(family):
    """recipes/stage2.toml (LoRA r 64 / alpha 32 on q,v) starts from a stage-1 checkpoint and writes a PEFT adapter."""
    import json

    stage1 = family.root / "runs" / "stage1" / "checkpoints" / "step-000002"
    if not stage1.is_dir():  # trained by test_family_recipe_validates_and_trains[stage1.toml] when run first
        run_tatk("train", REPO / "recipes" / "stage1.toml", *family("stage1.toml", "stage1"))
    sets = family("stage2.toml", "chain-stage2") + ["--set", f"model.init_from={stage1}"]
    shown = run_tatk("validate", REPO / "recipes" / "stage2.toml", *sets).stdout
    assert 'decoder = "lora"' in shown and "r = 64" in shown and 'target_modules = ["q_proj", "v_proj"]' in shown
    done = run_tatk("train", REPO / "recipes" / "stage2.toml", *sets)
    assert f"loaded trained weights from {stage1}" in "".join(done.stdout.split("\n"))  # rich wraps long lines
    adapter = family.root / "runs" / "chain-stage2" / "checkpoints" / "step-000002" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (64, 32, ["q_proj", "v_proj"])
