"""Whole applications on top of the library: ``atrous demo`` and ``atrous serve``."""
