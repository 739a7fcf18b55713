"""The conformance checks: pytest modules parametrized by `layernorm_conformance.plugin` (target x dtype)."""
