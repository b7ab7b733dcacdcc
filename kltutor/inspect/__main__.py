"""``python -m kltutor.inspect FILE``: the deprecated alias of ``python -m kltutor.configcheck FILE``."""

import sys

from kltutor.configcheck.__main__ import main

if __name__ == "__main__":
    try:
        raise SystemExit(main(prog="python -m kltutor.inspect"))
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        raise SystemExit(0) from None
