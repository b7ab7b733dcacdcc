"""Figures of chapter 7."""

__all__: list[str] = []
