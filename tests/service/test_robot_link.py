"""The robot-side DEALER against a real ROUTER on loopback that drops, duplicates and asks for resends."""
import msgpack
import numpy as np
import pytest
import zmq

from twin_bayes.service import auth, protocol
from twin_bayes.service.robot_link import LinkTimeout, RobotLink


def chunk(k, n=5):
    """Chunk k of a 2-joint robot: t (n,) s, q, qd, ctrl (n, 2), values unique per chunk."""
    t = (k * n + np.arange(n)) * 0.01
    return {"t": t, "q": np.c_[t, -t], "qd": np.c_[t + 1, t - 1], "ctrl": np.c_[t * 2, t * 3]}


def flaky(peer, msg):
    """Drops every third receipt unanswered, acks some twice, asks for missing chunks like the service."""
    i = len(peer.receipts)
    if i % 3 == 1:
        return []
    replies = [protocol.ack(msg.robot_id, msg.seq, duplicate=peer.receipts.count(msg.seq) > 1)]
    if i % 4 == 0:
        replies.append(replies[0])
    missing = [s for s in range(max(peer.chunks)) if s not in peer.chunks]
    if missing:
        replies.append(protocol.resend(msg.robot_id, missing))
    return replies


def test_every_chunk_arrives_once_despite_drops_and_duplicates(router_peer):
    peer = router_peer(flaky)
    with RobotLink(peer.endpoint, "arm-1", resend_after_s=0.05, max_backoff_s=0.2, max_unacked=6) as link:
        for k in range(40):
            assert link.send(**chunk(k), settings={"servo_kp": 400.0}, timeout_s=20) == k
            assert len(link.pending) <= 6  # bounded memory
            link.poll()
        assert link.flush(20)
    assert sorted(peer.chunks) == list(range(40))
    for k, msg in peer.chunks.items():
        for name, a in chunk(k).items():
            np.testing.assert_array_equal(msg.arrays[name], a)
        assert msg.extra["settings"] == {"servo_kp": 400.0}
    assert link.stats.acked == 40 and link.stats.rejected == 0
    assert link.stats.resent > 0 and len(peer.receipts) > 40  # drops were made up by resends


def test_resend_request_and_timeout_resend(router_peer):
    answers = {}  # seq -> list of replies scripted for its next receipt

    def scripted(peer, msg):
        return answers.pop(msg.seq, [protocol.ack(msg.robot_id, msg.seq)])

    peer = router_peer(scripted)
    answers[0] = []  # chunk 0's first copy is "lost"
    answers[1] = [protocol.ack("r", 1), protocol.resend("r", [0])]
    with RobotLink(peer.endpoint, "r", resend_after_s=60.0) as link:
        link.send(**chunk(0))
        link.send(**chunk(1))
        assert link.flush(5)  # chunk 0 came back on the resend request, long before its timeout
        assert peer.receipts == [0, 1, 0]
        answers[2] = []
        link.resend_after_s = 0.1
        link.send(**chunk(2))
        assert link.flush(5)  # no request this time: resent when its ack was overdue
    assert peer.receipts == [0, 1, 0, 2, 2]
    assert link.stats.resent == 2


def test_errors_reject_invalid_chunks_but_retry_a_failed_store(router_peer):
    answers = {0: [protocol.error("r", 0, "bad_rate", "samples must be 0.002 s apart")],
               1: [protocol.error("r", 1, "store_failed", "not stored, resend later: disk full")]}

    def scripted(peer, msg):
        return answers.pop(msg.seq, [protocol.ack(msg.robot_id, msg.seq)])

    peer = router_peer(scripted)
    with RobotLink(peer.endpoint, "r", resend_after_s=0.1) as link:
        link.send(**chunk(0))
        link.send(**chunk(1))
        assert link.flush(5)
    assert link.stats.rejected == 1 and link.stats.acked == 1
    assert [e[:2] for e in link.stats.errors] == [(0, "bad_rate"), (1, "store_failed")]
    assert peer.receipts == [0, 1, 1]


def test_silent_service_blocks_at_the_memory_bound(router_peer):
    peer = router_peer(lambda peer, msg: [])
    with RobotLink(peer.endpoint, "r", resend_after_s=10, max_unacked=3) as link:
        for k in range(3):
            link.send(**chunk(k))
        with pytest.raises(LinkTimeout):
            link.send(**chunk(3), timeout_s=0.2)
        assert link.unacked == [0, 1, 2] and link.next_seq == 3  # nothing lost, nothing numbered twice
        with pytest.raises(protocol.ProtocolError):
            link.send(**{**chunk(4), "q": np.full((5, 2), np.nan)})


def test_curve_known_key_is_acked_unknown_key_is_not_let_in(router_peer, tmp_path):
    for name in ("server", "arm-1"):
        auth.generate(tmp_path, name)
    authenticator = auth.start_authenticator(zmq.Context.instance(), tmp_path)
    try:
        server = auth.load(tmp_path, "server")
        peer = router_peer(curve_server=server.apply_server)
        with RobotLink(peer.endpoint, "arm-1", curve=auth.load(tmp_path, "arm-1")) as link:
            link.send(**chunk(0))
            assert link.flush(10)
        stranger = auth.CurveKeys(*zmq.curve_keypair(), server_public=server.public)
        with RobotLink(peer.endpoint, "arm-1", curve=stranger, resend_after_s=0.1) as link:
            link.send(**chunk(1))
            assert not link.flush(1.0)
        assert sorted(peer.chunks) == [0]
    finally:
        authenticator.stop()


def test_settings_travel_in_the_body_and_must_be_numbers():
    frames = protocol.telemetry("r", 0, **chunk(0), settings={"servo_kp": 400})
    assert protocol.decode(frames).extra == {"settings": {"servo_kp": 400.0}}
    bad = protocol.encode("telemetry", "r", 0, chunk(0))
    header = msgpack.unpackb(bad[0])
    header["body"] = {"settings": {"servo_kp": "high"}}
    with pytest.raises(protocol.ProtocolError, match="settings"):
        protocol.decode([msgpack.packb(header), *bad[1:]])
