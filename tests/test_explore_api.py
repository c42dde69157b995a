"""`rgflow explore`: the session, the web API (FastAPI's TestClient) and the command's checks."""

from __future__ import annotations

import base64
import io
import logging
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import perturb, tiny_config
from PIL import Image
from typer.testing import CliRunner

from rgflow_cli.main import app as cli_app
from rgflow_core import build_model, load_model, save_model
from rgflow_core.codec import decode_images
from rgflow_core.geometry import cone_latents, generator_cone
from rgflow_core.images import read_images
from rgflow_core.latents import load_latents
from rgflow_core.mixing import mix_latents
from rgflow_core.session import ExploreSession

pytest.importorskip("fastapi", reason="the explore extra is not installed")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")
from fastapi.testclient import TestClient  # noqa: E402

from rgflow_cli.explore.app import STATIC, create_app  # noqa: E402

L = 8  # tiny models: 8 x 8 RGB, K = 2, 3 levels


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "rgb.safetensors"
    save_model(perturb(build_model(tiny_config(channels=3)), scale=0.3, seed=1), path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Four 8 x 8 RGB images, then one of another size and a file that is no image."""
    root = tmp_path_factory.mktemp("images")
    gen = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(gen.integers(0, 256, (L, L, 3), dtype=np.uint8)).save(root / f"{k}.png")
    Image.fromarray(gen.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / "4-big.png")
    (root / "5-text.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(ckpt)  # a session never changes its model: one for all tests


def _setup(model, folder):
    paths = sorted(folder.glob("*.png"))
    session = ExploreSession(model, read_images(paths[:4], 3, L), top=4, seed=0)
    app = create_app(session, paths, total_images=10, about={"checkpoint": "rgb.safetensors"})
    return TestClient(app, raise_server_exceptions=False), session, model, paths


@pytest.fixture
def setup(model, folder):
    """(client, session, model, image paths): a fresh session per test."""
    return _setup(model, folder)


@pytest.fixture(scope="module")
def shared(model, folder):
    """The same, shared by tests whose requests change nothing."""
    return _setup(model, folder)


def pixels(url: str) -> np.ndarray:
    """A PNG data URL (or PNG bytes) as an (H, W, C) array."""
    data = base64.b64decode(url.split(",", 1)[1]) if isinstance(url, str) else url
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def chw(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


# --- the session ------------------------------------------------------------------------


def test_incremental_decoding_is_exact_at_every_level(model):
    session = ExploreSession(model, samples=6, top=3, seed=2)
    assert torch.equal(session.image(), decode_images(model, session.latents())[0])
    for level in (2, 0, 1, 0, 2):
        for value in (-2.5, 0.7):
            session.set_factor(level, 1, value)
            assert torch.equal(session.image(), decode_images(model, session.latents())[0])
    session.set_temperature(1, 0.4)
    session.resample_level(0)
    assert torch.equal(session.image(), decode_images(model, session.latents())[0])


def test_aligned_first_session_decodes_incrementally_and_reaches_its_own_cones():
    cfg = tiny_config(channels=3, block_grid="aligned_first")
    model = perturb(build_model(cfg), scale=0.3, seed=4).eval()
    session = ExploreSession(model, samples=4, top=2, seed=1)
    for level in (2, 0, 1):
        session.set_factor(level, 0, 1.5)
        assert torch.equal(session.image(), decode_images(model, session.latents())[0])
    pixel = torch.zeros(L, L, dtype=torch.bool)
    pixel[3, 5] = True
    reach = session.reach.latents_for_pixel(3, 5)
    assert torch.equal(reach, cone_latents(pixel, 2, "aligned_first"))
    assert not torch.equal(reach, cone_latents(pixel, 2))


# --- the page ---------------------------------------------------------------------------


def test_page_and_static_files_are_served_and_self_contained(setup):
    client = setup[0]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for path in STATIC.iterdir():  # nothing is fetched from the internet
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "@import" not in text, path


def test_info_describes_the_levels(setup):
    client, session = setup[:2]
    info = ok(client.get("/api/info"))
    levels = info["levels"]
    assert [d["level"] for d in levels] == [0, 1, 2]
    assert levels[0]["name"] == "finest" and levels[-1]["name"] == "coarsest"
    assert sum(d["count"] for d in levels) == 3 * L * L
    assert [d["positions"] for d in levels] == [48, 12, 4]
    assert levels[0]["reach"] < levels[2]["reach"]
    assert np.array_equal(np.array(info["level_map"]), session.level_map.numpy())
    shown = [f"{k}.png" for k in range(4)] + ["4-big.png", "5-text.png"]
    assert info["images"] == {"total": 10, "shown": shown}
    assert info["about"]["checkpoint"] == "rgb.safetensors"


# --- levels -----------------------------------------------------------------------------


def test_sample_resample_and_locks(setup):
    client, session = setup[:2]
    levels = session.level_map
    first = ok(client.get("/api/state"))
    z0 = session.latents()
    second = ok(client.post("/api/sample"))
    assert not np.array_equal(pixels(first["image"]), pixels(second["image"]))
    assert second["locks"] == [False] * 3 and second["temperatures"] == [1.0] * 3

    z1 = session.latents()
    ok(client.post("/api/levels/1/resample"))
    changed = (session.latents() != z1).any(dim=1)[0]  # (L, L) positions that changed
    assert changed.any() and not changed[levels != 1].any()

    locks = ok(client.post("/api/levels/2/lock", json={"locked": True}))["locks"]
    assert locks == [False, False, True]
    z2 = session.latents()
    ok(client.post("/api/sample"))
    changed = (session.latents() != z2).any(dim=1)[0]
    assert not changed[levels == 2].any() and changed[levels < 2].all()
    ok(client.post("/api/levels/2/resample"))  # asked for explicitly: a locked level changes
    assert (session.latents() != z2).any(dim=1)[0][levels == 2].all()
    assert not torch.equal(z0, session.latents())


def test_temperature_rescales_one_level(setup):
    client, session = setup[:2]
    z = session.latents()
    answer = ok(client.post("/api/levels/1/temperature", json={"value": 0.5}))
    assert answer["temperatures"] == [1.0, 0.5, 1.0]
    level1 = session.level_map == 1
    torch.testing.assert_close(session.latents()[..., level1], 0.5 * z[..., level1])
    assert torch.equal(session.latents()[..., ~level1], z[..., ~level1])


def test_factors_move_one_latent_in_units_of_its_spread(setup):
    client, session = setup[:2]
    factors = ok(client.get("/api/levels/0/factors"))["factors"]
    assert len(factors) == 4
    stds = [f["std"] for f in factors]
    assert stds == sorted(stds, reverse=True)
    assert all(int(session.level_map[f["i"], f["j"]]) == 0 for f in factors)
    z = session.latents()
    before = ok(client.get("/api/state"))["image"]
    answer = client.post("/api/factor", json={"level": 0, "index": 1, "value": 2.5})
    after = ok(answer)["image"]
    assert before != after and answer.headers["server-timing"].startswith("app;dur=")
    f = factors[1]
    moved = session.latents()
    assert moved[0, f["c"], f["i"], f["j"]] == pytest.approx(f["mean"] + 2.5 * f["std"], rel=1e-5)
    assert int((moved != z).sum()) == 1
    now = ok(client.get("/api/levels/0/factors"))["factors"][1]
    assert now["value"] == pytest.approx(2.5, abs=1e-4)


# --- keeping what you made --------------------------------------------------------------


def test_downloaded_latents_decode_to_the_displayed_image(setup, ckpt, tmp_path):
    client, _, model, _ = setup
    ok(client.post("/api/levels/0/temperature", json={"value": 0.3}))
    ok(client.post("/api/levels/2/resample"))
    shown = pixels(
        ok(client.post("/api/factor", json={"level": 1, "index": 0, "value": -1.8}))["image"]
    )
    image = client.get("/download/image.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert "attachment" in image.headers["content-disposition"]
    assert np.array_equal(pixels(image.content), shown)
    latents = client.get("/download/latents.safetensors")
    assert latents.status_code == 200
    path = tmp_path / "z.safetensors"
    path.write_bytes(latents.content)
    data = load_latents(path)
    assert data.z.shape == (1, 3, L, L) and torch.isfinite(data.bpd).all()
    assert np.array_equal(chw(decode_images(model, data.z)[0]), shown)
    # and `rgflow decode` gives back the very same pixels
    out = tmp_path / "decoded.png"
    result = CliRunner().invoke(cli_app, ["decode", "-c", str(ckpt), str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output  # the same model: the fingerprint matches
    assert np.array_equal(np.asarray(Image.open(out)), shown)


# --- your images ------------------------------------------------------------------------


def test_choosing_an_image_encodes_it_exactly(setup, folder):
    client = setup[0]
    answer = ok(client.post("/api/choose", json={"index": 2}))
    expected = np.asarray(Image.open(folder / "2.png"))
    assert np.array_equal(pixels(answer["image"]), expected)
    assert answer["temperatures"] == [1.0] * 3
    ok(client.post("/api/choose", json={"index": 3, "target": "second"}))
    mix = ok(client.get("/api/mix", params={"scale": 1}))
    assert np.array_equal(pixels(mix["second"]), np.asarray(Image.open(folder / "3.png")))
    resized = ok(client.post("/api/choose", json={"index": 4, "resize": True}))
    assert pixels(resized["image"]).shape == (L, L, 3)
    thumb = client.get("/api/thumbs/4")  # thumbnails show any image, resized
    assert thumb.status_code == 200 and pixels(thumb.content).shape == (L, L, 3)


def test_upload_is_validated_like_the_cli(setup):
    client = setup[0]
    gen = np.random.default_rng(3)
    image = gen.integers(0, 256, (L, L, 3), dtype=np.uint8)
    answer = ok(
        client.post("/api/upload", content=png(image), headers={"content-type": "image/png"})
    )
    assert np.array_equal(pixels(answer["image"]), image)
    ok(client.post("/api/upload?target=second", content=png(image[::-1].copy())))

    big = png(gen.integers(0, 256, (16, 12, 3), dtype=np.uint8))
    refused = client.post("/api/upload?name=/home/me/cat.png", content=big)
    error = refused.json()["error"]
    assert refused.status_code == 400 and "cat.png is 12x16" in error
    assert "the 'resize' option" in error and "/tmp" not in error and "/home" not in error
    assert ok(client.post("/api/upload?resize=true", content=big))["image"]
    grey = png(gen.integers(0, 256, (L, L), dtype=np.uint8))
    assert "mode L" in client.post("/api/upload", content=grey).json()["error"]
    text = client.post("/api/upload", content=b"not an image at all")
    assert text.status_code == 400 and "not a readable image" in text.json()["error"]
    empty = client.post("/api/upload", content=b"")
    assert empty.status_code == 400 and "no image" in empty.json()["error"]


def test_upload_size_limit(setup):
    client = TestClient(create_app(setup[1], [], max_upload=1000))
    refused = client.post("/api/upload", content=b"\0" * 1001)
    assert refused.status_code == 413 and "MB" in refused.json()["error"]


# --- mixing -----------------------------------------------------------------------------


def test_mix_swap_and_use(setup):
    client, session, model, _ = setup
    ok(client.post("/api/second/sample"))
    mix = ok(client.get("/api/mix", params={"scale": 2}))
    z, second = session.latents(), session.second.cpu()
    expected = decode_images(model, mix_latents(z, second, 2, session.level_map))[0]
    assert np.array_equal(pixels(mix["mix"]), chw(expected))
    assert np.array_equal(pixels(mix["second"]), chw(decode_images(model, second)[0]))
    used = ok(client.post("/api/mix/use", json={"scale": 2}))
    assert np.array_equal(pixels(used["image"]), chw(expected))
    current = ok(client.get("/api/state"))["image"]
    swapped = ok(client.post("/api/swap"))
    assert np.array_equal(pixels(swapped["image"]), chw(decode_images(model, second)[0]))
    again = ok(client.get("/api/mix", params={"scale": 1}))["second"]
    assert np.array_equal(pixels(again), pixels(current))


# --- where latents act ------------------------------------------------------------------


def test_cones_and_receptive_fields(setup):
    client = setup[0]
    reach = ok(client.get("/api/cone/pixel", params={"i": 3, "j": 5}))["latents"]
    pixel = torch.zeros(L, L, dtype=torch.bool)
    pixel[3, 5] = True
    assert torch.equal(torch.tensor(reach).bool(), cone_latents(pixel, 2))
    cone = ok(client.get("/api/cone/latent", params={"i": 1, "j": 2}))["pixels"]
    latent = torch.zeros(L, L, dtype=torch.bool)
    latent[1, 2] = True
    assert torch.equal(torch.tensor(cone).bool(), generator_cone(latent, 2))
    field = torch.tensor(ok(client.get("/api/receptive", params={"i": 1, "j": 2}))["field"])
    assert field.shape == (L, L) and float(field.max()) == 1.0
    assert (field[~torch.tensor(cone).bool()] == 0).all()
    cached = ok(client.get("/api/receptive", params={"i": 1, "j": 2}))["field"]
    assert torch.equal(torch.tensor(cached), field)


# --- bad requests -----------------------------------------------------------------------

BAD = [
    ("post", "/api/levels/3/resample", None, 400, "level: 3 is out of range"),
    ("post", "/api/levels/-1/resample", None, 400, "out of range"),
    ("post", "/api/levels/x/resample", None, 422, "level"),
    ("post", "/api/levels/0/temperature", '{"value": NaN}', 422, "finite"),
    ("post", "/api/levels/0/temperature", '{"value": Infinity}', 422, "finite"),
    ("post", "/api/levels/0/temperature", '{"value": -1e999}', 422, "finite"),
    ("post", "/api/levels/0/temperature", '{"value": 0}', 400, "temperature: must be >= 0.01"),
    ("post", "/api/levels/0/temperature", '{"value": 50}', 400, "temperature"),
    ("post", "/api/levels/0/temperature", '{"value": "hot"}', 422, "value"),
    ("post", "/api/levels/0/temperature", "{}", 422, "value: Field required"),
    ("post", "/api/levels/0/temperature", '{"value": 1, "x": 2}', 422, "x"),
    ("post", "/api/levels/0/temperature", "{", 422, "JSON"),
    ("post", "/api/levels/0/lock", '{"locked": "maybe"}', 422, "locked"),
    ("post", "/api/factor", '{"level": 0, "index": 4, "value": 1}', 400, "index: must be in 0..3"),
    ("post", "/api/factor", '{"level": 0, "index": -1, "value": 1}', 400, "index"),
    ("post", "/api/factor", '{"level": 9, "index": 0, "value": 1}', 400, "level"),
    ("post", "/api/factor", '{"level": 0, "index": 0, "value": NaN}', 422, "finite"),
    ("post", "/api/factor", '{"level": 0, "index": 0, "value": 11}', 400, "value: must be"),
    ("post", "/api/factor", '{"level": 0.5, "index": 0, "value": 1}', 422, "level"),
    ("post", "/api/choose", '{"index": 6}', 404, "no image 6"),
    ("post", "/api/choose", '{"index": -1}', 404, "no image -1"),
    ("post", "/api/choose", '{"index": 4}', 400, "4-big.png is 10x12"),
    ("post", "/api/choose", '{"index": 5}', 400, "5-text.png is not a readable image"),
    ("post", "/api/choose", '{"index": 0, "target": "third"}', 422, "target"),
    ("post", "/api/upload?target=third", "x", 422, "target"),
    ("get", "/api/mix?scale=0", None, 400, "scale: 0 is out of range"),
    ("get", "/api/mix?scale=3", None, 400, "scale: 3 is out of range"),
    ("get", "/api/mix", None, 422, "scale: Field required"),
    ("post", "/api/mix/use", '{"scale": 5}', 400, "scale"),
    ("get", "/api/cone/pixel?i=8&j=0", None, 400, "i: must be in 0..7, got 8"),
    ("get", "/api/cone/pixel?i=0&j=-1", None, 400, "j: must be in 0..7"),
    ("get", "/api/cone/latent?i=a&j=0", None, 422, "i"),
    ("get", "/api/receptive?i=0&j=99", None, 400, "j: must be in 0..7"),
    ("get", "/api/levels/3/factors", None, 400, "out of range"),
    ("get", "/api/thumbs/99", None, 404, "no image 99"),
    ("get", "/nothing/here", None, 404, "Not Found"),
    ("post", "/api/state", None, 405, "Method Not Allowed"),
    ("get", "/static/../app.py", None, 404, "Not Found"),
]


BAD_IDS = [f"{m} {p} {b or ''}" for m, p, b, *_ in BAD]


@pytest.mark.parametrize(("method", "path", "body", "status", "expected"), BAD, ids=BAD_IDS)
def test_bad_requests_get_one_json_line(shared, method, path, body, status, expected):
    client = shared[0]
    send = {"content": body, "headers": {"content-type": "application/json"}} if body else {}
    response = getattr(client, method)(path, **send)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert list(error) == ["error"] and "\n" not in error["error"]
    assert expected in error["error"] and "Traceback" not in error["error"]


def test_a_bug_is_a_500_line_and_a_log_entry(setup, monkeypatch, caplog):
    client, session = setup[:2]

    def broken() -> None:
        raise RuntimeError("something deep\nand long")

    monkeypatch.setattr(session, "sample", broken)
    with caplog.at_level(logging.ERROR, logger="rgflow.explore"):
        response = client.post("/api/sample")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (RuntimeError); see the server's log"}
    assert "something deep" in caplog.text and "Traceback" in caplog.text


def test_other_host_names_are_refused(setup):
    app = create_app(setup[1], [], allowed_hosts=["127.0.0.1", "localhost"])
    client = TestClient(app)
    refused = client.get("/api/info", headers={"host": "evil.example:7860"})
    assert refused.status_code == 400 and "answers only to" in refused.json()["error"]
    assert client.get("/api/info", headers={"host": "127.0.0.1:7860"}).status_code == 200


def test_concurrent_requests_are_serialised(setup, tmp_path):
    client, _, model, _ = setup
    calls = [("post", "/api/sample", None)] * 4 + [
        ("post", "/api/factor", {"level": h, "index": 0, "value": v})
        for h in range(3)
        for v in (-1.0, 1.0)
    ]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda c: getattr(client, c[0])(c[1], json=c[2]), calls * 2))
    assert all(a.status_code == 200 for a in answers)
    shown = pixels(ok(client.get("/api/state"))["image"])
    path = tmp_path / "z.safetensors"
    path.write_bytes(client.get("/download/latents.safetensors").content)
    assert np.array_equal(chw(decode_images(model, load_latents(path).z)[0]), shown)


# --- the command's checks before serving ------------------------------------------------


def test_without_the_extra_the_command_says_how_to_install(monkeypatch, run_main):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    code, output = run_main("explore")
    assert code == 1 and output.strip() == (
        "error: rgflow explore needs FastAPI and uvicorn: pip install 'rgflow[explore]'"
    )


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port", "0"], "--port"),
        (["--port", "70000"], "--port"),
        (["--images", "{missing}"], "is not a folder of images"),
        (["--images", "{empty}"], "holds no images"),
        (["--images", "{folder}"], "--resize"),
        (["--device", "tpu"], "--device: unknown device"),
        (["-c", "{missing}"], "does not exist"),
        (["--port", "{busy}"], "--port: cannot listen on 127.0.0.1"),
        (["--host", "no such host!"], "--host: cannot serve on"),
    ],
)
def test_bad_options_are_one_line(ckpt, folder, tmp_path, busy_port, run_main, args, expected):
    (tmp_path / "empty").mkdir()
    names = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "folder": folder}
    args = [a.format(busy=busy_port, **names) for a in args]
    if "-c" not in args:
        args += ["-c", str(ckpt)]
    code, output = run_main("explore", "--port", str(_free_port()), *args)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and expected in lines[0], output
    assert "Traceback" not in output


def test_connections_have_nagle_off():
    """With Nagle's algorithm on, each response's body waits ~40 ms for the ACK of its
    headers (measured: it doubled the slider latency); asyncio turns it off (TCP_NODELAY)
    only on sockets made for TCP, so the socket that `rgflow explore` binds must be one."""
    import asyncio

    from rgflow_cli.explore import _bind

    sock = _bind("127.0.0.1", _free_port())

    class Probe(asyncio.Protocol):
        def __init__(self, seen: asyncio.Future) -> None:
            self.seen = seen

        def connection_made(self, transport) -> None:
            conn = transport.get_extra_info("socket")
            self.seen.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    async def connect() -> int:
        loop = asyncio.get_running_loop()
        seen = loop.create_future()
        server = await loop.create_server(lambda: Probe(seen), sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        nodelay = await asyncio.wait_for(seen, 5)
        writer.close()
        server.close()
        return nodelay

    assert asyncio.run(connect()) != 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serving_prints_the_address_and_warns_off_loopback(ckpt, folder, monkeypatch, run_main):
    import uvicorn

    served = {}

    def run(self, sockets=None):
        served["app"], served["sockets"] = self.config.app, sockets
        raise KeyboardInterrupt  # what uvicorn re-raises after a Ctrl-C

    monkeypatch.setattr(uvicorn.Server, "run", run)
    port = _free_port()
    code, output = run_main(
        "explore", "-c", ckpt, "--port", port, "--images", folder, "--samples", 4, "--device", "cpu"
    )
    assert code == 0 and f"serving on http://127.0.0.1:{port}/" in output
    assert "stopped" in output.splitlines() and "warning" not in output
    client = TestClient(served["app"], base_url=f"http://127.0.0.1:{port}")
    assert ok(client.get("/api/info"))["images"]["total"] == 6
    code, output = run_main(
        "explore", "-c", ckpt, "--port", _free_port(), "--host", "0.0.0.0", "--device", "cpu"
    )
    assert code == 0 and "warning: serving on 0.0.0.0" in output
