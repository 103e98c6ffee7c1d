// Adjoint Guidance frontend extension: registers the pack with the ComfyUI frontend.
// Node-specific widgets (schedule time line, loss plot) hook in here as they land.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "AdjointGuidance.Core",
});
