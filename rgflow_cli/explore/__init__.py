"""`rgflow explore`: the latent hierarchy of a model in the browser, live.

A local web page served by the tool (FastAPI + uvicorn, the optional extra
`rgflow[explore]`): sample, encode your images, move single latents, resample or cool one
level, mix two images across scales, and see where each latent acts. The page (static/)
is plain HTML, CSS and JavaScript shipped with the package; nothing is fetched from the
internet.

Only typer and the shared options are imported here: this module is imported whenever
`rgflow` runs, and `--help` must stay instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rgflow_cli.options import AllowLargeOpt, CheckpointOpt, DeviceOpt, ResizeOpt, SeedOpt

if TYPE_CHECKING:
    import socket

THUMBNAILS = 24  # the page offers the first images of --images as thumbnails
LOOPBACK = ("127.0.0.1", "localhost", "::1")
INSTALL = "rgflow explore needs FastAPI and uvicorn: pip install 'rgflow[explore]'"


def _require_extra() -> None:
    from rgflow_core.errors import UsageError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL) from None


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), so that a busy port is one clear error up front."""
    import socket

    from rgflow_core.errors import UsageError

    try:
        family, kind, proto, *_ = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise UsageError(f"cannot serve on {host!r}: {err}", "host") from None
    # proto must say TCP: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on such
    # sockets, and with it on, a response's body waits ~40 ms for the ACK of its headers
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror or err}", "port") from None
    return sock


def explore(
    checkpoint: CheckpointOpt = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help=f"Folder of images: the first {THUMBNAILS} are offered on the page, and the "
            "latents' spread is measured on up to --samples of them. Default for a model of "
            "MSDS: its test images (its own data, or a set generated once into the cache).",
        ),
    ] = None,
    host: Annotated[
        str,
        typer.Option("--host", help="Address to serve on; another than 127.0.0.1 opens it up."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 7860,
    samples: Annotated[
        int,
        typer.Option(
            "--samples",
            min=2,
            max=4096,
            help="Images (or, without --images, prior samples) that set each latent's spread.",
        ),
    ] = 64,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the page in the default web browser.")
    ] = False,
    resize: ResizeOpt = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    allow_large: AllowLargeOpt = False,
) -> None:
    """Explore the latent hierarchy in the browser: levels, factors, mixing, receptive fields.

    Serves a local page (Ctrl-C stops it). Needs the extra: pip install 'rgflow[explore]'.
    """
    _require_extra()
    import uvicorn

    from rgflow_cli.explore.app import create_app
    from rgflow_cli.io import folder_images, msds_data, open_model
    from rgflow_core.checkpoint import read_metadata
    from rgflow_core.images import read_images
    from rgflow_core.session import ExploreSession

    paths = folder_images(images) if images is not None else []
    sock = _bind(host, port)
    try:
        model, dev, path = open_model(checkpoint, device, allow_large)
        cfg = model.config
        if images is None and read_metadata(path).get("dataset") in ("msds1", "msds2"):
            # a model of MSDS: its own test images (generated once into the cache if
            # they are nowhere at hand), the same ones every time
            root, name = msds_data(path, None, None)
            images = root / name / "test"
            paths = folder_images(images, max(samples, THUMBNAILS))
        reference = None
        if len(paths) >= 2:  # the spread of one image is no spread: then use samples
            reference = read_images(paths[:samples], cfg.channels, cfg.image_size, resize)
        spread_from = (
            f"{samples} samples of the model, encoded"
            if reference is None
            else f"the first {len(reference)} images in {images.name}/"
        )
        typer.echo(f"measuring the spread of every latent over {spread_from} ...", err=True)
        session = ExploreSession(model, reference, samples=samples, seed=seed)
        if reference is not None:  # start from the user's images rather than a sample
            session.encode(reference[0])
            session.encode(reference[1], "second")
        about = {"checkpoint": path.name, "device": str(dev), "spread_from": spread_from}
        app = create_app(
            session,
            paths[:THUMBNAILS],
            total_images=len(paths),
            about=about,
            allowed_hosts=list(LOOPBACK) if host in LOOPBACK else None,
        )
        _serve(app, sock, host, port, open_browser, uvicorn)
    finally:
        sock.close()


def _serve(app, sock, host: str, port: int, open_browser: bool, uvicorn) -> None:
    """Run the server until Ctrl-C; print where it is and that it stopped."""
    import contextlib
    import threading
    import time
    import webbrowser

    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if host not in LOOPBACK:
        typer.echo(
            f"warning: serving on {host}: anyone who can reach this machine can use the "
            "explorer and see the images of --images",
            err=True,
        )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    if open_browser:

        def opener() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.05)
            if server.started:
                webbrowser.open(url)

        threading.Thread(target=opener, daemon=True).start()
    typer.echo(f"rgflow explore: serving on {url} (Ctrl-C to stop)")
    # uvicorn stops on SIGINT (Ctrl-C) and raises it again once it has shut down
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    typer.echo("stopped")
