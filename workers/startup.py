"""Worker start-up: import the model libraries once, before any task runs.

transformers resolves names such as `AutoModelForCausalLM` lazily, on first use. In a
threads-pool worker (the serving worker) several tasks can make that first use at once,
and a name looked up while another thread is still importing its module fails with
ImportError. Importing them here, in the worker's main process before its pool starts,
means no task ever races on it (prefork children inherit the imported modules).
"""

from celery import signals


@signals.worker_init.connect
def import_model_libraries(**kwargs) -> None:
    import peft  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
