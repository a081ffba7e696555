"""Write a tiny Llama GGUF with the ``gguf`` package, from a tiny transformers Llama and its BPE tokenizer.

The layout follows llama.cpp's conventions as documented by the GGUF spec: tensor names ``token_embd``,
``blk.N.attn_q`` ...; q/k projection rows interleaved per head (llama.cpp's rotary layout), which
transformers undoes on load; a byte-level BPE vocabulary as ``tokenizer.ggml.model = gpt2``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _interleave(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Per head, reorder rows [first half, second half] -> pairs (the GGUF rotary layout)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(path: Path, model: Any, tokenizer: Any, *, q8_tensor: str | None = "blk.0.ffn_up.weight",
                          chat_template: str | None = None) -> dict[str, np.ndarray]:
    """Write ``model`` (a tiny ``LlamaForCausalLM``) and ``tokenizer`` as a GGUF; returns the tensors written
    (in transformers' layout, dequantised where ``q8_tensor`` is stored as Q8_0)."""
    import gguf

    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(cfg.hidden_size // n_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_unk_token_id(tokenizer.unk_token_id)
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    written: dict[str, np.ndarray] = {}
    for hf_name, gg_name in names.items():
        arr = sd[hf_name].astype(np.float32)
        stored = arr
        if gg_name.endswith("attn_q.weight"):
            stored = _interleave(arr, n_heads)
        elif gg_name.endswith("attn_k.weight"):
            stored = _interleave(arr, n_kv)
        if gg_name == q8_tensor:
            q = gguf.quants.quantize(stored, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gg_name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            arr = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(arr.shape)
        else:
            w.add_tensor(gg_name, stored)
        written[hf_name] = arr
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written
