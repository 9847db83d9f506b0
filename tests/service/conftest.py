"""Shared fixtures of the service tests."""
import re
import threading

import pytest
import zmq

from twin_bayes.config import load_config, resolve_config_path
from twin_bayes.models import TwinModel
from twin_bayes.service import protocol


class RouterPeer:
    """A ROUTER on loopback standing in for the service's ingest: records every telemetry chunk it
    receives and answers with `policy(peer, msg)` -> list of replies (default: ack, "duplicate" when
    the chunk was already stored). Runs in its own thread; only that thread touches the socket."""

    def __init__(self, policy=None, curve_server=None):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        if curve_server is not None:
            curve_server(self.sock)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.policy = policy or RouterPeer.ack
        self.chunks: dict[int, protocol.Message] = {}   # seq -> first copy received
        self.receipts: list[int] = []                     # seqs in arrival order, resends included
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def ack(peer, msg):
        return [protocol.ack(msg.robot_id, msg.seq, duplicate=peer.receipts.count(msg.seq) > 1)]

    def _run(self):
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, *frames = self.sock.recv_multipart()
            msg = protocol.decode(frames)
            self.receipts.append(msg.seq)
            self.chunks.setdefault(msg.seq, msg)
            for reply in self.policy(self, msg):
                self.sock.send_multipart([ident, *reply])

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.sock.close(linger=0)


@pytest.fixture
def router_peer():
    """Factory of RouterPeer(policy); every peer is stopped after the test."""
    peers = []

    def make(policy=None, curve_server=None):
        peers.append(RouterPeer(policy, curve_server))
        return peers[-1]

    yield make
    for p in peers:
        p.stop()


@pytest.fixture(scope="session")
def service_model(tmp_path_factory):
    """The one TwinModel of every service in these tests (its kernels compile once per session,
    for minutes): arm2 with the inference tests' small settings (0.5 s windows, 32 particles,
    5 moves per stage; the same compiled kernels, so the persistent cache serves both) and a
    healthy band for dof_damping:shoulder that nominal data violates."""
    text = resolve_config_path("arm2").read_text().replace("window_s = 1.0", "window_s = 0.5\nmcmc_steps = 5")
    text = re.sub(r'("dof_damping:shoulder" = \{[^}]*healthy = )\[[^]]*\]', r"\1[0.0, 0.02]", text)
    path = tmp_path_factory.mktemp("cfg") / "arm2_service.toml"
    path.write_text(text)
    return TwinModel(load_config(path))
