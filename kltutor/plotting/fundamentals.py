"""Figures of chapter 1."""

__all__: list[str] = []
