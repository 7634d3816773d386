"""Tiny datasets in the exact on-disk layouts of docs/datasets.md, written into a test's tmp_path.

Every frame is a flat grey level (BASE_LEVEL + LEVEL_STEP * frame index) so tests can tell which source frames
an adapter picked; trajectories move the camera forward along its own +z by STEP per frame while turning by
YAW per frame, so the expected per-frame action is known exactly.
"""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from astra.actions.geometry import invert_pose, make_pose, matrix_to_quaternion

SIZE = 32
BASE_LEVEL = 20
LEVEL_STEP = 10
STEP = 0.5  # metres (or dataset units) per frame, along the camera's +z
YAW = 0.05  # radians per frame, a turn to the right (camera +z towards +x)


def levels(count: int, first: int = 0) -> np.ndarray:
    return BASE_LEVEL + LEVEL_STEP * np.arange(first, first + count)


def grey_frames(count: int, first: int = 0) -> np.ndarray:
    return np.broadcast_to(levels(count, first)[:, None, None, None], (count, SIZE, SIZE, 3)).astype(np.uint8)


def frame_levels(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(axis=1)


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001), options={"qp": "0"})
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def rotation_y(angle: float) -> np.ndarray:
    """Rotation about the camera's y (down) axis: positive angles turn +z towards +x (to the right)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def step_motion() -> np.ndarray:
    """The per-frame camera motion every camera fixture encodes, in the earlier camera's frame."""
    return make_pose(rotation_y(YAW), np.array([0.0, 0.0, STEP]))


def camera_trajectory(count: int, start: np.ndarray | None = None) -> np.ndarray:
    """Camera-to-world poses [count, 4, 4] with pose[i + 1] = pose[i] @ step_motion()."""
    poses = [np.eye(4) if start is None else start]
    for _ in range(count - 1):
        poses.append(poses[-1] @ step_motion())
    return np.stack(poses)


def expected_camera7_row() -> np.ndarray:
    """[t / STEP, quaternion] of step_motion(): forward 1 unit, a turn of YAW to the right about +y."""
    return np.array([0.0, 0.0, 1.0, 0.0, np.sin(YAW / 2), 0.0, np.cos(YAW / 2)])


# ----------------------------------------------------------------------------- nuScenes

# Camera axes (x right, y down, z forward) in the ego frame (x forward, y left, z up).
CAMERA_IN_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
CAMERA_OFFSET = np.array([1.7, 0.0, 1.5])
NUSCENES_DT_US = 83_333  # ~12 Hz
NUSCENES_VERSION = "v1.0-mini"


def wxyz(rotation: np.ndarray) -> list[float]:
    return np.roll(matrix_to_quaternion(rotation), 1).tolist()


def write_nuscenes(root: Path, scene_lengths: tuple[int, ...] = (9, 3), keyframe_every: int = 4) -> list[np.ndarray]:
    """Scenes whose ego drives forward STEP per frame while turning left by YAW (about z up).

    Also writes CAM_BACK records that must be ignored. Returns the expected camera-to-world poses per scene.
    """
    tables = {name: [] for name in ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "sensor", "log")}
    tables["log"].append(
        {"token": "log0", "logfile": "n015", "vehicle": "n015", "date_captured": "2018-07-24", "location": "singapore"}
    )
    for channel in ("CAM_FRONT", "CAM_BACK"):
        tables["sensor"].append({"token": f"sensor-{channel}", "channel": channel, "modality": "camera"})
        tables["calibrated_sensor"].append(
            {
                "token": f"calib-{channel}",
                "sensor_token": f"sensor-{channel}",
                "translation": CAMERA_OFFSET.tolist(),
                "rotation": wxyz(CAMERA_IN_EGO),
                "camera_intrinsic": [[16.0, 0.0, 16.0], [0.0, 16.0, 16.0], [0.0, 0.0, 1.0]],
            }
        )
    ego_step = make_pose(rotation_z(YAW), np.array([STEP, 0.0, 0.0]))
    camera = make_pose(CAMERA_IN_EGO, CAMERA_OFFSET)
    expected = []
    for scene_index, length in enumerate(scene_lengths):
        ego = np.eye(4)
        ego[:2, 3] = [100.0 * scene_index, 50.0]
        samples = [f"s{scene_index}-{k}" for k in range(0, length, keyframe_every)]
        for position, sample in enumerate(samples):
            tables["sample"].append(
                {
                    "token": sample,
                    "scene_token": f"scene{scene_index}",
                    "timestamp": position * keyframe_every * NUSCENES_DT_US,
                    "prev": samples[position - 1] if position else "",
                    "next": samples[position + 1] if position + 1 < len(samples) else "",
                }
            )
        poses = []
        for channel in ("CAM_FRONT", "CAM_BACK"):
            for frame in range(length):
                token = f"sd{scene_index}-{channel}-{frame}"
                keyframe = frame % keyframe_every == 0
                folder = "samples" if keyframe else "sweeps"
                filename = f"{folder}/{channel}/n015__{channel}__{scene_index}{frame:04d}.jpg"
                (root / filename).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(grey_frames(1, frame)[0]).save(root / filename, quality=95)
                if channel == "CAM_FRONT":
                    tables["ego_pose"].append(
                        {
                            "token": f"ego{scene_index}-{frame}",
                            "translation": ego[:3, 3].tolist(),
                            "rotation": wxyz(ego[:3, :3]),
                            "timestamp": frame * NUSCENES_DT_US,
                        }
                    )
                    poses.append(ego @ camera)
                    ego = ego @ ego_step
                tables["sample_data"].append(
                    {
                        "token": token,
                        "sample_token": f"s{scene_index}-{frame - frame % keyframe_every}",
                        "ego_pose_token": f"ego{scene_index}-{frame}",
                        "calibrated_sensor_token": f"calib-{channel}",
                        "filename": filename,
                        "fileformat": "jpg",
                        "width": SIZE,
                        "height": SIZE,
                        "timestamp": frame * NUSCENES_DT_US,
                        "is_key_frame": keyframe,
                        "prev": f"sd{scene_index}-{channel}-{frame - 1}" if frame else "",
                        "next": f"sd{scene_index}-{channel}-{frame + 1}" if frame + 1 < length else "",
                    }
                )
        tables["scene"].append(
            {
                "token": f"scene{scene_index}",
                "name": f"scene-{scene_index:04d}",
                "description": f"drive {scene_index}, turn left",
                "log_token": "log0",
                "nbr_samples": len(samples),
                "first_sample_token": samples[0],
                "last_sample_token": samples[-1],
            }
        )
        expected.append(np.stack(poses))
    folder = root / NUSCENES_VERSION
    folder.mkdir(parents=True, exist_ok=True)
    for name, records in tables.items():
        (folder / f"{name}.json").write_text(json.dumps(records))
    return expected


# ----------------------------------------------------------------------------- Sekai

SEKAI_FPS = 30


def write_sekai(root: Path, num_frames: int = 9) -> np.ndarray:
    """game-drone clip `abc_0000000_0000009` (mp4 + npz) listed in a CSV with one more row whose video is absent."""
    poses = camera_trajectory(num_frames)
    clip = f"abc_{0:07d}_{num_frames:07d}"
    folder = root / "sekai-game-drone"
    write_video(folder / f"{clip}.mp4", grey_frames(num_frames), SEKAI_FPS)
    intrinsic = np.array([[0.5, 0.0, 0.5], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]], dtype=np.float32)
    np.savez(folder / f"{clip}.npz", extrinsic=poses.astype(np.float32), intrinsic=intrinsic)
    table = root / "train" / "sekai-game-drone.csv"
    table.parent.mkdir(parents=True)
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["videoFile", "cameraFile", "caption", "location", "scene", "crowdDensity", "weather", "timeOfDay"]
        )
        writer.writerow([f"{clip}.mp4", f"{clip}.npz", "a drone flies forward", "x", "y", "low", "sunny", "day"])
        writer.writerow(
            ["missing_0000000_0000300.mp4", "missing_0000000_0000300.npz", "not downloaded", "", "", "", "", ""]
        )
    return poses


# ----------------------------------------------------------------------------- SpatialVID

SPATIALVID_FPS = 10  # pose stride int(10 / 5) = 2


def write_spatialvid(root: Path, num_frames: int = 9, clip: str = "0a1b2c") -> np.ndarray:
    """One clip under SpatialVid/HQ/ with world-to-camera poses of the forward trajectory; returns its c2w."""
    base = root / "SpatialVid" / "HQ"
    stride = SPATIALVID_FPS // 5
    count = len(range(0, num_frames, stride))
    c2w = camera_trajectory(count, start=make_pose(rotation_y(0.3), np.array([1.0, 2.0, 3.0])))
    w2c = invert_pose(c2w)
    annotation = base / "annotations" / "group_0001" / clip
    annotation.mkdir(parents=True)
    np.save(annotation / "poses.npy", np.concatenate([w2c[:, :3, 3], matrix_to_quaternion(w2c[:, :3, :3])], axis=1))
    np.save(annotation / "intrinsics.npy", np.tile([0.6, 0.8, 0.5, 0.5], (count, 1)))
    (annotation / "caption.json").write_text(
        json.dumps({"SceneSummary": "A street.", "SceneDescription": "Cars pass.", "CameraMotion": "Dolly In"})
    )
    write_video(base / "videos" / "group_0001" / f"{clip}.mp4", grey_frames(num_frames), SPATIALVID_FPS)
    table = base / "data" / "train" / "SpatialVID_HQ_metadata.csv"
    table.parent.mkdir(parents=True)
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "video path", "annotation path", "fps", "num frames", "aesthetic score"])
        writer.writerow(
            [clip, f"videos/group_0001/{clip}.mp4", f"annotations/group_0001/{clip}", SPATIALVID_FPS, num_frames, 5.1]
        )
    return c2w


# ----------------------------------------------------------------------------- RT-1 (LeRobot)

RT1_FPS = 3
RT1_CAMERA = "observation.images.image"


def rt1_actions(episode_index: int, length: int) -> np.ndarray:
    """world_vector, rotation_delta, gripper (+1 open, 0 closed: closes halfway through)."""
    steps = np.arange(length, dtype=np.float32)[:, None]
    world = (
        0.01
        * (episode_index + 1)
        * np.concatenate([np.ones_like(steps), -steps / length, np.zeros_like(steps)], axis=1)
    )
    rotation = np.concatenate([np.zeros_like(steps), np.zeros_like(steps), 0.02 * np.ones_like(steps)], axis=1)
    gripper = (steps < length // 2).astype(np.float32)
    return np.concatenate([world, rotation, gripper], axis=1).astype(np.float32)


def _data_table(episode_index: int, length: int, first_index: int) -> pa.Table:
    actions = rt1_actions(episode_index, length)
    seven = pa.list_(pa.float32(), 7)
    return pa.table(
        {
            "observation.state": pa.array(np.zeros((length, 8), np.float32).tolist(), pa.list_(pa.float32(), 8)),
            "action": pa.array(actions.tolist(), seven),
            "timestamp": pa.array(np.arange(length, dtype=np.float32) / RT1_FPS),
            "frame_index": pa.array(np.arange(length)),
            "episode_index": pa.array(np.full(length, episode_index)),
            "index": pa.array(first_index + np.arange(length)),
            "task_index": pa.array(np.full(length, episode_index)),
        }
    )


def _rt1_info(version: str, data_path: str, video_path: str, lengths: tuple[int, ...]) -> dict:
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    return {
        "codebase_version": version,
        "robot_type": "google_robot",
        "total_episodes": len(lengths),
        "total_frames": sum(lengths),
        "total_tasks": len(lengths),
        "chunks_size": 1000,
        "fps": RT1_FPS,
        "splits": {"train": f"0:{len(lengths)}"},
        "data_path": data_path,
        "video_path": video_path,
        "features": {
            RT1_CAMERA: {"dtype": "video", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channel"]},
            "observation.state": {"dtype": "float32", "shape": [8], "names": None},
            "action": {"dtype": "float32", "shape": [7], "names": names},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }


def write_rt1_v2(root: Path, lengths: tuple[int, ...] = (6, 5)) -> None:
    data_path = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    video_path = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_rt1_info("v2.0", data_path, video_path, lengths)))
    episodes, tasks, first = [], [], 0
    for index, length in enumerate(lengths):
        episodes.append(json.dumps({"episode_index": index, "tasks": [f"pick object {index}"], "length": length}))
        tasks.append(json.dumps({"task_index": index, "task": f"pick object {index}"}))
        path = root / data_path.format(episode_chunk=0, episode_index=index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_data_table(index, length, first), path)
        write_video(
            root / video_path.format(episode_chunk=0, video_key=RT1_CAMERA, episode_index=index),
            grey_frames(length, 5 * index),
            RT1_FPS,
        )
        first += length
    (root / "meta" / "episodes.jsonl").write_text("\n".join(episodes) + "\n")
    (root / "meta" / "tasks.jsonl").write_text("\n".join(tasks) + "\n")


def write_rt1_v3(root: Path, lengths: tuple[int, ...] = (6, 5)) -> None:
    """Both episodes in one data file and one concatenated video (frame levels continue across episodes)."""
    data_path = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    video_path = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(_rt1_info("v3.0", data_path, video_path, lengths)))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()
    tables = [_data_table(index, length, start) for index, (length, start) in enumerate(zip(lengths, starts))]
    path = root / data_path.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True)
    pq.write_table(pa.concat_tables(tables), path)
    write_video(
        root / video_path.format(video_key=RT1_CAMERA, chunk_index=0, file_index=0), grey_frames(sum(lengths)), RT1_FPS
    )
    episodes = {
        "episode_index": list(range(len(lengths))),
        "tasks": [[f"pick object {index}"] for index in range(len(lengths))],
        "length": list(lengths),
        "data/chunk_index": [0] * len(lengths),
        "data/file_index": [0] * len(lengths),
        "dataset_from_index": starts,
        "dataset_to_index": [start + length for start, length in zip(starts, lengths)],
        f"videos/{RT1_CAMERA}/chunk_index": [0] * len(lengths),
        f"videos/{RT1_CAMERA}/file_index": [0] * len(lengths),
        f"videos/{RT1_CAMERA}/from_timestamp": [start / RT1_FPS for start in starts],
        f"videos/{RT1_CAMERA}/to_timestamp": [(start + length) / RT1_FPS for start, length in zip(starts, lengths)],
    }
    pq.write_table(pa.table(episodes), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({"task_index": list(range(len(lengths)))}), root / "meta" / "tasks.parquet")


# ----------------------------------------------------------------------------- MultiCamVideo

MULTICAM_FPS = 15
CENTIMETRES = 100.0


def ue_string(forward: np.ndarray, right: np.ndarray, up: np.ndarray, position_cm: np.ndarray, short_rows: bool) -> str:
    """UE row-vector matrix string as shipped: '[r00 r01 r02 0] ... [tx ty tz 1] ' ('-0' tokens, trailing space)."""

    def row(values, last):
        tokens = ["-0" if v == 0 and np.signbit(v) else f"{v:.6f}" for v in values]
        return "[" + " ".join(tokens + ([] if short_rows else [last])) + "]"

    return " ".join([row(forward, "0"), row(right, "0"), row(up, "0"), row(position_cm, "1")]) + " "


def write_multicam(root: Path, num_frames: int = 5) -> None:
    """train/f24_aperture5/scene1 with cam01 driving straight forward and cam02 yawing right while moving."""
    scene = root / "train" / "f24_aperture5" / "scene1"
    table = {}
    for frame in range(num_frames):
        entries = {}
        for camera, yaw_rate in (("cam01", 0.0), ("cam02", YAW)):
            yaw = yaw_rate * frame  # UE yaw about Z up: positive turns from X (forward) to Y (right)
            forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
            right = np.array([-np.sin(yaw), np.cos(yaw), -0.0])
            position = np.array([STEP * CENTIMETRES * frame, 0.0, 150.0])
            entries[camera] = ue_string(
                forward, right, np.array([0.0, -0.0, 1.0]), position, short_rows=camera == "cam02"
            )
        table[f"frame{frame}"] = entries
    (scene / "cameras").mkdir(parents=True)
    (scene / "cameras" / "camera_extrinsics.json").write_text(json.dumps(table))
    for camera in ("cam01", "cam02"):
        write_video(scene / "videos" / f"{camera}.mp4", grey_frames(num_frames), MULTICAM_FPS)
