"""`astra play`: a local web app to play a world model live, optionally beside the real simulator.

One static page (no CDN) talks to one websocket. Each connection owns an isolated `PlaySession`; a cap bounds
how many run at once. Client messages are small JSON objects, validated here; anything malformed or oversized
gets an error reply and the connection (and the server) keep running.

Protocol (client -> server):
  {"type": "start", "world": "doom", "seed": 0, "side_by_side": true, "image": "data:image/png;base64,..."|null}
  {"type": "input", "keys": ["w", "arrowleft"], "mouse_dx": 3.0, "mouse_dy": 0.0}
  {"type": "reset"} | {"type": "stop"}
Server -> client:
  {"type": "started", "world": ..., "modality": ..., "size": [h, w], "frames_per_step": n}
  {"type": "frames", "model": [jpeg base64...], "sim": [...] | null, "step_ms": .., "latency_ms": .., "fps": ..}
  {"type": "error", "message": "..."}
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image

from astra.actions.controls import ControlState, controls_for
from astra.actions.modalities import MAX_ACTION_MAGNITUDE
from astra.errors import AstraError
from astra.images import to_rgb
from astra.rollout.session import prepare_image

STATIC_DIR = Path(__file__).parent / "static"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # an uploaded start image fits; anything larger is refused
MAX_KEYS = 16
MAX_UPLOAD_PIXELS = 4096 * 4096  # decoded size of an uploaded start image (it is shrunk to the model's anyway)
MAX_PORT = 65535
PLAY_WORLDS = ("doom", "drive", "robot", "camera")


class ProtocolError(ValueError):
    """A client message that does not follow the protocol."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 4
    jpeg_quality: int = 90
    seed: int = 0
    target_fps: float = 20.0  # pace generation to what the page shows; 0 = as fast as possible

    def validate(self) -> None:
        if not 1 <= self.port <= MAX_PORT:  # 0 (any free port) would print an address nobody could open
            raise AstraError(f"--port must lie in [1, {MAX_PORT}], got {self.port}")
        if self.max_sessions < 1:
            raise AstraError(f"--max-sessions must be >= 1, got {self.max_sessions}")
        if not 1 <= self.jpeg_quality <= 100:
            raise AstraError(f"jpeg_quality must lie in [1, 100], got {self.jpeg_quality}")
        if not (math.isfinite(self.target_fps) and self.target_fps >= 0):
            raise AstraError(f"--fps must be a finite number >= 0, got {self.target_fps}")


def encode_jpeg(frame: np.ndarray, quality: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image_data_url(data: str) -> np.ndarray:
    """Decode a `data:image/...;base64,...` URL (or bare base64) into an RGB uint8 array."""
    if not isinstance(data, str):
        raise ProtocolError("image must be a data URL string")
    header, comma, payload = data.partition(",") if data.startswith("data:") else ("", ",", data)
    if not comma or (header and not header.endswith(";base64")):
        raise ProtocolError("image must be a base64 data URL: data:image/...;base64,...")
    try:
        raw = base64.b64decode(payload, validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size  # read from the header: a small file can claim a huge picture
            if width * height > MAX_UPLOAD_PIXELS:
                limit = f"{MAX_UPLOAD_PIXELS:,}"
                raise ProtocolError(f"image of {width}x{height} pixels exceeds the limit of {limit} pixels")
            return np.asarray(to_rgb(image))
    except ProtocolError:
        raise
    except Exception as error:  # PIL raises many types for bad files
        raise ProtocolError(f"could not read the uploaded image: {error}") from None


def parse_message(text: str | bytes) -> dict[str, Any]:
    if len(text) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(text)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProtocolError(f"message is not valid JSON: {error}") from None
    except RecursionError:
        raise ProtocolError("message is nested too deeply to be a protocol message") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError('message must be a JSON object with a string field "type"')
    kind = message["type"]
    if kind == "start":
        world = message.get("world", "doom")
        if world not in PLAY_WORLDS:
            raise ProtocolError(f"unknown world {world!r}; choose one of {', '.join(PLAY_WORLDS)}")
        seed = message.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
            raise ProtocolError("seed must be an integer in [0, 2^31)")
        if not isinstance(message.get("side_by_side", False), bool):
            raise ProtocolError("side_by_side must be true or false")
        if message.get("image") is not None:
            decode_image_data_url(message["image"])  # validate now, decode again when used
    elif kind == "input":
        keys = message.get("keys", [])
        if not isinstance(keys, list) or len(keys) > MAX_KEYS or not all(isinstance(k, str) and len(k) <= 16 for k in keys):
            raise ProtocolError(f"keys must be a list of at most {MAX_KEYS} short strings")
        for axis in ("mouse_dx", "mouse_dy"):
            value = message.get(axis, 0.0)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not abs(value) <= MAX_ACTION_MAGNITUDE:  # NaN compares false; a huge int is no float
                raise ProtocolError(f"{axis} must be a finite number of at most {MAX_ACTION_MAGNITUDE:g} in magnitude")
    elif kind not in ("reset", "stop"):
        raise ProtocolError(f"unknown message type {kind!r}")
    return message


class PlaySession:
    """One player's world: a rollout session, the optional real simulator, and the input held right now."""

    def __init__(self, world: str, seed: int, side_by_side: bool, image: np.ndarray | None, factory: "SessionFactory"):
        self.world = world
        self.seed = seed
        self.rollout, self.simulator = factory(world, seed, side_by_side)
        # An uploaded start image, kept at the model's size so that a reset starts from it again.
        self.image = prepare_image(image, self.rollout.resolution) if image is not None else None
        self.map_controls = controls_for(world)
        self.state = ControlState()
        self.pending_mouse = np.zeros(2)
        self.last_input_time: float | None = None
        # A chunk runs in a worker thread that outlives a cancelled await: close() waits for it under this lock.
        self.busy = threading.Lock()
        self.closed = False
        start_frame = self.simulator.reset(seed, "heldout") if self.simulator is not None else None
        if image is None and start_frame is None:
            start_frame = factory.start_frame(world, seed)
        self.first_frame = self.rollout.start(self.image if self.image is not None else start_frame, seed=seed)

    def set_input(self, message: dict[str, Any]) -> None:
        self.state = ControlState.from_browser(message.get("keys", []))
        # Each message's movement is checked (parse_message); their sum between two chunks is held to the same bound,
        # so that a burst of valid messages cannot push the chunk's action out of range and stop the stream.
        moved = self.pending_mouse + [float(message.get("mouse_dx", 0.0)), float(message.get("mouse_dy", 0.0))]
        self.pending_mouse = np.clip(moved, -MAX_ACTION_MAGNITUDE, MAX_ACTION_MAGNITUDE)
        self.last_input_time = time.perf_counter()

    def step(self) -> tuple[list[np.ndarray], list[np.ndarray] | None, float | None]:
        """Generate one chunk with the input held now; returns (model frames, simulator frames, input time)."""
        with self.busy:
            if self.closed:
                raise AstraError("the session is closed")
            return self._step()

    def _step(self) -> tuple[list[np.ndarray], list[np.ndarray] | None, float | None]:
        count = self.rollout.frames_per_step
        mouse = self.pending_mouse / count
        self.pending_mouse = np.zeros(2)
        input_time, self.last_input_time = self.last_input_time, None
        state = ControlState(self.state.keys, float(mouse[0]), float(mouse[1]))
        native, row = self.map_controls(state)
        sim_frames = None
        if self.simulator is not None:
            sim_frames, rows = [], []
            for _ in range(count):
                sim_frames.append(self.simulator.step(native))
                rows.append(self.simulator.action_row())
            rows = np.stack(rows)
        else:
            rows = np.repeat(row[None], count, axis=0)
        frames = self.rollout.step(rows)
        return list(frames), sim_frames, input_time

    def close(self) -> None:
        with self.busy:
            self.closed = True
            if self.simulator is not None:
                self.simulator.close()


class SessionFactory:
    """Builds (rollout session, simulator or None) for a world; the model is loaded once and shared."""

    def __init__(self, make_rollout: Callable[[str], Any], make_simulator: Callable[[str], Any] | None = None):
        self.make_rollout = make_rollout
        self.make_simulator = make_simulator

    def __call__(self, world: str, seed: int, side_by_side: bool):
        simulator = self.make_simulator(world) if (side_by_side and self.make_simulator) else None
        return self.make_rollout(world), simulator

    def start_frame(self, world: str, seed: int) -> np.ndarray:
        if self.make_simulator is None:
            raise ProtocolError("no start image given and no simulator available for a start frame")
        simulator = self.make_simulator(world)
        try:
            return simulator.reset(seed, "heldout")
        finally:
            simulator.close()


def create_app(factory: SessionFactory, config: ServerConfig = ServerConfig()) -> FastAPI:
    config.validate()
    app = FastAPI(title="astra play")
    active = {"sessions": 0}

    @app.get("/")
    async def index():
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/app.js")
    async def script():
        return FileResponse(STATIC_DIR / "app.js", media_type="text/javascript")

    @app.get("/health")
    async def health():
        return JSONResponse({"ok": True, "sessions": active["sessions"], "max_sessions": config.max_sessions})

    @app.websocket("/ws")
    async def play(socket: WebSocket):
        await socket.accept()
        if active["sessions"] >= config.max_sessions:
            await socket.send_json({"type": "error", "message": f"server busy: {config.max_sessions} sessions already"})
            await socket.close()
            return
        active["sessions"] += 1
        session: PlaySession | None = None
        runner: asyncio.Task | None = None

        async def run_loop() -> None:
            frames_sent, started = 0, time.perf_counter()
            while True:
                begin = time.perf_counter()
                try:
                    model_frames, sim_frames, input_time = await asyncio.to_thread(session.step)
                except Exception as error:  # report, keep the server up
                    await socket.send_json({"type": "error", "message": f"generation failed: {error}"})
                    return
                done = time.perf_counter()
                frames_sent += len(model_frames)
                payload = {
                    "type": "frames",
                    "model": [encode_jpeg(f, config.jpeg_quality) for f in model_frames],
                    "sim": [encode_jpeg(f, config.jpeg_quality) for f in sim_frames] if sim_frames else None,
                    "step_ms": 1000 * (done - begin),
                    "latency_ms": 1000 * (done - input_time) if input_time else None,
                    "fps": frames_sent / max(done - started, 1e-6),
                }
                await socket.send_json(payload)
                ahead = frames_sent / config.target_fps - (time.perf_counter() - started) if config.target_fps else 0
                await asyncio.sleep(max(ahead, 0.0))

        async def stop_runner() -> None:
            nonlocal runner
            if runner is not None:
                runner.cancel()
                try:
                    await runner
                except (asyncio.CancelledError, Exception):
                    pass
                runner = None

        try:
            while True:
                frame = await socket.receive()
                if frame["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(frame["code"], frame.get("reason"))
                raw = frame["text"] if frame.get("text") is not None else frame.get("bytes") or b""  # binary frames too
                try:
                    message = parse_message(raw)
                    if message["type"] in ("input", "reset") and session is None:
                        raise ProtocolError("send a start message first")
                    if message["type"] in ("start", "reset"):
                        await stop_runner()
                        if message["type"] == "reset":
                            message = {"type": "start", "world": session.world, "seed": session.seed, "side_by_side": session.simulator is not None}
                            image = session.image
                        else:
                            image = decode_image_data_url(message["image"]) if message.get("image") else None
                        if session is not None:
                            await asyncio.to_thread(session.close)  # in a thread: it waits for the chunk in flight
                            session = None  # a failed start leaves no closed session taking input
                        session = await asyncio.to_thread(
                            PlaySession, message.get("world", "doom"), message.get("seed", config.seed),
                            message.get("side_by_side", False), image, factory,
                        )
                        first = session.first_frame
                        await socket.send_json({
                            "type": "started", "world": session.world, "modality": session.rollout.modality,
                            "size": list(first.shape[:2]), "frames_per_step": session.rollout.frames_per_step,
                            "first": encode_jpeg(first, config.jpeg_quality),
                        })
                        runner = asyncio.create_task(run_loop())
                    elif message["type"] == "input":
                        session.set_input(message)
                    elif message["type"] == "stop":
                        await stop_runner()
                except (ProtocolError, ValueError) as error:
                    await socket.send_json({"type": "error", "message": str(error)})
                except Exception as error:  # a failure inside a session never takes the server down
                    await socket.send_json({"type": "error", "message": f"{type(error).__name__}: {error}"})
        except WebSocketDisconnect:
            pass
        finally:
            try:
                await stop_runner()
                if session is not None:
                    await asyncio.to_thread(session.close)  # closes even if this await is cancelled
            finally:
                active["sessions"] -= 1

    return app
