"""`smolvlm serve`: an OpenAI-compatible server (POST /v1/chat/completions) with continuous batching.

starlette and uvicorn (the `server` extra) are imported only when the command runs, so the rest
of the CLI never loads them.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from smolvlm_cli.cli import output
from smolvlm_cli.cli.option_groups import ModelChoice, TilingChoice, option_groups
from smolvlm_cli.cli.options import DEFAULTS, QuietOpt
from smolvlm_cli.errors import SmolVLMError
from smolvlm_cli.extras import install_command
from smolvlm_cli.options import GenerationOptions
from smolvlm_cli.server.settings import DEFAULT_HOST, DEFAULT_PORT, ServerSettings

_DEFAULTS = ServerSettings()
_NET = "Network"
_LIMITS = "Limits"
_IMAGES = "Image sources"
API_KEY_ENV = "SMOLVLM_API_KEY"

EXAMPLES = """Examples:\n\n
smolvlm serve   (http://127.0.0.1:8080/v1, the default model)\n\n
smolvlm serve -m HuggingFaceTB/SmolVLM2-500M-Video-Instruct --max-batch 4 --api-key s3cret\n\n
smolvlm serve --host 0.0.0.0 --api-key s3cret --cors https://my.app\n\n
curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' -d '{"messages": [{"role": "user", "content": "Hi"}]}'"""


def register(app: typer.Typer) -> None:
    app.command(epilog=EXAMPLES)(serve)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is one `Error:` line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SmolVLMError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="choose another --port, or stop what is using it",
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class HttpThread:
    """uvicorn serving `app` on `sock` from a thread, from before the model loads (503 "Loading
    model", as llama-server, rather than clients hanging for minutes while graphs are built) to
    the end: one server, so no connection is dropped when the model arrives. The signals stay
    with the main thread, which loads the model and then waits here."""

    def __init__(self, app, sock: socket.socket):
        import uvicorn

        # streams still open at Ctrl-C get 5 s to finish; a second Ctrl-C ends them at once
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)  # off the main thread it installs no signal handler
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="smolvlm-http", daemon=True
        )
        self.thread.start()

    def wait(self) -> None:
        """Until the server ends (a Ctrl-C raises KeyboardInterrupt here, SIGTERM returns)."""
        stopped = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        try:
            while self.thread.is_alive() and not stopped.is_set():
                self.thread.join(0.2)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def stop(self) -> None:
        """A graceful stop (in-flight answers finish); a Ctrl-C meanwhile forces it."""
        self.server.should_exit = True
        try:
            while self.thread.is_alive():
                self.thread.join(0.2)
        except KeyboardInterrupt:
            self.server.force_exit = True
            self.thread.join()
            raise


def _require_server_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise SmolVLMError(
            f"the server needs starlette and uvicorn ({exc.name} is not installed)",
            hint=install_command("server"),
        ) from None


def public_model_id(model: str) -> str:
    """The name clients see: a Hub id as it is, a local folder by its base name (its path
    would tell every client, `/health` included, how the server's disk is laid out)."""
    from smolvlm_cli.hub import is_local

    return Path(model).expanduser().resolve().name if is_local(model) else model


@option_groups
def serve(
    model: ModelChoice = ModelChoice(),
    options: GenerationOptions = DEFAULTS,
    tiling: TilingChoice = TilingChoice(),
    host: Annotated[
        str,
        typer.Option(
            "--host",
            rich_help_panel=_NET,
            help="Address to listen on; the loopback by default (0.0.0.0: every interface).",
        ),
    ] = DEFAULT_HOST,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, rich_help_panel=_NET, help="TCP port (0: any free one).")
    ] = DEFAULT_PORT,
    api_key: Annotated[
        Optional[list[str]],
        typer.Option(
            "--api-key",
            envvar=API_KEY_ENV,
            show_envvar=True,
            rich_help_panel=_NET,
            show_default=False,
            help="Require this key ('Authorization: Bearer KEY' or 'X-Api-Key: KEY'); repeat for several. "
            "/health stays public.",
        ),
    ] = None,
    served_name: Annotated[
        Optional[str],
        typer.Option(
            "--served-name",
            metavar="NAME",
            rich_help_panel=_NET,
            show_default=False,
            help="The model name clients use and see (default: the Hub id, or a local folder's base name).",
        ),
    ] = None,
    cors: Annotated[
        Optional[list[str]],
        typer.Option(
            "--cors",
            metavar="ORIGIN",
            rich_help_panel=_NET,
            show_default=False,
            help="Let web pages from this origin call the API (repeatable; '*' for any).",
        ),
    ] = None,
    max_batch: Annotated[
        int,
        typer.Option(
            "--max-batch",
            min=1,
            rich_help_panel=_LIMITS,
            help="Replies decoded together; a finished one's place goes to the next request at once.",
        ),
    ] = _DEFAULTS.max_batch,
    max_queue: Annotated[
        int,
        typer.Option(
            "--max-queue",
            min=0,
            rich_help_panel=_LIMITS,
            help="Requests that may wait for a place; beyond it the server answers 503 at once.",
        ),
    ] = _DEFAULTS.max_queue,
    max_image_mb: Annotated[
        float,
        typer.Option(
            "--max-image-mb",
            min=0.001,
            rich_help_panel=_LIMITS,
            help="Largest image accepted, in MB, whatever its source.",
        ),
    ] = _DEFAULTS.max_image_bytes / 1e6,
    max_video_mb: Annotated[
        float,
        typer.Option(
            "--max-video-mb",
            min=0.001,
            rich_help_panel=_LIMITS,
            help="Largest video accepted (video_url parts), in MB.",
        ),
    ] = _DEFAULTS.max_video_bytes / 1e6,
    max_images: Annotated[
        int, typer.Option("--max-images", min=1, rich_help_panel=_LIMITS, help="Most images and videos in one request.")
    ] = _DEFAULTS.max_images,
    max_request_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--max-request-tokens",
            min=2,
            rich_help_panel=_LIMITS,
            show_default="the model's context",
            help="Most prompt + completion tokens in one request.",
        ),
    ] = None,
    body_timeout: Annotated[
        float,
        typer.Option(
            "--body-timeout",
            min=0.1,
            rich_help_panel=_LIMITS,
            help="Seconds a request's body may take to arrive; then the request gets 408.",
        ),
    ] = _DEFAULTS.body_timeout_s,
    allow_remote_images: Annotated[
        bool,
        typer.Option(
            "--allow-remote-images",
            rich_help_panel=_IMAGES,
            help="Fetch http(s) image URLs (capped by --max-image-mb and --remote-timeout). The server "
            "then requests any address a client names: for trusted clients only.",
        ),
    ] = False,
    remote_timeout: Annotated[
        float,
        typer.Option(
            "--remote-timeout", min=0.1, rich_help_panel=_IMAGES, help="Seconds a remote image may take to download."
        ),
    ] = _DEFAULTS.remote_timeout_s,
    allow_local_files: Annotated[
        Optional[Path],
        typer.Option(
            "--allow-local-files",
            metavar="ROOT",
            rich_help_panel=_IMAGES,
            exists=True,
            file_okay=False,
            show_default=False,
            help="Accept image paths and file:// URLs below this folder (never outside it).",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Serve the model over HTTP with OpenAI's chat-completions API (needs the `server` extra).

    Requests share decoder steps (continuous batching); replies equal one-at-a-time replies for greedy fp32 decoding. The sampling options are the defaults of requests that do not set them (without max_tokens a reply stops after --max-new-tokens); the tiling options apply to images whose request gives no image_url.detail. Requests are logged on stderr.
    """
    _require_server_extra()
    if model.backend == "torch":
        raise typer.BadParameter(
            "the server decodes requests together, which the torch backend cannot: use the ONNX backend",
            param_hint="'--backend'",
        )
    settings = ServerSettings(
        model_id=served_name or public_model_id(model.model),
        api_keys=tuple(api_key or ()),
        max_batch=max_batch,
        max_queue=max_queue,
        max_image_bytes=int(max_image_mb * 1e6),
        max_video_bytes=int(max_video_mb * 1e6),
        max_images=max_images,
        max_request_tokens=max_request_tokens,
        allow_remote_images=allow_remote_images,
        remote_timeout_s=remote_timeout,
        body_timeout_s=body_timeout,
        local_root=allow_local_files,
        cors_origins=tuple(cors or ()),
    )
    sock = _bind(host, port)  # before the model loads: a taken port fails fast

    from smolvlm_cli.server.app import ChatServer, create_loading_app

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    app = create_loading_app(settings)  # 503 "Loading model" until the model is in
    http = HttpThread(app, sock)
    server = None
    try:
        vlm = model.load(quiet)  # here: a load error is one Error line, a Ctrl-C stops it at once
        server = ChatServer(vlm, replace(settings, tiling=tiling.resolve(lambda: vlm.config)), options)
        server.scheduler.start()
        app.state.server = server
        bound_host, bound_port = sock.getsockname()[:2]
        if not quiet:
            output.log(
                f"Serving {model.model} ({vlm.backend.dtype}) at http://{bound_host}:{bound_port}/v1 "
                f"(max batch {max_batch}, queue {max_queue}); Ctrl-C stops"
            )
            if not settings.api_keys and host not in ("127.0.0.1", "::1", "localhost"):
                output.log(f"Warning: listening on {host} without --api-key: anyone who can reach it may use it")
        http.wait()
    finally:
        http.stop()
        if server is not None:
            server.scheduler.close()
