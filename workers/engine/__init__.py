"""The ML engine: pure Python/torch, no Django imports.

Importing this package is cheap; each module imports torch/transformers/peft
itself, so the web process can use `examples` and `store` without loading torch.
"""
