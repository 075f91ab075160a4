"""Built-in real data, shipped with the package (no download at run time)."""

from .nuclei import instances_to_classes, nuclei

__all__ = ["instances_to_classes", "nuclei"]
