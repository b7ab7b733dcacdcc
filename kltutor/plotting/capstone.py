"""Figures of chapter 9."""

__all__: list[str] = []
