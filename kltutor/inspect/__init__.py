"""Deprecated alias of :mod:`kltutor.configcheck` (the config inspector's old name), kept for one release.

``import kltutor.inspect`` and ``python -m kltutor.inspect FILE`` still work and do exactly what
``kltutor.configcheck`` does; the package was renamed because ``inspect`` shadows the standard library's
module of that name. Use ``kltutor.configcheck``: this alias goes in the next release.
"""

from kltutor.configcheck import (
    WARNING_CODES,
    ConfigError,
    Finding,
    KLTerm,
    Report,
    inspect_file,
    inspect_text,
)
from kltutor.configcheck import fields as fields  # the old kltutor.inspect.fields

__all__ = ["ConfigError", "KLTerm", "Finding", "Report", "inspect_file", "inspect_text", "WARNING_CODES"]
