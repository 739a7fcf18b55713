"""The JAX backend of layernorm (a plugin, found through the ``layernorm.backends`` entry point)."""
