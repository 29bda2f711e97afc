"""The recipe language: pure data and validation (no torch)."""

from ftcli.recipe.load import load_recipe
from ftcli.recipe.schema import Recipe

__all__ = ["Recipe", "load_recipe"]
