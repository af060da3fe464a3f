"""Model definitions; importing this registers every architecture in timm's factory."""
from .mednext import MedNeXt
from .medunext import MedUNeXt

__all__ = ['MedNeXt', 'MedUNeXt']
