"""GPT-2: pre-norm LayerNorm, learned positions, fused q|k|v in Conv1D layers that store (in, out)."""
from . import F, Q, QKV, R, Family

FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    kind="causal-lm",
    layers="transformer.h",
    sizes=dict(layers="n_layer", hidden="n_embd", ffn="n_inner", heads="n_head"),
    tensors={
        "transformer.wte.weight": (None, R),
        "transformer.wpe.weight": (None, R),
        "transformer.ln_f.weight": (R,),
        "transformer.ln_f.bias": (R,),
        "lm_head.weight": (None, R),
    },
    block={
        "ln_1.weight": (R,),
        "ln_1.bias": (R,),
        "attn.c_attn.weight": (R, QKV),
        "attn.c_attn.bias": (QKV,),
        "attn.c_proj.weight": (Q, R),
        "attn.c_proj.bias": (R,),
        "ln_2.weight": (R,),
        "ln_2.bias": (R,),
        "mlp.c_fc.weight": (R, F),
        "mlp.c_fc.bias": (F,),
        "mlp.c_proj.weight": (F, R),
        "mlp.c_proj.bias": (R,),
    },
    ffn_input="mlp.c_proj",
    heads_input="attn.c_proj",
    embeddings=("transformer.wte.weight", "transformer.wpe.weight"),
    lm_head="lm_head.weight",
    final_norm="transformer.ln_f",
    weights_in_out=True,
    head_dim_from_hidden=True,
    defaults={"ffn": 4},  # n_inner=None means 4 * n_embd
)
