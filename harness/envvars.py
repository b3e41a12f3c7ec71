"""``${NAME}`` environment references in paths.

Suites and image lists may point at data that lives outside the project, at a place that differs between
machines: ``${QUANT_HARNESS_REALMODELS}/mobilenet_v2/mobilenet_v2.onnx``. Only the braced form is expanded, so a
``$`` in an ordinary file name stays literal, and an unset variable is reported instead of silently becoming a
path relative to the current folder.
"""

from __future__ import annotations

import os
import re

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def unset_variables(value: str) -> list[str]:
    """The ``${NAME}`` references in ``value`` whose variable is unset or empty."""
    return [name for name in ENV_REFERENCE.findall(value) if not os.environ.get(name)]


def expand_variables(value: str) -> str:
    """``value`` with every set ``${NAME}`` replaced by its value; callers check :func:`unset_variables` first."""
    return ENV_REFERENCE.sub(lambda m: os.environ.get(m.group(1)) or m.group(0), value)
