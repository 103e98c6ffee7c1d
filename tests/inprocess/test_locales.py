"""locales/en/: the names and tooltips the frontend shows for the pack, against the schemas.

The frontend looks up `nodeDefs.<NodeId>.display_name|description`,
`nodeDefs.<NodeId>.inputs.<input>.name|tooltip` and `nodeDefs.<NodeId>.outputs.<i>.name|tooltip`
in the messages ComfyUI's /i18n route merges from every pack's locales/<lang>/.
"""
import json

import make_locales
from comfy_harness import pack_submodule

ENTRY_KEYS = {"display_name", "description", "inputs", "outputs"}


def pack_infos():
    return [cls.GET_NODE_INFO_V1() for cls in pack_submodule("nodes").all_nodes()]


def input_names(info) -> list[str]:
    return [name for section in ("required", "optional") for name in info["input"].get(section, {})]


def test_committed_locales_are_what_the_schemas_give(comfy_nodes):
    for path, text in make_locales.expected_files(pack_infos()).items():
        assert path.exists(), f"{path} missing: run python3 scripts/make_locales.py"
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run python3 scripts/make_locales.py"


def test_every_node_input_and_output_has_a_name_and_a_tooltip(comfy_nodes):
    infos = pack_infos()
    defs = json.loads(make_locales.NODE_DEFS.read_text(encoding="utf-8"))
    assert set(defs) == {info["name"] for info in infos} and len(infos) >= 10
    for info in infos:
        node = info["name"]
        entry = defs[node]
        assert set(entry) <= ENTRY_KEYS, (node, set(entry) - ENTRY_KEYS)
        assert entry["display_name"] == info["display_name"] and entry["display_name"] != node
        assert entry.get("description"), node
        names = input_names(info)
        assert list(entry["inputs"]) == names, node
        for name in names:
            options = next(info["input"][s][name] for s in ("required", "optional")
                           if name in info["input"].get(s, {}))[1]
            assert options.get("tooltip"), f"{node}.{name}: no tooltip in the schema"
            label = options.get("display_name") or name
            assert entry["inputs"][name] == {"name": label, "tooltip": options["tooltip"]}, (node, name)
        assert list(entry["outputs"]) == [str(i) for i in range(len(info["output"]))], node
        for i, out in enumerate(entry["outputs"].values()):
            assert out["name"] == info["output_name"][i], (node, i)
            assert out.get("tooltip") and out["tooltip"] == info["output_tooltips"][i], (node, i)


def test_the_server_merges_them_where_the_frontend_reads_them(comfy_nodes):
    """ComfyUI's own loader (app/custom_node_manager.py, the /i18n route) finds our files."""
    from app.custom_node_manager import CustomNodeManager
    en = CustomNodeManager().build_translations()["en"]
    ours = {k: v for k, v in en["nodeDefs"].items() if k.startswith("AdjointGuidance_")}
    assert ours == json.loads(make_locales.NODE_DEFS.read_text(encoding="utf-8"))
    tip = ours["AdjointGuidance_AdjointSampler"]["inputs"]["optimize"]["tooltip"]
    assert "noise" in tip and "prompt" in tip
    # the template browser's "Extensions" entry is the pack folder's name
    folder = next(k for k in comfy_nodes.LOADED_MODULE_DIRS if k in make_locales.PACK_FOLDERS)
    assert en["templateWorkflows"]["category"][folder] == "Adjoint Guidance"
