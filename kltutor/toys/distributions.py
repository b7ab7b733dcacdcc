"""Toys of chapters 1-2."""

__all__: list[str] = []
