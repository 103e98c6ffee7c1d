"""Adjoint Guidance: prompt schedules, a gradient-optimising sampler and guidance losses for ComfyUI.

ComfyUI imports this file when the pack sits in custom_nodes/. The nodes are declared
with the V3 schema (comfy_api.latest) in nodes/; the numerical core in adjoint/ is
plain torch and imports nothing from ComfyUI.
"""
from .nodes import comfy_entrypoint

WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
