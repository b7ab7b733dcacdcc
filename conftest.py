"""pytest's collection rules for the repository (the tests themselves are in tests/).

`make doctest` imports every module of the package; the modules that subclass a trainer library's classes at
import time need the [trainers] extra (`make trainers-venv`), so they are left out where it is not installed.
"""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("trl") else ["kltutor/trainers/grpo_extension.py"]
