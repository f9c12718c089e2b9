"""A tiny random causal LM of the Qwen3 architecture, with a tokenizer trained here, for tests and CPU demos.

The folder it writes loads by path with ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``
exactly like a Hub id, so training code never needs a "tiny" branch. The chat template mimics Qwen3's
(``<|im_start|>role\\n...<|im_end|>`` turns, an empty ``<think></think>`` block when
``enable_thinking=False``), which is the path the real models take through ``apply_chat_template``.

    python -m tatk.synthetic.tinyllm runs/demo/llm --corpus runs/demo/corpus --tokenizer bpe --bpe-vocab 2000 --prompt-words --hidden 256 --layers 4
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Qwen3's template reduced to what an ASR prompt uses: plain turns, and the empty think block that
# Qwen3 emits after "assistant" when thinking is disabled (training prompts must match inference ones).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Words the synthetic corpus draws from (tests/train_fixtures.py); the tokenizer is trained on them so
# transcripts become a few BPE tokens each, as with a real LLM vocabulary.
WORDS = (
    "the a one two three four five six seven eight nine ten red green blue black white cat dog bird fish "
    "house tree river stone light dark small big fast slow open close run walk talk sing read write "
    "morning evening today tomorrow yes no hello world speech audio model train test"
).split()


TOKENIZERS = ("bpe", "char")

# The text a Qwen3-style ASR prompt adds around the audio and the transcript (CHAT_TEMPLATE with the roles and
# the default instruction, special tokens removed). A BPE tokenizer trained beside it (prompt_words=True)
# learns these words as single tokens, as a real LLM vocabulary has them: the demo's prompt shrinks from
# ~30 tokens to 15.
TEMPLATE_TEXT = "system\nuser\nTranscribe: \nassistant\n\n\n"


def train_tokenizer(texts: list[str], vocab_size: int = 600, kind: str = "bpe",
                    prompt_words: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level tokenizer on ``texts`` and wrap it with Qwen3-style special tokens and template.

    ``kind="bpe"``: up to ``vocab_size`` tokens, merges learnt from ``texts`` (frequent words become one
    token, as in a real LLM vocabulary). ``kind="char"``: the same byte-level BPE with no merges at all,
    so every character is one token (longer targets, but each token is easier to hear).
    ``prompt_words``: BPE also learns ``TEMPLATE_TEXT``, as often as the transcripts (every row has a prompt).
    """
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer kind must be one of {TOKENIZERS}, not {kind!r}")
    if kind == "char":
        vocab_size = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())  # alphabet only: no merge fits
    elif prompt_words:
        texts = list(texts) + [TEMPLATE_TEXT] * len(texts)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_tiny_llm(out_dir: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2, vocab_size: int = 0,
                   texts: list[str] | None = None, tokenizer: str = "bpe", bpe_vocab: int = 600,
                   prompt_words: bool = False, chat: bool = True) -> Path:
    """Save a seeded random Qwen3 causal LM (``layers`` × ``hidden``, 4 heads) and its tokenizer to
    ``out_dir``; return the folder.

    ``chat=False`` saves a base LM (no chat template, as a pretrained base checkpoint): tatk then prompts it with
    plain text, ``Transcribe: `` + audio + a newline, 4 tokens with ``prompt_words`` instead of the chat turn's 15.
    The tokenizer and the weights are the same either way.

    The tokenizer (``tokenizer``: ``"bpe"`` with ``bpe_vocab`` tokens and ``prompt_words``, or ``"char"``;
    see ``train_tokenizer``) is trained on ``texts`` (default: sentences of ``WORDS``), e.g. a corpus's transcripts.

    The embedding has spare rows past the tokenizer, as Qwen3's does (151936 rows for ~151.7k tokens);
    ``vocab_size`` (0: tokenizer size + 11) sets the row count, e.g. 151936 to time a Qwen3-sized LM head.
    """
    out = Path(out_dir)
    texts = texts or [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    tok = train_tokenizer(texts, bpe_vocab, tokenizer, prompt_words)
    if not chat:
        tok.chat_template = None
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab_size or len(tok) + 11, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=2048,
        tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    return _save(Qwen3ForCausalLM(config), tok, out)


def _save(model, tok, out: Path) -> Path:
    """Save ``model`` with generation stopping at the tokenizer's end-of-reply token, and ``tok``, to ``out``."""
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# SmolLM3's template reduced the same way. Like the real one it opens with a system block that writes
# today's date ("Today Date: ..."), which tatk.train.speechlm.render_prompt must strip, and with thinking disabled
# it puts "/no_think" there and an empty think block after the assistant header.
SMOLLM3_TEMPLATE = (
    "{%- set today = strftime_now('%d %B %Y') -%}"
    "{%- set mode = '/no_think' if enable_thinking is defined and enable_thinking is false else '/think' -%}"
    "{{- '<|im_start|>system\\n## Metadata\\n\\nKnowledge Cutoff Date: June 2025\\nToday Date: ' + today + "
    "'\\nReasoning Mode: ' + mode + '\\n\\n## Custom Instructions\\n\\nYou are a helpful AI assistant named "
    "SmolLM, trained by Hugging Face.\\n\\n<|im_end|>\\n' }}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if mode == '/no_think' %}{{- '<think>\\n\\n</think>\\n' }}{%- endif %}"
    "{%- endif %}"
)


def build_tiny_smollm3(out_dir: str | Path, seed: int = 0, hidden: int = 64, layers: int = 4,
                       texts: list[str] | None = None) -> Path:
    """Save a seeded random SmolLM3 causal LM (``layers`` × ``hidden``; RoPE skipped in every 4th layer and
    tied embeddings, as in SmolLM3-3B) with a SmolLM3-style chat template to ``out_dir``; return the folder."""
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    out = Path(out_dir)
    tok = train_tokenizer(texts or [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))])
    tok.chat_template = SMOLLM3_TEMPLATE
    torch.manual_seed(seed)
    config = SmolLM3Config(
        vocab_size=len(tok) + 11, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
        no_rope_layers=[int((i + 1) % 4 != 0) for i in range(layers)],
    )
    return _save(SmolLM3ForCausalLM(config), tok, out)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Save a tiny random Qwen3-style LLM and tokenizer.")
    parser.add_argument("out_dir", nargs="?", default="runs/tiny/llm")
    parser.add_argument("--corpus", type=Path, help="train the tokenizer on this folder's parquet `text` columns (lower-cased)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size (4 attention heads)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="bpe")
    parser.add_argument("--bpe-vocab", type=int, default=600, help="BPE vocabulary size (--tokenizer bpe)")
    parser.add_argument("--prompt-words", action="store_true",
                        help="BPE also learns the chat prompt's words as tokens (--tokenizer bpe)")
    parser.add_argument("--no-chat-template", dest="chat", action="store_false",
                        help="save a base LM: plain-text prompts, 4 tokens instead of the chat turn's 15")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    texts = None
    if args.corpus:
        import pyarrow.parquet as pq

        texts = [t.lower() for f in sorted(args.corpus.rglob("*train*.parquet")) for t in pq.read_table(f, columns=["text"])["text"].to_pylist()]
    out = build_tiny_llm(args.out_dir, seed=args.seed, hidden=args.hidden, layers=args.layers, texts=texts,
                         tokenizer=args.tokenizer, bpe_vocab=args.bpe_vocab, prompt_words=args.prompt_words, chat=args.chat)
    n = sum(p.numel() for p in Qwen3ForCausalLM.from_pretrained(out).parameters())
    print(f"{out}: {n / 1e6:.2f}M parameters, {args.tokenizer} tokenizer")
