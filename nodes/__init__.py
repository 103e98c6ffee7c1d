"""ComfyUI bindings: every node of the pack, registered through one V3 extension.

Node modules only translate between ComfyUI types and calls into adjoint/; each
exposes NODES, the classes it contributes.
"""
from comfy_api.latest import ComfyExtension, io

from . import node_modules, routes

routes.register_routes()        # the pack's HTTP routes (the schedule time line preview)

NODE_ID_PREFIX = "AdjointGuidance_"


def all_nodes() -> list[type[io.ComfyNode]]:
    return [cls for module in node_modules.MODULES for cls in module.NODES]


class AdjointGuidanceExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()


async def comfy_entrypoint() -> ComfyExtension:
    return AdjointGuidanceExtension()
