"""Decoding options of the exported model: beam search (transformers' generate from the spliced prompt's
embeddings) and streaming text, through ``load_pipeline``'s model and pipeline."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def pipe(asr_run):
    from tatk.export import load_pipeline

    return load_pipeline(str(asr_run["run"]))


@pytest.fixture(scope="module")
def waves(asr_run) -> list[np.ndarray]:
    """The corpus's held-out clips (validation and test splits), 16 kHz."""
    import io

    import pyarrow.parquet as pq
    import soundfile

    files = [f for f in sorted(asr_run["corpus"].rglob("*.parquet")) if "train" not in f.name]
    rows = [r for f in files for r in pq.read_table(f, columns=["wav"])["wav"].to_pylist()]
    waves = [soundfile.read(io.BytesIO(r["bytes"]), dtype="float32")[0] for r in rows]
    assert len(waves) >= 6
    return waves


@pytest.fixture(scope="module")
def feats(pipe, waves) -> list[np.ndarray]:
    return pipe.frontend.encode([pipe.frontend.prepare(w) for w in waves])


def _trim(ids: torch.Tensor, end_id: int) -> list[int]:
    """A generated row up to and including its first end token (what follows is padding)."""
    ids = ids.tolist()
    return ids[: ids.index(end_id) + 1] if end_id in ids else ids


def sequence_logprob(model, feat: np.ndarray, reply: list[int]) -> float:
    """log p(reply | audio prompt) by one forward pass of the LLM over prompt + reply: independent of generate."""
    lay = model.layout
    x = torch.from_numpy(feat)[None].to(model.dtype)
    lens = torch.tensor([len(feat)])
    prompt = torch.tensor([lay.prefix + [lay.audio_id] * model.projector.output_length(len(feat)) + lay.suffix])
    with torch.no_grad():
        embeds = torch.cat([model.embed(prompt, x, lens), model.llm.get_input_embeddings()(torch.tensor([reply]))], 1)
        logp = model.llm(inputs_embeds=embeds).logits[0].float().log_softmax(-1)
    start = prompt.shape[1]
    return float(sum(logp[start - 1 + t, tok] for t, tok in enumerate(reply)))


def test_num_beams_1_is_greedy(pipe, feats, waves):
    model = pipe.model
    greedy = model.transcribe(feats)
    assert any(len(g) for g in greedy), "every greedy reply is empty: vacuous"
    assert all(torch.equal(a, b) for a, b in zip(greedy, model.transcribe(feats, num_beams=1)))
    texts = [r["text"] for r in pipe(waves[:3], batch_size=3)]
    assert [r["text"] for r in pipe(waves[:3], batch_size=3, num_beams=1)] == texts
    assert [r["text"] for r in pipe(waves[:3], batch_size=3, generate_kwargs={"num_beams": 1})] == texts


def test_beam_logprob_at_least_greedy(pipe, feats):
    """With length_penalty=0 beam search ranks by log-probability, so its result must score at least greedy's."""
    model, end = pipe.model, pipe.model.layout.end_id
    better = 0
    for f in feats:
        greedy = _trim(model.transcribe([f])[0], end)
        beam = _trim(model.transcribe([f], num_beams=4, length_penalty=0.0)[0], end)
        g, b = sequence_logprob(model, f, greedy), sequence_logprob(model, f, beam)
        assert b >= g - 1e-4, (g, b)
        better += b > g + 1e-4
    print(f"beam scored higher than greedy on {better}/{len(feats)} clips")


def test_batched_beam_equals_one_at_a_time(pipe, feats, waves):
    model, end = pipe.model, pipe.model.layout.end_id
    options = dict(num_beams=3, length_penalty=1.0, repetition_penalty=1.2, max_new_tokens=12)
    alone = [_trim(model.transcribe([f], **options)[0], end) for f in feats]
    batched = [_trim(ids, end) for ids in model.transcribe(feats, **options)]
    assert batched == alone
    assert all(len(a) <= 12 for a in alone)
    plain = [_trim(model.transcribe([f], num_beams=3, max_new_tokens=12)[0], end) for f in feats]
    assert plain != alone, "the repetition penalty changed nothing: the batch check of it would be vacuous"
    texts = [r["text"] for r in pipe(waves, batch_size=len(waves), **options)]
    assert texts == [pipe.tokenizer.decode(a, skip_special_tokens=True).strip() for a in alone]


def test_unknown_decoding_options_are_refused(pipe, waves):
    with pytest.raises(TypeError, match="do_sample"):
        pipe(waves[0], do_sample=True)
    with pytest.raises(TypeError, match="temperature"):
        pipe(waves[0], generate_kwargs={"temperature": 0.7})


def _stream(pipe, audio, **kwargs) -> tuple[list[str], dict]:
    """Run the pipeline in a thread with a TextIteratorStreamer, as a UI would; (pieces, final result)."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(pipe.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    result = {}
    thread = threading.Thread(target=lambda: result.update(pipe(audio, streamer=streamer, **kwargs)))
    thread.start()
    pieces = list(streamer)
    thread.join()
    return pieces, result


def test_streamed_pieces_join_to_the_final_text(pipe, waves, feats):
    words = 0
    for wave in waves[:4]:
        pieces, result = _stream(pipe, wave)
        assert "".join(pieces).strip() == result["text"]
        words += len(result["text"].split())
    assert words, "every transcript is empty: vacuous"
    from transformers import TextIteratorStreamer

    # transformers' generate streams greedy decoding only: beam search with a streamer is its own clear error
    with pytest.raises(ValueError, match="beam search"):
        pipe(waves[0], streamer=TextIteratorStreamer(pipe.tokenizer), num_beams=3)
    # the model itself, without the pipeline
    streamer = TextIteratorStreamer(pipe.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    ids = {}
    thread = threading.Thread(target=lambda: ids.update(out=pipe.model.transcribe(feats[:1], streamer=streamer)))
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text.strip() == pipe.tokenizer.decode(ids["out"][0], skip_special_tokens=True).strip()


def test_a_long_recording_streams_every_chunk(pipe, waves):
    """Cut into several chunks (chunk_length_s), one stream carries all of them, joined as the final text is."""
    gap = np.zeros(8000, dtype=np.float32)
    audio = np.concatenate([x for w in waves[:4] for x in (w, gap)])
    pieces, result = _stream(pipe, audio, chunk_length_s=2.5, return_timestamps=True)
    assert len(result["chunks"]) >= 3 and sum(bool(c["text"]) for c in result["chunks"]) >= 2, result
    assert " ".join("".join(pieces).split()) == result["text"]
