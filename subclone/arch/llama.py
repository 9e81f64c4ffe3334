"""The Llama layout: Llama, SmolLM2, Mistral, Qwen2. Pre-norm RMSNorm, rotary, grouped-query attention."""
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from . import F, KV, Q, R, Family


def attention_probs(attention, hidden_states: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The attention probabilities the module computes for its input (batch, T, hidden), without padding: its own
    q and k projections, rotary positions, causal mask and sliding window (Qwen2 per layer, Mistral per model)."""
    batch, t, _ = hidden_states.shape
    q = attention.q_proj(hidden_states).view(batch, t, -1, attention.head_dim).transpose(1, 2)
    k = attention.k_proj(hidden_states).view(batch, t, -1, attention.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *kwargs["position_embeddings"])
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * attention.scaling
    window = (attention.sliding_window if hasattr(attention, "sliding_window")
              else getattr(attention.config, "sliding_window", None))
    pos = torch.arange(t)
    hidden = pos[None, :] > pos[:, None]  # a query sees itself and the keys before it ...
    if window:
        hidden |= pos[None, :] <= pos[:, None] - window  # ... within its window
    return scores.masked_fill(hidden, float("-inf")).softmax(-1)


FAMILY = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2"),
    kind="causal-lm",
    layers="model.layers",
    sizes=dict(layers="num_hidden_layers", hidden="hidden_size", ffn="intermediate_size",
               heads="num_attention_heads", kv_heads="num_key_value_heads"),
    tensors={
        "model.embed_tokens.weight": (None, R),
        "model.norm.weight": (R,),
        "lm_head.weight": (None, R),
    },
    block={
        "input_layernorm.weight": (R,),
        "self_attn.q_proj.weight": (Q, R),
        "self_attn.q_proj.bias": (Q,),  # Qwen2, Llama with attention_bias
        "self_attn.k_proj.weight": (KV, R),
        "self_attn.k_proj.bias": (KV,),
        "self_attn.v_proj.weight": (KV, R),
        "self_attn.v_proj.bias": (KV,),
        "self_attn.o_proj.weight": (R, Q),
        "self_attn.o_proj.bias": (R,),
        "post_attention_layernorm.weight": (R,),
        "mlp.gate_proj.weight": (F, R),
        "mlp.gate_proj.bias": (F,),
        "mlp.up_proj.weight": (F, R),
        "mlp.up_proj.bias": (F,),
        "mlp.down_proj.weight": (R, F),
        "mlp.down_proj.bias": (R,),
    },
    ffn_input="mlp.down_proj",
    heads_input="self_attn.o_proj",
    embeddings=("model.embed_tokens.weight",),
    lm_head="lm_head.weight",
    final_norm="model.norm",
    attention="self_attn",
    values="self_attn.v_proj",
    attention_probs=attention_probs,
    norm_reads={"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj")},
)
