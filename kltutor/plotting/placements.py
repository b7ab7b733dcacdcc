"""Figures of chapter 3."""

__all__: list[str] = []
