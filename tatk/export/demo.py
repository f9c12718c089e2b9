"""``tatk demo``: serve the web page of ``app.py`` for a trained model on this machine."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from tatk.errors import UserError


@dataclass
class DemoOptions:
    """What ``tatk demo`` serves, and where."""

    model: str  # checkpoint, run or export folder, or Hub id (anything load_pipeline takes)
    host: str = "127.0.0.1"  # the address to bind; 0.0.0.0 exposes the page to the network
    port: int = 7860
    share: bool = False  # also open a temporary public gradio.live link (Gradio's --share)
    max_seconds: float = 120.0  # uploads longer than this are refused in the page
    device: str | None = None  # cpu, cuda, cuda:1...; default cuda when available


def _check_port(host: str, port: int) -> None:
    """Fail before loading the model when the port is taken, rather than after."""
    if not 0 < port < 65536:
        raise UserError(f"--port {port}: not a TCP port (1-65535)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot serve on {host}:{port} ({e.strerror or e}); choose another --port") from None


def run_demo(opts: DemoOptions) -> None:
    """Load the model through ``load_pipeline`` and serve the page until interrupted."""
    import torch

    from tatk.export.app import build_app, launch
    from tatk.export.load import load_pipeline

    if opts.max_seconds <= 0:
        raise UserError(f"--max-seconds {opts.max_seconds:g}: must be positive")
    _check_port(opts.host, opts.port)
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(opts.model, device=device)
    title = f"{opts.model.rstrip('/').split('/')[-1]} (tatk)"
    launch(build_app(pipe, title=title, max_seconds=opts.max_seconds), server_name=opts.host,
           server_port=opts.port, share=opts.share)
