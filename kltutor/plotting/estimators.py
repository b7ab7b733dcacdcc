"""Figures of chapter 2."""

__all__: list[str] = []
