"""OpenAI-compatible inference under /v1/: `model` names a person's adapter."""
