"""Model definitions; importing this registers every architecture in timm's factory."""
from ._export_form import export_form
from .mednext import MedNeXt
from .medunext import MedUNeXt

__all__ = ['MedNeXt', 'MedUNeXt', 'export_form']
