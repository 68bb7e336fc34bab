"""`import jaxpet` is cheap and reaches the public subpackages; their __all__ names exist."""

from __future__ import annotations

import subprocess
import sys

import pytest

import jaxpet


def test_import_jaxpet_loads_neither_jax_nor_transformers():
    code = "import sys, jaxpet; print(sorted({'jax', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", jaxpet.__all__)
def test_every_public_subpackage_is_an_attribute_and_its_all_names_exist(name):
    module = getattr(jaxpet, name)
    assert module.__name__ == f"jaxpet.{name}"
    names = getattr(module, "__all__", None)
    assert names, f"jaxpet.{name} declares no __all__"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"jaxpet.{name}.__all__ names what it lacks: {missing}"


def test_the_design_pages_losses_are_public():
    for name in ("label_logits", "cloze_loss", "mlm_loss", "pet_loss", "distillation_loss",
                 "multi_token_log_likelihood", "hinge_loss"):
        assert name in jaxpet.losses.__all__


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'jaxpet' has no attribute 'lossess'"):
        jaxpet.lossess  # noqa: B018
