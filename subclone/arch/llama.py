"""The Llama layout: Llama, SmolLM2, Mistral, Qwen2. Pre-norm RMSNorm, rotary, grouped-query attention."""
from . import F, KV, Q, R, Family

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
    norm_reads={"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj")},
)
