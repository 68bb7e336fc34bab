"""jaxpet: PET, iPET, multi-token verbalizers and T5 text-to-text few-shot learning in JAX."""

__version__ = "0.1.0"
