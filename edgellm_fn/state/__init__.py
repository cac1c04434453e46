"""Device state pytrees: KV cache, RoPE table, per-step I/O, and the bundle steps thread."""
