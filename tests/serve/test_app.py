import base64
import io
import json
import socket
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from astra.errors import AstraError
from astra.serve.app import MAX_MESSAGE_BYTES, ServerConfig, SessionFactory, create_app
from astra.serve.cli import check_address_free


def png_data_url(color) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def receive_until(socket, kind: str, limit: int = 20) -> dict:
    for _ in range(limit):
        message = socket.receive_json()
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind!r} message")


def test_page_and_script_are_served_offline(factory):
    client = TestClient(create_app(factory))
    page = client.get("/")
    assert page.status_code == 200 and "astra play" in page.text
    assert "http" not in page.text.split("<script")[1], "no CDN: the page loads only local files"
    assert client.get("/app.js").status_code == 200
    assert client.get("/../pyproject.toml").status_code == 404


def test_upload_start_play_and_keys_stream_frames(factory):
    client = TestClient(create_app(factory, ServerConfig(target_fps=0)))
    with client.websocket_connect("/ws") as socket:
        socket.send_text(json.dumps({"type": "start", "world": "doom", "image": png_data_url((200, 30, 30)), "side_by_side": False}))
        started = receive_until(socket, "started")
        assert started["size"] == [16, 16] and started["modality"] == "keyboard_mouse"
        socket.send_text(json.dumps({"type": "input", "keys": ["w", "ArrowLeft"], "mouse_dx": 4}))
        frames = receive_until(socket, "frames")
        assert len(frames["model"]) == started["frames_per_step"] and frames["sim"] is None
        frame = np.asarray(Image.open(io.BytesIO(base64.b64decode(frames["model"][0]))))
        assert frame.shape == (16, 16, 3)


def test_side_by_side_runs_the_real_simulator(factory):
    client = TestClient(create_app(factory, ServerConfig(target_fps=0)))
    with client.websocket_connect("/ws") as socket:
        socket.send_text(json.dumps({"type": "start", "world": "camera", "seed": 3, "side_by_side": True}))
        receive_until(socket, "started")
        frames = receive_until(socket, "frames")
        assert len(frames["sim"]) == len(frames["model"])


def test_malformed_messages_get_errors_and_the_server_survives(factory):
    client = TestClient(create_app(factory, ServerConfig(target_fps=0)))
    with client.websocket_connect("/ws") as socket:
        for bad in ["not json", json.dumps([1, 2]), json.dumps({"type": "fly"}),
                    json.dumps({"type": "start", "world": "mars"}),
                    json.dumps({"type": "start", "image": "data:image/png;base64,AAAA"}),
                    json.dumps({"type": "input", "keys": ["w"], "mouse_dx": "fast"}),
                    '{"type": "input", "mouse_dy": ' + "9" * 400 + "}",  # was a TypeError from np.isfinite
                    json.dumps({"type": "start", "image": "data:image/png;base64"}),  # no comma: was an IndexError
                    json.dumps({"type": "start", "image": "data:image/svg+xml,<svg/>"}),
                    json.dumps({"type": "start", "side_by_side": "no"}),  # was taken as true
                    json.dumps({"type": "input", "keys": ["w"]}),  # before start
                    "[" * 100_000,  # was a RecursionError from the JSON decoder
                    "x" * (MAX_MESSAGE_BYTES + 1)]:
            socket.send_text(bad)
            reply = socket.receive_json()
            assert reply["type"] == "error" and "Error:" not in reply["message"], (bad[:80], reply)
        socket.send_text(json.dumps({"type": "start", "world": "doom", "image": png_data_url((0, 0, 200))}))
        assert receive_until(socket, "started")["world"] == "doom"


def test_a_binary_frame_gets_an_error_and_the_connection_stays(factory):
    """A binary websocket frame was a KeyError that dropped the connection without a reply."""
    client = TestClient(create_app(factory, ServerConfig(target_fps=0)))
    with client.websocket_connect("/ws") as socket:
        socket.send_bytes(b"\x00\xff")
        assert "not valid JSON" in socket.receive_json()["message"]
        socket.send_bytes(json.dumps({"type": "start", "world": "doom", "image": png_data_url((0, 0, 200))}).encode())
        assert receive_until(socket, "started")["world"] == "doom"


def test_reset_or_input_without_a_started_session_is_an_error(factory):
    """Reset before start, and input after a failed restart (the old session closed), had no reply at all."""
    no_simulator = SessionFactory(factory.make_rollout)
    client = TestClient(create_app(no_simulator, ServerConfig(target_fps=0)))
    with client.websocket_connect("/ws") as socket:
        socket.send_text(json.dumps({"type": "reset"}))
        socket.send_text("not json")  # its reply comes first when the reset got none
        assert "send a start message first" in socket.receive_json()["message"]
        socket.receive_json()
        socket.send_text(json.dumps({"type": "start", "image": png_data_url((0, 0, 200))}))
        receive_until(socket, "started")
        socket.send_text(json.dumps({"type": "start"}))  # no image and no simulator: this start fails
        assert "no start image" in receive_until(socket, "error")["message"]
        socket.send_text(json.dumps({"type": "input", "keys": ["w"]}))
        socket.send_text("not json")
        assert "send a start message first" in socket.receive_json()["message"]


def test_reset_starts_again_from_the_uploaded_image(factory):
    """Reset dropped the uploaded image: it restarted from the simulator's frame, or failed without a simulator."""
    for sessions in (factory, SessionFactory(factory.make_rollout)):
        client = TestClient(create_app(sessions, ServerConfig(target_fps=0)))
        with client.websocket_connect("/ws") as socket:
            socket.send_text(json.dumps({"type": "start", "world": "doom", "image": png_data_url((200, 30, 30))}))
            first = receive_until(socket, "started")["first"]
            socket.send_text(json.dumps({"type": "reset"}))
            reply = next(m for m in iter(socket.receive_json, None) if m["type"] != "frames")
            assert reply["type"] == "started" and reply["first"] == first, reply.get("message")


def test_the_seed_picks_the_generation_noise(factory):
    """Same seed and actions, same frames; another seed, other frames (the seed only chose the simulator's start
    frame, so with an uploaded image every seed played the same)."""
    client = TestClient(create_app(factory, ServerConfig(target_fps=0)))

    def first_chunk(seed: int) -> list[str]:
        with client.websocket_connect("/ws") as socket:
            socket.send_text(json.dumps({"type": "start", "seed": seed, "image": png_data_url((200, 30, 30))}))
            return receive_until(socket, "frames")["model"]

    assert first_chunk(0) == first_chunk(0)
    assert first_chunk(0) != first_chunk(1)


class SlowRollout:
    """A rollout whose chunks take a while, logged in `events`."""

    modality, frames_per_step, resolution = "keyboard_mouse", 1, (8, 8)

    def __init__(self, events: list[str]):
        self.events = events

    def start(self, image, seed=None) -> np.ndarray:
        return np.zeros((8, 8, 3), np.uint8)

    def step(self, rows) -> np.ndarray:
        self.events.append("chunk begins")
        time.sleep(0.3)
        self.events.append("chunk ends")
        return np.zeros((1, 8, 8, 3), np.uint8)


class LoggedSimulator:
    def __init__(self, events: list[str]):
        self.events = events

    def reset(self, seed, split) -> np.ndarray:
        return np.zeros((8, 8, 3), np.uint8)

    def step(self, control) -> np.ndarray:
        return np.zeros((8, 8, 3), np.uint8)

    def action_row(self) -> np.ndarray:
        return np.zeros(8, np.float32)

    def close(self) -> None:
        self.events.append("close")


def test_disconnect_mid_chunk_closes_the_simulator_after_the_chunk():
    """The chunk's worker thread kept stepping the simulator after a disconnect closed it (a closed Doom game or
    PyBullet client), and the session slot was given back while it still ran."""
    events: list[str] = []
    sessions = SessionFactory(lambda world: SlowRollout(events), lambda world: LoggedSimulator(events))
    client = TestClient(create_app(sessions, ServerConfig(target_fps=0)))
    with client.websocket_connect("/ws") as socket:
        socket.send_text(json.dumps({"type": "start", "side_by_side": True}))
        receive_until(socket, "started")
        while "chunk begins" not in events:
            time.sleep(0.01)
    deadline = time.time() + 10
    while "close" not in events and time.time() < deadline:
        time.sleep(0.01)
    assert events[events.index("close") - 1] == "chunk ends", events
    assert client.get("/health").json()["sessions"] == 0


def test_session_cap(factory):
    client = TestClient(create_app(factory, ServerConfig(max_sessions=1, target_fps=0)))
    with client.websocket_connect("/ws"):
        with client.websocket_connect("/ws") as second:
            assert "busy" in second.receive_json()["message"]


def test_bad_server_settings_and_a_taken_port_are_clear_errors():
    for settings, message in [({"port": 70000}, "--port"), ({"port": 0}, r"--port must lie in \[1, "),
                              ({"max_sessions": 0}, "--max-sessions"),
                              ({"target_fps": float("nan")}, "--fps")]:
        with pytest.raises(AstraError, match=message):
            ServerConfig(**settings).validate()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(AstraError, match="cannot listen on 127.0.0.1"):
            check_address_free("127.0.0.1", taken.getsockname()[1])


def test_uploads_that_decode_too_large_are_refused_from_the_header(monkeypatch):
    import astra.serve.app as app_module

    assert app_module.decode_image_data_url(png_data_url((1, 2, 3))).shape == (30, 40, 3)
    monkeypatch.setattr(app_module, "MAX_UPLOAD_PIXELS", 40 * 30 - 1)
    with pytest.raises(app_module.ProtocolError, match="40x30 pixels exceeds the limit"):
        app_module.decode_image_data_url(png_data_url((1, 2, 3)))


def test_a_burst_of_valid_mouse_moves_keeps_the_stream_going(factory):
    """Each message's mouse move is in range, but their sum between two chunks was not checked: eight full-range moves
    pushed the chunk's action out of range, and the stream stopped with an error."""
    client = TestClient(create_app(factory, ServerConfig(target_fps=0)))
    with client.websocket_connect("/ws") as socket:
        socket.send_text(json.dumps({"type": "start", "world": "doom", "image": png_data_url((90, 90, 90))}))
        receive_until(socket, "started")
        for _ in range(8):
            socket.send_text(json.dumps({"type": "input", "keys": [], "mouse_dx": 10_000}))
        for _ in range(4):  # one reply at a time: after an error no more would come
            reply = socket.receive_json()
            assert reply["type"] == "frames", reply
