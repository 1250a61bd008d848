from .flat import FlatSpace

__all__ = ["FlatSpace"]
