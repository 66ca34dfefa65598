"""Replay protection on the wire: a signed message captured on loopback is refused when sent
again (``replayed``) or when dated outside the window (``stale``); the digest history is
bounded without ever readmitting a copy. The real-server case is in test_service_robustness.py.
"""

from __future__ import annotations

import time

import pytest
import zmq
from test_protocol import HEADER, KEY, edit_json, frames_of

from blender_addon.core import protocol as P


def capture_on_loopback(msg: P.Message, sender: P.Session) -> list[bytes]:
    """The frames of ``msg`` exactly as a ROUTER received them from a real DEALER: what an
    eavesdropper on the wire would have captured (the routing id frame removed)."""
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        sender.send(dealer, msg)
        assert router.poll(5000)
        return router.recv_multipart()[1:]
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


@pytest.mark.parametrize(
    "msg", [P.SubmitJob(image=b"\x89PNG fake", pipeline="photo"), P.DeleteJob(job_id="x"), P.Shutdown()]
)
def test_a_captured_signed_message_is_refused_the_second_time(msg):
    frames = capture_on_loopback(msg, P.Session(KEY))
    server = P.Session(KEY)
    env = server.deserialize(frames)
    assert type(env.message) is type(msg)
    with pytest.raises(P.ProtocolError) as err:
        server.deserialize(frames)
    assert err.value.code == "replayed" and err.value.msg_id == env.header.msg_id
    assert "resend" in err.value.hint
    # a fresh message of the same content is not a replay: only the copy is refused
    assert type(server.deserialize(capture_on_loopback(msg, P.Session(KEY))).message) is type(msg)


@pytest.mark.parametrize("skew_s", [+301.0, -301.0])
def test_a_captured_message_outside_the_time_window_is_stale(skew_s):
    frames = capture_on_loopback(P.Shutdown(), P.Session(KEY))
    late = P.Session(KEY, replay=P.ReplayGuard(window_s=300, clock=lambda: time.time() + skew_s))
    with pytest.raises(P.ProtocolError) as err:
        late.deserialize(frames)
    assert err.value.code == "stale"
    within = P.Session(KEY, replay=P.ReplayGuard(window_s=300, clock=lambda: time.time() + skew_s / 2))
    assert isinstance(within.deserialize(frames).message, P.Shutdown)


def test_the_digest_history_is_bounded_and_forgetting_never_readmits_a_copy():
    guard = P.ReplayGuard(max_history=3)
    receiver = P.Session(KEY, replay=guard)
    sender = P.Session(KEY)
    captured = [frames_of(P.Ping(), sender) for _ in range(6)]
    for frames in captured:
        receiver.deserialize(frames)
    assert len(guard) == 3
    for frames in captured:  # remembered ones are replays; forgotten ones fall under the floor
        with pytest.raises(P.ProtocolError) as err:
            receiver.deserialize(frames)
        assert err.value.code in ("replayed", "stale")


def test_replay_checks_need_a_signature_and_a_real_date():
    assert P.Session(b"").replay is None  # unsigned (loopback only): a copy proves nothing
    frames = frames_of(P.Ping())
    for date in ("yesterday", "2026-12-03T10:00:00"):  # not ISO 8601; no time zone
        with pytest.raises(P.ProtocolError) as err:
            P.Session(KEY).deserialize(edit_json(frames, HEADER, lambda h, d=date: h.update(date=d)))
        assert err.value.code == "malformed"
