"""The Jinja2 environment (autoescaping on: Flickr titles and author names are untrusted)
over the templates shipped in oidownload/gallery/templates/."""

from __future__ import annotations

import functools
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


@functools.cache
def environment() -> Environment:
    return Environment(
        loader=PackageLoader("oidownload.gallery", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,  # a missing value is a bug, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, context: dict[str, Any]) -> str:
    return environment().get_template(template).render(context)
