"""Toys of chapters 4-5."""

__all__: list[str] = []
