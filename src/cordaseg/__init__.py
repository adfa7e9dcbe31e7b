"""cordaseg: domain-adaptive semantic segmentation guided by self-supervised depth (CorDA)."""

__version__ = "0.1.0"
