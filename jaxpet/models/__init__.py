"""Flax masked LMs (BERT, RoBERTa, XLM-R, ALBERT) and T5, with HF checkpoint conversion."""

from jaxpet._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "load_pretrained": "pretrained",
        "save_pretrained": "pretrained",
        "LoadedModel": "pretrained",
        "init_model": "pretrained",
        "logical_partition_specs": "pretrained",
        "EncoderConfig": "config",
        "T5Config": "t5_config",
        "T5": "t5",
        "load_t5": "t5_convert",
        "save_t5": "t5_convert",
    },
)

__all__ = __dir__()  # the lazily exported names above
