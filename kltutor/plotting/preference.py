"""Figures of chapter 5."""

__all__: list[str] = []
