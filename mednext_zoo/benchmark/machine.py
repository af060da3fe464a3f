"""Moved: the machine description is :mod:`mednext_zoo.machine` (0.2); this module re-exports it for older
imports and will be removed in 0.3."""
from ..machine import machine_info, machine_label, package_version

__all__ = ['machine_info', 'machine_label', 'package_version']

_version = package_version  # the name before 0.2
