"""Recipe registry: ``recipe.name`` in a config picks the class; its ``Config`` dataclass types the rest."""
from __future__ import annotations

from importlib import import_module

from .base import MaskingRecipe, Recipe, StepInfo

# name -> "module:Class", imported on first use so that one broken recipe never hides the others
_RECIPES = {
    "sonata": "sonata:SonataRecipe",
    "msm": "msm:MSMRecipe",
    "jepa": "jepa:JEPARecipe",
    "mae": "mae:MAERecipe",
    "acl": "acl:ACLRecipe",
}


def names() -> list[str]:
    return list(_RECIPES)


def recipe_class(name: str) -> type[Recipe]:
    if name not in _RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {names()}")
    module, cls = _RECIPES[name].split(":")
    return getattr(import_module(f"{__name__}.{module}"), cls)


__all__ = ["Recipe", "MaskingRecipe", "StepInfo", "names", "recipe_class"]
