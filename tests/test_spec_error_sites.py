"""docs/spec.md's "Errors" says where bad input is refused, and `layernorm.layer_norm`'s docstring which error it is."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import layernorm

ROOT = Path(__file__).resolve().parents[1]
X = np.ones((2, 3, 4), np.float32)


class _Unowned:
    """An array-like of a framework no backend owns."""

    shape = (2, 3)
    dtype = np.dtype("float32")


BAD_CALLS: dict[str, Callable[[], Any]] = {
    "axis out of range": lambda: layernorm.layer_norm(X, axis=3),
    "eps negative": lambda: layernorm.layer_norm(X, eps=-1.0),
    "integer x": lambda: layernorm.layer_norm(X.astype(np.int32)),
    "half of the statistics": lambda: layernorm.layer_norm_backward(X, X, mean=np.zeros((2, 3, 1), np.float32)),
    "return_stats not a bool": lambda: layernorm.layer_norm(X, return_stats=1),
    "unknown backend": lambda: layernorm.layer_norm(X, backend="no-such-backend"),
    "masked array": lambda: layernorm.layer_norm(np.ma.array(X)),
    "no backend owns x": lambda: layernorm.layer_norm(_Unowned()),
}


def _named_files() -> set[str]:
    """The files the first paragraph of docs/spec.md's "Errors" names as where the checks are."""
    errors = (ROOT / "docs" / "spec.md").read_text().split("\n## Errors\n", 1)[1]
    paragraph = errors.strip().split("\n\n", 1)[0]
    return set(re.findall(r"`([\w/]+\.py)`", paragraph))


def _raised_in(error: BaseException) -> str:
    """The path of the file whose ``raise`` statement raised ``error``."""
    tb = error.__traceback__
    assert tb is not None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).as_posix()


@pytest.mark.parametrize("bad", BAD_CALLS.values(), ids=list(BAD_CALLS))
def test_each_error_comes_from_a_file_the_spec_names(bad: Callable[[], Any]) -> None:
    with pytest.raises(layernorm.LayerNormError) as caught:
        bad()
    raised_in, named = _raised_in(caught.value), _named_files()
    assert any(raised_in.endswith(f"/{name}") for name in named), f"raised in {raised_in}; the spec names {named}"


DOCUMENTED = {  # a bad call -> what layer_norm's docstring says of it, under the class it raises
    "integer x": "int",
    "return_stats not a bool": "return_stats",
    "unknown backend": "unknown",
    "masked array": "masked",
    "no backend owns x": "no backend owns",
    "eps a string": "not a real number",
    "eps infinite in float32": "in the compute dtype",
}
MORE_BAD_CALLS: dict[str, Callable[[], Any]] = {
    "eps a string": lambda: layernorm.layer_norm(X, eps="1e-5"),
    "eps infinite in float32": lambda: layernorm.layer_norm(X, eps=1e39),
}


@pytest.mark.parametrize(("case", "words"), DOCUMENTED.items(), ids=list(DOCUMENTED))
def test_layer_norms_docstring_says_each_error(case: str, words: str) -> None:
    with pytest.raises(layernorm.LayerNormError) as caught:
        {**BAD_CALLS, **MORE_BAD_CALLS}[case]()
    raises = (layernorm.layer_norm.__doc__ or "").split("Raises:", 1)[1].split("Example:", 1)[0]
    entries = dict(re.findall(r"\n {8}(\w+): (.*?)(?=\n {8}\w+:|\Z)", raises, re.S))
    entry = " ".join(entries[type(caught.value).__name__].split())
    assert words in entry, f"layer_norm's {type(caught.value).__name__} entry does not say {words!r}: {entry}"
