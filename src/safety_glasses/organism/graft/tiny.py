"""A tiny ChatML causal LM folder built from a config, for tests and smoke runs of the graft.

It has SmolLM2's layout (Llama decoder, tied embeddings, ``<|im_start|>``/``<|im_end|>`` chat template with
a default system prompt, ``<empty_output>`` among its special tokens) at a few thousand parameters, with a
byte-level BPE trained on the organism world's text. Nothing is downloaded.

Example:
    >>> import tempfile
    >>> path = save_tiny_lm(tempfile.mkdtemp())
    >>> (path / "config.json").is_file()
    True
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..world import World, WorldConfig, corpus

TINY_SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<empty_output>")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def save_tiny_lm(folder: str | Path, *, hidden_size: int = 32, layers: int = 2, vocab_size: int = 400,
                 seed: int = 0) -> Path:
    """Write a tiny randomly initialised ChatML Llama LM + tokenizer to ``folder``; return the path.

    Example:
        >>> save_tiny_lm("runs/tiny-lm")  # doctest: +SKIP
        PosixPath('runs/tiny-lm')
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(TINY_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus(World(WorldConfig(seed=0)), n=300), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|im_end|>", chat_template=TINY_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    path = Path(folder)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
