"""Moved: the machine description is :mod:`mednext_zoo.machine` (0.2); this module re-exports it for older
imports and will be removed in 0.3."""
from ..machine import _version, machine_info, machine_label, package_version  # noqa: F401

__all__ = ['machine_info', 'machine_label', 'package_version']
