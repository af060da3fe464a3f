"""mednext-zoo: MedNeXt and MedUNeXt (Xue et al., PLoS One 2026) for timm.

``import mednext_zoo`` registers the models in timm's factory::

    import mednext_zoo, timm
    model = timm.create_model("mednext_base", num_classes=2)
"""
from . import models
from .models import MedNeXt
from .version import __version__

__all__ = ['__version__', 'models', 'MedNeXt']
