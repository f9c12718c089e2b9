"""A tiny random causal LM of the Qwen3 architecture, with a tokenizer trained here, for tests and CPU demos.

The folder it writes loads by path with ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``
exactly like a Hub id, so training code never needs a "tiny" branch. The chat template mimics Qwen3's
(``<|im_start|>role\\n...<|im_end|>`` turns, an empty ``<think></think>`` block when
``enable_thinking=False``), which is the path the real models take through ``apply_chat_template``.

    python -m tatk.tinyllm runs/tiny/llm        # what recipes/tiny.toml expects
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


def train_tokenizer(texts: list[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it with Qwen3-style special tokens and template."""
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
                   texts: list[str] | None = None) -> Path:
    """Save a seeded random Qwen3 causal LM and its tokenizer to ``out_dir``; return the folder.

    The tokenizer is trained on ``texts`` (default: sentences of ``WORDS``), e.g. a corpus's transcripts.

    The embedding has spare rows past the tokenizer, as Qwen3's does (151936 rows for ~151.7k tokens);
    ``vocab_size`` (0: tokenizer size + 11) sets the row count, e.g. 151936 to time a Qwen3-sized LM head.
    """
    out = Path(out_dir)
    texts = texts or [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    tokenizer = train_tokenizer(texts)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab_size or len(tokenizer) + 11, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=2048,
        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Save a tiny random Qwen3-style LLM and tokenizer.")
    parser.add_argument("out_dir", nargs="?", default="runs/tiny/llm")
    parser.add_argument("--corpus", type=Path, help="train the tokenizer on this folder's parquet `text` columns (lower-cased)")
    args = parser.parse_args()
    texts = None
    if args.corpus:
        import pyarrow.parquet as pq

        texts = [t.lower() for f in sorted(args.corpus.rglob("*train*.parquet")) for t in pq.read_table(f, columns=["text"])["text"].to_pylist()]
    print(build_tiny_llm(args.out_dir, texts=texts))
