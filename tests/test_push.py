"""`tatk push`: it validates the export first (listing what it would upload), refuses one that references local
folders, and its failures end in one `error:` line and exit 2, the token never shown: a local HTTP server stands
in for the Hub (HF_ENDPOINT), answering as the Hub does for a bad token, a read-only token, a missing repository
or revision; a closed port stands in for no network."""

from __future__ import annotations

import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import run_tatk

TOKEN = "hf_FakeSecretToken0123456789"


@pytest.fixture(scope="module")
def exported(asr_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("push") / "model"
    run_tatk("export", asr_run["checkpoint"], out)  # merged: an export that references local folders is refused
    return out


class FakeHub(BaseHTTPRequestHandler):
    """Answers every request with the server's ``answer``: (status, X-Error-Code header or None, JSON body)."""

    def _reply(self):
        status, code, body = self.server.answer
        self.server.seen.append((self.command, self.path, self.headers.get("authorization", "")))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code:
            self.send_header("X-Error-Code", code)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = _reply

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _push(exported, endpoint: str, *extra: str):
    env = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = run_tatk("push", exported, "someone/tiny-asr", *extra, check=False, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    assert TOKEN not in proc.stderr + proc.stdout
    return proc.stderr


@pytest.mark.parametrize("status, code, expect", [
    (401, None, "token was rejected (401"),
    (403, None, "may not write there (403"),
    (404, "RepoNotFound", "repository not found"),
    (404, "RevisionNotFound", "revision 'dev' not found"),
    (500, None, "the Hub answered 500"),
])
def test_hub_errors_end_in_one_line(exported, hub, status, code, expect):
    # the body echoes the token, as a careless server might: it must still never be shown
    hub.answer = (status, code, '{"error": "bad request from token %s"}' % TOKEN)
    err = _push(exported, f"http://127.0.0.1:{hub.server_address[1]}", "--revision", "dev")
    assert expect in err and "someone/tiny-asr" in err, err
    assert hub.seen and hub.seen[0][2] == f"Bearer {TOKEN}", "the request never reached the fake Hub: vacuous"


def test_no_route_to_the_hub_ends_in_one_line(exported):
    with socket.socket() as s:  # a port nothing listens on: connection refused, as with no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = _push(exported, f"http://127.0.0.1:{port}")
    assert "cannot reach the Hub at http://127.0.0.1:" in err and "ConnectError" in err, err


def test_push_dry_run_lists_files_and_rejects_bad_folders(exported, tmp_path):
    from tatk.errors import UserError
    from tatk.export import push

    proc = run_tatk("push", exported, "someone/tiny-asr", "--dry-run")
    assert "model.safetensors" in proc.stdout and "modeling_tatk.py" in proc.stdout and "would upload" in proc.stdout
    assert f"{(exported / 'model.safetensors').stat().st_size:,}" in proc.stdout
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "modeling_tatk.py").unlink()
    garbled = tmp_path / "garbled"
    shutil.copytree(exported, garbled)
    (garbled / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    for folder, why in ((broken, "missing modeling_tatk.py"), (garbled, "cannot read weights"), (tmp_path / "nothing", "no such folder")):
        with pytest.raises(UserError, match=why) as e:
            push(folder, "someone/tiny-asr", dry_run=True)
        assert "\n" not in str(e.value)


def test_push_offline_fails_with_one_line(exported):
    proc = run_tatk("push", exported, "someone/tiny-asr", check=False, env={"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_secret_x"})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error:") and "hf_secret_x" not in proc.stderr + proc.stdout


def test_push_refuses_an_export_that_references_local_folders(asr_run, tmp_path):
    """`tatk export --no-merged` of local bases loads here (test_export.py) but not for anyone on the Hub."""
    out = tmp_path / "refs"
    run_tatk("export", asr_run["checkpoint"], out, "--no-merged")
    proc = run_tatk("push", out, "someone/tiny-asr", "--dry-run", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "local folder" in proc.stderr and "--merged" in proc.stderr and "would upload" not in proc.stdout
