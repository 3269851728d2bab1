"""Text that every layer can encode: lone UTF-16 surrogates replaced by U+FFFD.

JSON may carry `"\\ud800"`, a surrogate without its pair; Python decodes it into a str that
cannot be encoded as UTF-8, so tokenizers, cache keys and logs fail on it. hfserve replaces
such characters, as `errors="replace"` does, wherever text enters: request bodies
(serve_app/ingress/http/requests.py) and dicts given to the typed handle methods. Valid pairs (an
emoji written as two escapes) are joined by the JSON decoder first and are not touched.
"""

from __future__ import annotations

import re
from typing import Any

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_lone_surrogates(value: Any) -> Any:
    """`value` (str, or lists and dicts of them, keys included) with lone surrogates replaced."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [replace_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {replace_lone_surrogates(key): replace_lone_surrogates(item) for key, item in value.items()}
    return value
