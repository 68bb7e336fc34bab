"""Decoding: K-step multi-mask scoring/generation for cloze models and seq2seq generation."""

from jaxpet._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "multi_mask_decode": "multi_mask",
        "multi_mask_generate": "wsc_match",
        "make_multi_mask_decoder": "multi_mask",
        "wsc_string_match": "wsc_match",
        "wsc_generated_text": "wsc_match",
        "generate": "seq2seq",
        "score_targets": "seq2seq",
    },
)

__all__ = __dir__()  # the lazily exported names above
