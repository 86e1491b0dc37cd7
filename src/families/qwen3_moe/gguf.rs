//! Qwen3-MoE → GGUF: Qwen2-MoE's conversion ([`crate::families::qwen2_moe::gguf`], as
//! llama.cpp's `Qwen3MoeModel` extends `Qwen2MoeModel`) with Qwen3-MoE's per-layer names:
//! the q/k norms as `attn_{q,k}_norm`, no biases, no shared expert. Its `head_dim` is written
//! as `key_length`/`value_length`.

/// llama.cpp's names for Qwen3-MoE's per-layer tensors (not the per-expert ones), in its
/// order. The dense feed-forward names serve `--format mlx` and the forward for the models
/// with dense layers, which no GGUF holds.
pub const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate.weight", "ffn_gate_inp.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];
