"""Model definitions; importing this registers every architecture in timm's factory."""
from .mednext import MedNeXt

__all__ = ['MedNeXt']
