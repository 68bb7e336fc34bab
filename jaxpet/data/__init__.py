"""Task readers, few-shot sampling, batching and MLM masking."""

from jaxpet._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Example": "example",
        "load_examples": "tasks",
        "get_task": "tasks",
        "register_task": "tasks",
        "TaskSpec": "tasks",
        "task_from_config": "custom",
        "mask_tokens": "masking",
    },
)

__all__ = __dir__()  # the lazily exported names above
