"""Model definitions; importing this registers every architecture in timm's factory."""
from ._pretrained import build_model_with_pretrained, check_state_dict, pretrained_cfg_kwargs
from .mednext import MedNeXt
from .medunext import MedUNeXt

__all__ = ['MedNeXt', 'MedUNeXt', 'build_model_with_pretrained', 'check_state_dict', 'pretrained_cfg_kwargs']
