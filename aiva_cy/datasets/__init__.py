"""Small data sets shipped with :mod:`aiva_cy`."""

from ._digits import load_digits

__all__ = ["load_digits"]
