"""Audit a model someone else trained: ``backdoorlearn audit`` as Python functions."""

from ._audit import audit_file, audit_model, format_summary
from ._report import render_html

__all__ = ["audit_file", "audit_model", "format_summary", "render_html"]
