"""Hugging Face ``GlmMoeDsaForCausalLM`` checkpoint import and export."""
