"""Model definitions; importing this registers every architecture in timm's factory."""
from ._export_form import export_form
from ._pretrained import build_model_with_pretrained, check_state_dict, pretrained_cfg_kwargs
from .mednext import MedNeXt
from .medunext import MedUNeXt

__all__ = ['MedNeXt', 'MedUNeXt', 'build_model_with_pretrained', 'check_state_dict', 'export_form',
           'pretrained_cfg_kwargs']
