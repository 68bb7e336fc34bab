"""Flax models of the masked LMs (BERT, RoBERTa, XLM-R, ALBERT) and T5, with HF checkpoint conversion."""

from jaxpet._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "load_pretrained": "pretrained",
        "save_pretrained": "pretrained",
        "LoadedModel": "pretrained",
    },
)
