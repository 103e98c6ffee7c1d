"""Start a real ComfyUI server from the test host, talk to it over HTTP, always stop it.

Used by the server test layer and by the README's main command (run_examples.py).
Standard library only, so it runs under any python3.

    with ComfyServer(workdir) as server:
        prompt_id = server.queue(api_prompt)
        entry = server.wait(prompt_id)          # /history entry, raises on error
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HOST = Path(os.environ.get("ADJOINT_GUIDANCE_HOST", REPO / ".host"))
COMFY = HOST / "ComfyUI"
PY = HOST / "venv" / "bin" / "python"


class PromptFailed(RuntimeError):
    def __init__(self, message, entry=None):
        super().__init__(message)
        self.entry = entry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A `main.py` on a free loopback port with its own input/output/temp/user folders."""

    def __init__(self, workdir: Path, extra_model_paths: list[Path] = (), startup_timeout=120.0,
                 output_dir: Path | None = None):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.extra_model_paths = [HOST / "extra_model_paths.yaml", *extra_model_paths]
        self.startup_timeout = startup_timeout
        self.proc = None
        self.log_path = self.workdir / "server.log"
        self.output_dir = Path(output_dir) if output_dir else self.workdir / "output"

    # -- lifecycle -------------------------------------------------------------
    def start(self):
        for sub in ("input", "temp", "user"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # PyTorch's SDPA: ComfyUI's CPU default (sub-quadratic attention) is ~10x slower here.
        cmd = [str(PY), "main.py", "--cpu", "--use-pytorch-cross-attention", "--preview-method", "auto",
               "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--database-url", "sqlite:///:memory:",
               "--output-directory", str(self.output_dir),
               "--input-directory", str(self.workdir / "input"),
               "--temp-directory", str(self.workdir / "temp"),
               "--user-directory", str(self.workdir / "user")]
        for p in self.extra_model_paths:
            cmd += ["--extra-model-paths-config", str(p)]
        self._log = open(self.log_path, "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, cwd=COMFY, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {self.startup_timeout} s:\n{self.log_tail()}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines=80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- HTTP ------------------------------------------------------------------
    def request(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        ctype_json = raw[:1] in (b"{", b"[")
        return status, (json.loads(raw) if ctype_json else raw)

    def get(self, path, timeout=30):
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {body!r}")
        return body

    def post(self, path, body):
        return self.request("POST", path, body)

    def object_info(self, node_class=None) -> dict:
        info = self.get("/object_info" + (f"/{node_class}" if node_class else ""))
        return info[node_class] if node_class else info

    def queue(self, prompt: dict) -> str:
        """POST an API-format prompt; returns its id or raises with the server's node errors."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise PromptFailed(f"prompt rejected ({status}): {json.dumps(body, indent=1)}", body)
        return body["prompt_id"]

    def history(self, prompt_id) -> dict | None:
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id, timeout=300.0, check=True) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.history(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None \
                    and entry["status"].get("status_str") in ("success", "error"):
                if check and entry["status"]["status_str"] != "success":
                    raise PromptFailed(f"prompt {prompt_id} failed: {execution_error(entry)}", entry)
                return entry
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    async def events(self, session, prompt: dict):
        """Queue `prompt` on this client's websocket (an aiohttp `session`) and yield
        (prompt id, event) for every message until ComfyUI reports the prompt done
        (`executing` with node None); an event is the decoded JSON message, or None for a
        binary one (a preview image). The caller may stop early."""
        import aiohttp
        async with session.ws_connect(f"{self.url}/ws?clientId={self.client_id}") as ws:
            prompt_id = self.queue(prompt)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    yield prompt_id, None
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(msg.data)
                yield prompt_id, event
                data = event.get("data", {})
                if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    return

    def run(self, prompt: dict, timeout=300.0, check=True) -> dict:
        return self.wait(self.queue(prompt), timeout=timeout, check=check)

    def view(self, file_info: dict) -> bytes:
        q = urllib.parse.urlencode({k: file_info.get(k, "") for k in ("filename", "subfolder", "type")})
        status, body = self.request("GET", f"/view?{q}")
        if status != 200:
            raise RuntimeError(f"/view {q} -> {status}")
        return body


def execution_error(entry: dict) -> str:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message', '').strip()}"
    return entry.get("status", {}).get("status_str", "unknown")


if __name__ == "__main__":
    # Manual use: start a server on the test host and keep it up until Ctrl-C.
    import tempfile
    with ComfyServer(Path(tempfile.mkdtemp(prefix="comfy-"))) as s:
        print(f"ComfyUI at {s.url} (log {s.log_path})", file=sys.stderr)
        try:
            while s.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
