"""The exported model's card: README.md with the Hub's YAML metadata (base models, datasets, model-index
with the eval result) and a short description of the parts and how to use them."""

from __future__ import annotations

import json

from tatk.files import is_hub_id


def _word_timestamps(cfg) -> tuple[str, str]:
    """The card's usage line and its "what it supports" item on word timestamps: with the export's aligner, or
    how to get them without one."""
    if not getattr(cfg, "aligner", ""):
        return ('# word timestamps: exported without `tatk export --aligner`; give a CTC model per call:\n'
                'asr("speech.wav", return_timestamps="word", aligner="facebook/wav2vec2-base-960h")["chunks"]',
                'Word timestamps: `return_timestamps="word"` with a CTC model given per call (`aligner=`); this export '
                "has none of its own (`tatk export --aligner`).")
    where = "the CTC model in `aligner/`" if getattr(cfg, "aligner_subfolder", "") else f"`{cfg.aligner}`"
    return (f'asr("speech.wav", return_timestamps="word")["chunks"]  # words, (start, end) s: forced alignment with {where}',
            f'Word timestamps: `return_timestamps="word"`, by CTC forced alignment of the transcript with {where}.')


def _metadata(cfg, datasets: list[str], license: str, summary: dict | None, name: str) -> list[str]:
    """The card's YAML front matter: base models, datasets, tags and the model-index of ``summary``
    (values are JSON-quoted, which YAML reads as-is)."""
    q = json.dumps
    bases = [b for b in (cfg.encoder, cfg.llm) if is_hub_id(b)]
    lines = ["---", "library_name: transformers", "pipeline_tag: automatic-speech-recognition", f"license: {q(license)}"]
    if bases:
        lines += ["base_model:"] + [f"- {q(b)}" for b in bases]
    if datasets:
        lines += ["datasets:"] + [f"- {q(d)}" for d in datasets]
    lines += ["tags:", "- tatk", "- speech", "- asr", "- custom_code"]
    if summary:
        data = str(summary.get("data", "eval"))
        lines += ["model-index:", f"- name: {q(name)}", "  results:", "  - task:", "      type: automatic-speech-recognition",
                  "      name: Automatic Speech Recognition", "    dataset:", f"      name: {q(data)}", f"      type: {q(data)}"]
        if summary.get("split"):
            lines.append(f"      split: {q(summary['split'])}")
        lines += ["    metrics:", "    - type: wer", f"      value: {round(100 * float(summary['wer']), 2)}", "      name: WER (%)"]
    return lines + ["---"]


def model_card(cfg, recipe, datasets: list[str], license: str, summary: dict | None, name: str) -> str:
    """README.md with Hub metadata: what the model is made of, how to use it, what it supports, its evaluation."""
    lines = _metadata(cfg, datasets, license, summary, name)
    usage, support = _word_timestamps(cfg)

    def base(model: str, revision: str) -> str:  # a local folder's revision is its content hash (build.py)
        where = "local folder " if revision.startswith("sha256:") else ""
        return f"{where}`{model}`" + (f" @ `{revision}`" if revision else "")

    body = f"""
# {name}

A speech recognizer trained with tatk (the Tiny Audio Training Kit): a frozen audio encoder, a trained
projector, and an LLM decoder ({cfg.decoder}).

| part | what |
|---|---|
| encoder | {base(cfg.encoder, cfg.encoder_revision)} ({cfg.encoder_kind}, {cfg.feature_dim}-dim features, {cfg.normalize} normalisation) |
| projector | {cfg.projector_kind}, {cfg.projector_stack} frames per LLM position, hidden {cfg.projector_hidden} |
| LLM | {base(cfg.llm, cfg.llm_revision)}, decoder {cfg.decoder} |
| weights | {"every weight (merged)" if cfg.merged else "trained weights only; the encoder and LLM load from their own repositories"} |

## Use

```python
from transformers import pipeline

asr = pipeline("automatic-speech-recognition", model="{name}", trust_remote_code=True)
asr("speech.wav")["text"]
asr({{"raw": wave, "sampling_rate": 44100}})            # any rate, resampled to 16 kHz
asr(["a.wav", "b.flac"], batch_size=8)                  # batched
asr("long.wav", return_timestamps=True)["chunks"]       # > {cfg.chunk_seconds:g} s is cut at pauses
{usage}
```

Needs `soundfile` to decode files and `soxr` to resample audio that is not at 16 kHz.

## What it supports

- Decoding: greedy by default, at most {cfg.max_new_tokens} new tokens per chunk; `max_new_tokens=`,
  beam search with `num_beams=` and `length_penalty=`, `repetition_penalty=`, `no_repeat_ngram_size=`
  (as keywords or in `generate_kwargs`); no sampling.
- Streaming text: `streamer=TextIteratorStreamer(asr.tokenizer, skip_prompt=True, skip_special_tokens=True)`
  (greedy, one clip at a time); long audio streams all its chunks.
- Inputs: file paths, encoded bytes, arrays at any sampling rate, lists with `batch_size`; audio longer than
  {cfg.chunk_seconds:g} s is cut at pauses (`return_timestamps=True` gives the chunks' times).
- {"Self-contained: every weight is in this repository." if cfg.merged else "Loads its base encoder and LLM from their own repositories."}
- {support}
"""
    if summary:
        body += f"""
## Evaluation

| data | split | utterances | audio (h) | WER | RTFx |
|---|---|---|---|---|---|
| {summary.get('data', '')} | {summary.get('split', '')} | {summary.get('n', '')} | {float(summary.get('audio_hours', 0)):.3f} | {100 * float(summary['wer']):.2f} % | {float(summary.get('rtfx', 0)):.1f} |
"""
    body += f"\nTraining recipe: run `{recipe.run.name}`, {recipe.train.steps} steps.\n"
    return "\n".join(lines) + "\n" + body
