"""The web API of `rgflow explore`: a FastAPI app around one `ExploreSession`.

Every request that touches the model holds one lock, so requests are served one at a time
(FastAPI runs the sync endpoints in a thread pool). Images travel as PNG data URLs inside
JSON, so one response carries an image and the state that goes with it. The client never
names a file of the server: images of the `--images` folder are chosen by index. Errors,
the host check and upload limits are the edge's (`guard.py`).
"""

from __future__ import annotations

import base64
import io
import tempfile
import threading
from enum import Enum
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from rgflow_cli.explore.guard import read_upload, register_errors
from rgflow_core.errors import DataError
from rgflow_core.images import read_image, to_pil
from rgflow_core.latents import save_latents
from rgflow_core.session import MAX_SPREAD, MAX_TEMPERATURE, MIN_TEMPERATURE, ExploreSession

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD = 5 * 2**20  # bytes of one uploaded image file


class Body(BaseModel):
    """A JSON request body: no unknown keys, no NaN or infinities."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Target(str, Enum):
    current = "current"
    second = "second"


class Value(Body):
    value: float


class Lock(Body):
    locked: bool


class Factor(Body):
    level: int
    index: int
    value: float


class Choice(Body):
    index: int
    target: Target = Target.current
    resize: bool = False


class Scale(Body):
    scale: int


def png_bytes(image: Any) -> bytes:
    """uint8 (C, L, L) -> PNG bytes (fast compression: the images are tiny)."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def data_url(image: Any) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def _level_names(levels: int) -> list[str]:
    """Plain words for each level, finest (0) first."""
    mid = (levels - 1) / 2
    names = ["fine" if h < mid else "coarse" if h > mid else "middle" for h in range(levels)]
    names[0], names[-1] = "finest", "coarsest"
    return names


def _describe_levels(session: ExploreSession) -> list[dict[str, Any]]:
    names = _level_names(session.levels)
    out = []
    for h in range(session.levels):
        positions = (session.level_map == h).nonzero()
        reach = int(session.reach.latent_cone(*positions[0].tolist()).sum())
        out.append(
            {
                "level": h,
                "name": names[h],
                "positions": len(positions),
                "count": session.level_count(h),
                "reach": reach,  # pixels a latent of this level can change
                "factors": len(session.top[h]),
            }
        )
    return out


def _decode_upload(session: ExploreSession, data: bytes, name: str, resize: bool) -> Any:
    """Validate an uploaded image file like the command line's images; uint8 (C, L, L)."""
    with tempfile.TemporaryDirectory(prefix="rgflow-explore-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        try:
            return read_image(path, session.channels, session.size, resize)
        except DataError as err:  # name the user's file, not our temp file
            raise DataError(err.message.replace(str(path), name)) from None


class Explorer:
    """The endpoints: each a short method around the session, which it holds one lock for.

    Arguments are those of `create_app`; `info` is what `/api/info` answers.
    """

    def __init__(
        self, session: ExploreSession, image_paths: list[Path], info: dict, max_upload: int
    ) -> None:
        self.session = session
        self.image_paths = image_paths
        self.info = info
        self.max_upload = max_upload
        self.lock = threading.Lock()

    def _state(self) -> dict[str, Any]:
        return {
            "image": data_url(self.session.image()),
            "temperatures": self.session.temperatures,
            "locks": self.session.locks,
        }

    def _read_listed(self, index: int, resize: bool) -> Any:
        if not 0 <= index < len(self.image_paths):
            last = len(self.image_paths) - 1
            raise HTTPException(404, f"no image {index}: the page offers images 0..{last}")
        path = self.image_paths[index]
        try:
            return read_image(path, self.session.channels, self.session.size, resize)
        except DataError as err:  # the page knows the file by its name
            raise DataError(err.message.replace(str(path), path.name)) from None

    # --- the page and what it describes

    def page(self) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    def get_info(self) -> dict[str, Any]:
        return self.info

    def get_state(self) -> dict[str, Any]:
        with self.lock:
            return self._state()

    # --- levels and factors

    def sample(self) -> dict[str, Any]:
        with self.lock:
            self.session.sample()
            return self._state()

    def resample(self, level: int) -> dict[str, Any]:
        with self.lock:
            self.session.resample_level(level)
            return self._state()

    def temperature(self, level: int, body: Value) -> dict[str, Any]:
        with self.lock:
            self.session.set_temperature(level, body.value)
            return self._state()

    def set_lock(self, level: int, body: Lock) -> dict[str, Any]:
        with self.lock:
            self.session.set_lock(level, body.locked)
            return {"locks": self.session.locks}

    def factors(self, level: int) -> dict[str, Any]:
        with self.lock:
            return {"level": level, "factors": self.session.factors(level)}

    def factor(self, body: Factor) -> dict[str, Any]:
        with self.lock:
            self.session.set_factor(body.level, body.index, body.value)
            return {"image": data_url(self.session.image())}

    # --- images to start from

    def thumb(self, index: int) -> Response:
        return Response(png_bytes(self._read_listed(index, resize=True)), media_type="image/png")

    def choose(self, body: Choice) -> dict[str, Any]:
        image = self._read_listed(body.index, body.resize)
        with self.lock:
            self.session.encode(image, body.target.value)
            return self._state()

    async def upload(
        self,
        request: Request,
        target: Target = Target.current,
        resize: bool = False,
        name: str = "",
    ) -> dict[str, Any]:
        data = await read_upload(request, self.max_upload)
        shown = Path(name[:200]).name or "the uploaded file"

        def work() -> dict[str, Any]:
            image = _decode_upload(self.session, data, shown, resize)
            with self.lock:
                self.session.encode(image, target.value)
                return self._state()

        return await run_in_threadpool(work)

    # --- mixing

    def second_sample(self) -> dict[str, Any]:
        with self.lock:
            self.session.sample_second()
            return {"second": data_url(self.session.second_image())}

    def swap(self) -> dict[str, Any]:
        with self.lock:
            self.session.swap()
            return self._state()

    def mix(self, scale: int) -> dict[str, Any]:
        with self.lock:
            mixed = data_url(self.session.mix(scale))
            return {"scale": scale, "mix": mixed, "second": data_url(self.session.second_image())}

    def use_mix(self, body: Scale) -> dict[str, Any]:
        with self.lock:
            self.session.use_mix(body.scale)
            return self._state()

    # --- where latents act (the cones are geometry: no model, no lock)

    def pixel_cone(self, i: int, j: int) -> dict[str, Any]:
        return {"latents": self.session.reach.latents_for_pixel(i, j).int().tolist()}

    def latent_cone(self, i: int, j: int) -> dict[str, Any]:
        return {"pixels": self.session.reach.latent_cone(i, j).int().tolist()}

    def receptive(self, i: int, j: int) -> dict[str, Any]:
        with self.lock:
            field = self.session.reach.receptive_field(i, j)
        return {"i": i, "j": j, "field": [[round(float(v), 4) for v in row] for row in field]}

    # --- keeping what you made

    def download_image(self) -> Response:
        with self.lock:
            data = png_bytes(self.session.image())
        return _attachment(data, "image/png", "rgflow-explore.png")

    def download_latents(self) -> Response:
        with self.lock, tempfile.TemporaryDirectory(prefix="rgflow-explore-") as folder:
            z, bpd = self.session.latents(), self.session.bits_per_dim()
            path = Path(folder) / "z.safetensors"
            data = save_latents(path, self.session.model, z, bpd, ["explore"]).read_bytes()
        return _attachment(data, "application/octet-stream", "rgflow-explore.safetensors")


ROUTES = [  # (method, path, Explorer method)
    ("GET", "/", "page"),
    ("GET", "/api/info", "get_info"),
    ("GET", "/api/state", "get_state"),
    ("POST", "/api/sample", "sample"),
    ("POST", "/api/levels/{level}/resample", "resample"),
    ("POST", "/api/levels/{level}/temperature", "temperature"),
    ("POST", "/api/levels/{level}/lock", "set_lock"),
    ("GET", "/api/levels/{level}/factors", "factors"),
    ("POST", "/api/factor", "factor"),
    ("GET", "/api/thumbs/{index}", "thumb"),
    ("POST", "/api/choose", "choose"),
    ("POST", "/api/upload", "upload"),
    ("POST", "/api/second/sample", "second_sample"),
    ("POST", "/api/swap", "swap"),
    ("GET", "/api/mix", "mix"),
    ("POST", "/api/mix/use", "use_mix"),
    ("GET", "/api/cone/pixel", "pixel_cone"),
    ("GET", "/api/cone/latent", "latent_cone"),
    ("GET", "/api/receptive", "receptive"),
    ("GET", "/download/image.png", "download_image"),
    ("GET", "/download/latents.safetensors", "download_latents"),
]


def create_app(
    session: ExploreSession,
    image_paths: list[Path],
    *,
    total_images: int | None = None,
    about: dict[str, Any] | None = None,
    allowed_hosts: list[str] | None = None,
    max_upload: int = MAX_UPLOAD,
) -> FastAPI:
    """The explorer's app.

    Arguments:
        session: the model and its state; the app serialises all access to it.
        image_paths: images offered as thumbnails, chosen by index.
        total_images: how many images the folder holds (the page says so when it shows fewer).
        about: facts for the page's header (checkpoint, device, ...).
        allowed_hosts: the Host names to answer (None: any).
        max_upload: the largest image file accepted, in bytes.
    """
    app = FastAPI(title="rgflow explore", docs_url=None, redoc_url=None, openapi_url=None)
    register_errors(app, allowed_hosts)
    info = {
        "about": about or {},
        "channels": session.channels,
        "size": session.size,
        "kernel_size": session.kernel_size,
        "levels": _describe_levels(session),
        "level_map": session.level_map.tolist(),
        "images": {
            "total": total_images or len(image_paths),
            "shown": [p.name for p in image_paths],
        },
        "max_upload": max_upload,
        "temperature": [MIN_TEMPERATURE, MAX_TEMPERATURE],
        "spread": MAX_SPREAD,
    }
    explorer = Explorer(session, image_paths, info, max_upload)
    for method, path, name in ROUTES:
        app.add_api_route(path, getattr(explorer, name), methods=[method])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _attachment(data: bytes, media_type: str, filename: str) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(data, media_type=media_type, headers=headers)
