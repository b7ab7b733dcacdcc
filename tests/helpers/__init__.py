"""Helpers the tests share, imported as ``from tests.helpers.<module> import ...`` (``tests`` is a package)."""
