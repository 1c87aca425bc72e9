"""slidr: slice-level detection of robotic ad clicks (an open implementation of SLIDR)."""

__version__ = "0.1.0"
