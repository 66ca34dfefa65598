"""The wire protocol (blender_addon/core/protocol.py) and the connection file, without a server.

Every message type round-trips; 100k Gaussians survive real loopback sockets bit for bit;
every way a message can be wrong raises ProtocolError with its own code, and random
corruption never raises anything else.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import zmq

from blender_addon.core import protocol as P
from blender_addon.core.client import Client
from blender_addon.core.connection import (
    ConnectionFileError,
    ConnectionInfo,
    read_connection_file,
    write_connection_file,
)
from blender_addon.core.splat_arrays import SplatArrays

REPO = Path(__file__).resolve().parent.parent
KEY = b"test-key"


def make_splats(n: int, seed: int = 0, sh_k: int = 15, dtype=np.float32) -> SplatArrays:
    rng = np.random.default_rng(seed)
    return SplatArrays(
        means=rng.normal(size=(n, 3)).astype(dtype),
        quats=rng.normal(size=(n, 4)).astype(dtype),
        log_scales=rng.normal(size=(n, 3)).astype(dtype),
        opacity_logits=rng.normal(size=n).astype(dtype),
        sh0=rng.normal(size=(n, 3)).astype(dtype),
        shN=rng.normal(size=(n, sh_k, 3)).astype(dtype) if sh_k else None,
    )


def assert_splats_identical(a: SplatArrays, b: SplatArrays) -> None:
    da, db = a.as_dict(), b.as_dict()
    assert da.keys() == db.keys()
    for key in da:
        assert da[key].dtype == db[key].dtype, key
        assert da[key].shape == db[key].shape, key
        assert da[key].tobytes() == db[key].tobytes(), key  # bit-exact, NaN payloads included


def example(cls: type[P.Message]) -> P.Message:
    """One filled-in instance of every message type (non-default values everywhere)."""
    splats = make_splats(7, sh_k=3)
    return {
        P.Hello: P.Hello(client="test/1.0"),
        P.Welcome: P.Welcome(
            server_version="0.1.0",
            protocol_version="1.0",
            pipelines=["photo", "synthetic"],
            unavailable={"sas": "no weights"},
            models={"sd15": {"present": False}},
            device="cuda:0 (H100)",
            vram_free=10,
            vram_total=80,
            worker_state="ready",
            worker_error="",
            capabilities={"curve": False, "max_frame_bytes": 123},
            server_pid=42,
            worker_pid=43,
        ),
        P.Ping: P.Ping(),
        P.Pong: P.Pong(server_time=1234.5),
        P.SubmitJob: P.SubmitJob(
            image=b"\xff\xd8\xff" + bytes(range(256)),
            pipeline="photo",
            preset="preview",
            seed=7,
            style_prompt="oil painting",
            options={"steps": 3, "nested": {"a": [1, 2.5, None]}},
            image_name="me.jpg",
            preview_hz=2.5,
            preview_dtype="float16",
        ),
        P.JobAccepted: P.JobAccepted(job_id="j1", position=3),
        P.Progress: P.Progress(
            job_id="j1", stage="fit", step=5, total=10, eta_s=1.5, elapsed_s=3.25, message="loss 0.1"
        ),
        P.Preview: P.Preview(job_id="j1", step=5, splats=splats),
        P.JobDone: P.JobDone(job_id="j1", n_gaussians=7, elapsed_s=2.0, metrics={"psnr": 30.5}),
        P.JobFailed: P.JobFailed(job_id="j1", code="no_face", message="No face found.", hint="Use a frontal photo."),
        P.Cancel: P.Cancel(job_id="j1"),
        P.CancelReply: P.CancelReply(job_id="j1", state="cancelling"),
        P.ListJobs: P.ListJobs(limit=5),
        P.JobList: P.JobList(jobs=[{"job_id": "j1", "state": "done", "n_gaussians": 7}]),
        P.GetResult: P.GetResult(job_id="j1"),
        P.Result: P.Result(job_id="j1", splats=splats, ply=b"ply\nformat binary_little_endian 1.0\n", metrics={"a": 1}),
        P.DeleteJob: P.DeleteJob(job_id="j1"),
        P.DeleteReply: P.DeleteReply(job_id="j1", freed_bytes=12345),
        P.Heartbeat: P.Heartbeat(server_time=5.0, queue_length=2, running_job="j1", worker_state="busy"),
        P.Shutdown: P.Shutdown(),
        P.ShutdownReply: P.ShutdownReply(),
        P.Error: P.Error(code="not_found", message="There is no job.", hint="List the jobs."),
    }[cls]


def assert_messages_equal(a: P.Message, b: P.Message) -> None:
    assert type(a) is type(b)
    for f in fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, SplatArrays):
            assert_splats_identical(va, vb)
        else:
            assert va == vb, f.name


def frames_of(msg: P.Message, session: P.Session | None = None, **kw) -> list[bytes]:
    session = session or P.Session(KEY)
    return [bytes(f) for f in session.serialize(msg, **kw)]


def resign(frames: list[bytes], key: bytes = KEY) -> list[bytes]:
    """Recompute the signature after tampering, so the test reaches the later checks."""
    d = frames.index(P.DELIM)
    frames = list(frames)
    frames[d + 1] = P.Session(key).sign(frames[d + 2 :])
    return frames


def edit_json(frames: list[bytes], index_after_delim: int, edit) -> list[bytes]:
    d = frames.index(P.DELIM)
    frames = list(frames)
    value = json.loads(frames[d + index_after_delim])
    edit(value)
    frames[d + index_after_delim] = json.dumps(value).encode()
    return resign(frames)


HEADER, PARENT, CONTENT = 2, 3, 4  # frame offsets after the delimiter


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("cls", list(P.MESSAGE_TYPES.values()), ids=list(P.MESSAGE_TYPES))
def test_every_message_type_round_trips(cls):
    msg = example(cls)
    session = P.Session(KEY, session_id="abc")
    env = P.Session(KEY).deserialize(frames_of(msg, session, parent_id="p1", identities=[b"id1", b"id2"]))
    assert env.identities == [b"id1", b"id2"]
    assert env.parent_id == "p1"
    assert env.header.msg_type == cls.msg_type
    assert env.header.session == "abc"
    assert env.header.protocol_version == P.PROTOCOL_VERSION
    assert_messages_equal(env.message, msg)


def test_arrays_travel_as_buffer_frames_not_json():
    frames = frames_of(example(P.Preview))
    d = frames.index(P.DELIM)
    content = json.loads(frames[d + CONTENT])
    assert "splats" not in content
    descs = content["buffers"]
    assert [x["key"] for x in descs] == ["means", "quats", "log_scales", "opacity_logits", "sh0", "shN"]
    assert descs[0] == {"field": "splats", "key": "means", "dtype": "float32", "shape": [7, 3]}
    assert len(frames) == d + 5 + len(descs)
    assert frames[d + 5] == example(P.Preview).splats.means.tobytes()


def test_100k_gaussians_bit_exact_over_loopback_sockets():
    """Preview (float32 and float16) and Result with 100k Gaussians and degree-3 SH, through
    a real DEALER -> ROUTER -> DEALER round trip on 127.0.0.1."""
    splats = make_splats(100_000, seed=3)
    splats.means[0, 0] = np.nan  # odd values must survive too
    splats.sh0[1, 2] = -0.0
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        client_s, server_s = P.Session(KEY, limits=P.Limits.for_client()), P.Session(KEY, limits=P.Limits.for_client())
        for msg, dtype in [
            (P.Preview(job_id="j", step=1, splats=splats), None),
            (P.Preview(job_id="j", step=2, splats=splats), "float16"),
            (P.Result(job_id="j", splats=splats, ply=os.urandom(1 << 20)), None),
        ]:
            client_s.send(dealer, msg, buffer_dtype=dtype)
            assert router.poll(10_000)
            env = server_s.recv(router)
            server_s.send(router, env.message, identities=env.identities, parent_id=env.header.msg_id)
            assert dealer.poll(10_000)
            back = client_s.recv(dealer).message
            expected = splats if dtype is None else splats.astype(dtype)
            assert_splats_identical(back.splats, expected)
            assert not back.splats.means.flags.owndata  # a zero-copy view of the received frame
            if isinstance(msg, P.Result):
                assert back.ply == msg.ply
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


def test_float16_previews_halve_the_bytes():
    splats = make_splats(1000)
    d32, b32 = P.pack_splats(splats)
    d16, b16 = P.pack_splats(splats, "float16")
    assert sum(b.nbytes for b in b16) * 2 == sum(b.nbytes for b in b32)
    assert {d["dtype"] for d in d16} == {"float16"}
    assert_splats_identical(P.unpack_splats(d16, b16), splats.astype(np.float16))


def test_pack_is_zero_copy_for_contiguous_float32():
    splats = make_splats(100)
    _, bufs = P.pack_splats(splats)
    assert np.shares_memory(np.frombuffer(bufs[0], np.uint8), splats.means)


def test_unsigned_session_only_when_no_key():
    frames = frames_of(P.Ping(), P.Session(b""))
    d = frames.index(P.DELIM)
    assert frames[d + 1] == b""
    assert isinstance(P.Session(b"").deserialize(frames).message, P.Ping)
    with pytest.raises(P.ProtocolError) as err:
        P.Session(KEY).deserialize(frames)
    assert err.value.code == "bad_signature"


# ------------------------------------------------------------------ rejections
def code_of(frames, session: P.Session | None = None) -> str:
    with pytest.raises(P.ProtocolError) as err:
        (session or P.Session(KEY)).deserialize(frames)
    return err.value.code


def test_wrong_key_is_bad_signature():
    assert code_of(frames_of(P.Ping(), P.Session(b"other key"))) == "bad_signature"


def test_any_tampered_frame_is_bad_signature():
    frames = frames_of(example(P.Preview))
    d = frames.index(P.DELIM)
    for i in range(d + 2, len(frames)):
        bad = list(frames)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert code_of(bad) == "bad_signature", i
    bad = list(frames)
    bad[-1] = bad[-1][:-4]  # a truncated buffer
    assert code_of(bad) == "bad_signature"


def test_malformed_envelopes():
    frames = frames_of(P.Ping())
    d = frames.index(P.DELIM)
    assert code_of([b"just one frame"]) == "malformed"
    assert code_of([f for i, f in enumerate(frames) if i != d]) == "malformed"  # no delimiter
    assert code_of(frames[: d + 3]) == "malformed"  # truncated after the header
    assert code_of([b"x"] * 20 + frames) == "malformed"  # too many identity frames


def test_unknown_msg_type():
    frames = edit_json(frames_of(P.Ping()), HEADER, lambda h: h.update(msg_type="execute_request"))
    assert code_of(frames) == "unknown_msg_type"
    # and a session that only knows the worker's types refuses public ones
    assert code_of(frames_of(P.Ping()), P.Session(KEY, types=P.registry(P.Pong))) == "unknown_msg_type"


def test_wrong_protocol_version():
    frames = edit_json(frames_of(P.Ping()), HEADER, lambda h: h.update(protocol_version="2.0"))
    with pytest.raises(P.ProtocolError) as err:
        P.Session(KEY).deserialize(frames)
    assert err.value.code == "version_mismatch"
    assert "2.0" in err.value.message and P.PROTOCOL_VERSION in err.value.message
    assert err.value.msg_id  # so the server can address its error reply
    # a minor version bump is compatible
    frames = edit_json(frames_of(P.Ping()), HEADER, lambda h: h.update(protocol_version="1.9"))
    assert isinstance(P.Session(KEY).deserialize(frames).message, P.Ping)


def test_oversize_frames_and_messages():
    small = P.Limits(max_frame_bytes=1000, max_total_bytes=1500, max_json_bytes=600)
    session = P.Session(KEY, limits=small)
    assert code_of(frames_of(P.SubmitJob(image=b"x" * 1001)), session) == "oversize"
    assert (
        code_of(frames_of(P.Result(job_id="j", splats=make_splats(10, sh_k=0), ply=b"y" * 900)), session) == "oversize"
    )
    assert code_of(frames_of(P.SubmitJob(image=b"x", options={"pad": "z" * 700})), session) == "oversize"
    too_many = P.Session(KEY, limits=P.Limits(max_buffers=3))
    assert code_of(frames_of(example(P.Preview)), too_many) == "oversize"


def test_bad_json():
    frames = frames_of(P.Ping())
    d = frames.index(P.DELIM)
    for index, payload in [
        (HEADER, b"{not json"),
        (PARENT, b"[1, 2]"),
        (CONTENT, b"\xff\xfe"),
        (CONTENT, b'{"x": NaN}'),
    ]:
        bad = list(frames)
        bad[d + index] = payload
        assert code_of(resign(bad)) == "bad_json", payload


def test_header_fields_checked():
    assert code_of(edit_json(frames_of(P.Ping()), HEADER, lambda h: h.pop("session"))) == "malformed"
    assert code_of(edit_json(frames_of(P.Ping()), HEADER, lambda h: h.update(msg_id=5))) == "malformed"


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["buffers"].pop(),  # fewer descriptors than frames
        lambda c: c.update(buffers="nope"),
        lambda c: c["buffers"][0].update(dtype="object"),  # never an object array (pickle)
        lambda c: c["buffers"][0].update(dtype="<f4"),
        lambda c: c["buffers"][0].update(shape=[7, 4]),  # size does not match the frame
        lambda c: c["buffers"][0].update(shape=[-7, -3]),
        lambda c: c["buffers"][0].update(shape=[True, 21]),
        lambda c: c["buffers"][0].update(shape=[1] * 9 + [21]),
        lambda c: c["buffers"][0].update(field="job_id"),  # a JSON field is not a buffer
        lambda c: c["buffers"][0].update(field="nope"),
        lambda c: c["buffers"][1].update(key="means"),  # repeated key
        lambda c: c["buffers"][1].update(key="__class__"),
        lambda c: c["buffers"].__setitem__(0, "means"),
    ],
)
def test_buffer_descriptor_mismatch(edit):
    assert code_of(edit_json(frames_of(example(P.Preview)), CONTENT, edit)) == "buffer_mismatch"


def test_missing_buffer_frame():
    frames = frames_of(P.SubmitJob(image=b"abc"))
    frames = edit_json(frames[:-1], CONTENT, lambda c: c.update(buffers=[]))
    assert code_of(frames) == "buffer_mismatch"


@pytest.mark.parametrize(
    "cls,edit",
    [
        (P.Progress, lambda c: c.update(step="5")),
        (P.Progress, lambda c: c.update(step=True)),
        (P.Progress, lambda c: c.pop("job_id")),
        (P.SubmitJob, lambda c: c.update(options=[1, 2])),
        (P.SubmitJob, lambda c: c.update(seed=1.5)),
        (P.JobList, lambda c: c.update(jobs=[1])),
        (P.Welcome, lambda c: c.update(unavailable={"a": 1})),
    ],
)
def test_invalid_content(cls, edit):
    assert code_of(edit_json(frames_of(example(cls)), CONTENT, edit)) == "invalid_content"


def test_splat_shape_errors_are_invalid_content():
    # consistent descriptors, but quats for a different number of Gaussians
    frames = frames_of(example(P.Preview))
    d = frames.index(P.DELIM)
    content = json.loads(frames[d + CONTENT])
    content["buffers"][1]["shape"] = [14, 2]
    frames[d + CONTENT] = json.dumps(content).encode()
    assert code_of(resign(frames)) == "invalid_content"


def test_unknown_extra_fields_are_ignored_for_forward_compatibility():
    frames = edit_json(frames_of(P.Ping()), CONTENT, lambda c: c.update(future_field=1))
    assert isinstance(P.Session(KEY).deserialize(frames).message, P.Ping)


def test_nan_cannot_be_sent_as_json():
    with pytest.raises(P.ProtocolError) as err:
        P.Session(KEY).serialize(P.JobDone(job_id="j", metrics={"loss": float("nan")}))
    assert err.value.code == "invalid_content"


def test_random_corruption_only_ever_raises_protocol_error():
    """Mutate valid messages at random (bytes flipped, frames dropped, duplicated, swapped,
    truncated, signature re-computed or not): decoding either works or raises ProtocolError."""
    rng = np.random.default_rng(1234)
    originals = [frames_of(example(cls)) for cls in P.MESSAGE_TYPES.values()]
    session = P.Session(KEY, limits=P.Limits(max_frame_bytes=4096, max_total_bytes=8192))
    outcomes = {"ok": 0}
    for _ in range(3000):
        frames = list(originals[rng.integers(len(originals))])
        for _ in range(rng.integers(1, 4)):
            op = rng.integers(6)
            i = int(rng.integers(len(frames))) if frames else 0
            if op == 0 and frames and frames[i]:
                b = bytearray(frames[i])
                b[rng.integers(len(b))] = rng.integers(256)
                frames[i] = bytes(b)
            elif op == 1 and frames:
                del frames[i]
            elif op == 2 and frames:
                frames.insert(i, frames[i])
            elif op == 3 and frames:
                frames[i] = frames[i][: rng.integers(len(frames[i]) + 1)]
            elif op == 4:
                frames.insert(i, rng.bytes(int(rng.integers(0, 64))))
            elif op == 5 and len(frames) > 1:
                j = int(rng.integers(len(frames)))
                frames[i], frames[j] = frames[j], frames[i]
        if P.DELIM in frames[:-1] and rng.random() < 0.7:
            frames = resign(frames)  # reach the checks behind the signature
        try:
            session.deserialize(frames)
            outcomes["ok"] += 1
        except P.ProtocolError as exc:
            assert exc.code in P.ERROR_CODES
            outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
    assert {"malformed", "bad_signature", "bad_json", "buffer_mismatch", "invalid_content"} <= outcomes.keys(), outcomes


# ------------------------------------------------------------ client filtering
def test_poll_keeps_only_the_newest_preview_per_job_and_one_terminal_event():
    info = ConnectionInfo(ip="127.0.0.1", router_port=1, pub_port=2, key="k")
    with Client(info) as client:  # never connected: only its filtering is exercised
        s = make_splats(2, sh_k=0)
        msgs = [
            P.Preview(job_id="a", step=1, splats=s),
            P.Progress(job_id="a", stage="fit", step=1, total=3),
            P.Preview(job_id="b", step=1, splats=s),
            P.Preview(job_id="a", step=2, splats=s),
            P.Heartbeat(server_time=1.0),
            P.JobDone(job_id="a"),
            P.JobDone(job_id="a"),
            P.Preview(job_id="a", step=3, splats=s),
        ]
        out = client._filter(msgs)
        kinds = [(type(m).__name__, m.job_id, getattr(m, "step", None)) for m in out]
        assert kinds == [("Progress", "a", 1), ("Preview", "b", 1), ("JobDone", "a", None)]
        assert client.last_heartbeat.server_time == 1.0


# ------------------------------------------------------------- connection file
def test_connection_file_is_0600_and_round_trips(tmp_path):
    info = ConnectionInfo(ip="127.0.0.1", router_port=5555, pub_port=5556, key="abc", server_version="0.1.0", pid=1)
    old = os.umask(0o000)  # even a permissive umask must not widen it
    try:
        path = write_connection_file(tmp_path / "sub" / "conn.json", info)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = read_connection_file(path)
    assert back == info
    assert back.router_url == "tcp://127.0.0.1:5555"
    assert json.loads(path.read_text())["signature_scheme"] == "hmac-sha256"
    assert not list(tmp_path.glob("sub/.*tmp*"))


def test_connection_file_errors(tmp_path):
    with pytest.raises(ConnectionFileError, match="backend serve"):
        read_connection_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"ip": "127.0.0.1"}')
    with pytest.raises(ConnectionFileError, match="router_port"):
        read_connection_file(tmp_path / "bad.json")
    (tmp_path / "scheme.json").write_text(
        '{"ip": "x", "router_port": 1, "pub_port": 2, "key": "k", "signature_scheme": "md5"}'
    )
    with pytest.raises(ConnectionFileError, match="signature scheme"):
        read_connection_file(tmp_path / "scheme.json")


def test_any_address_connects_through_loopback():
    info = ConnectionInfo(ip="0.0.0.0", router_port=1, pub_port=2, key="k")
    assert info.router_url == "tcp://127.0.0.1:1"


def test_core_service_modules_import_neither_bpy_nor_torch():
    code = (
        "import sys\n"
        "import blender_addon.core.protocol, blender_addon.core.client, blender_addon.core.connection\n"
        "bad = [m for m in ('bpy', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
