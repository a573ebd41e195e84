"""Types of the tests' shared fixtures, declared once (tests/conftest.py provides them)."""

from __future__ import annotations

from typing import Any, Protocol

from oidownload.testing.origin import Corpus, Origin


class StartOrigin(Protocol):
    """The `make_origin` fixture: starts an Origin serving the corpus, stopped after the test."""

    def __call__(self, corpus: Corpus, **kw: Any) -> Origin: ...
