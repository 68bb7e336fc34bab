"""Patterns, verbalizers and their token-exact encoding (PVPs)."""

from jaxpet._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "PVP": "pvp",
        "get_pvp": "registry",
        "register_pvp": "registry",
        "Verbalizer": "verbalizer",
        "pvp_from_config": "template",
        "TemplateError": "template",
        "MultiTokenPVP": "multitoken",
        "encode_multi_token": "multitoken",
        "encode_multi_token_decoding": "multitoken",
        "encode_generation": "multitoken",
        "encode_primed": "priming",
    },
)

__all__ = __dir__()  # the lazily exported names above
