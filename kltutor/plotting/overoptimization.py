"""Figures of chapter 6."""

__all__: list[str] = []
