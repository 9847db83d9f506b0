"""Foxglove and MCAP: `watch --mcap` against a live service read back with the `mcap` library, and the
Foxglove WebSocket server speaking `foxglove.websocket.v1` to a real client."""
import json
import struct
import threading
import time

import numpy as np
from mcap.reader import make_reader
from websockets.sync.client import connect

from twin_bayes.cli import main
from twin_bayes.service import protocol
from twin_bayes.service.client import Event, Subscriber, TwinClient
from twin_bayes.service.emulate import EmulatedRobot, stream
from twin_bayes.service.foxglove import ROBOT_CHANNELS, SCHEMAS, FoxgloveSink
from twin_bayes.service.robot_link import RobotLink
from twin_bayes.service.server import ServiceSettings, TwinService
from twin_bayes.service.watch import watch
from twin_bayes.service.worker import WorkerSettings

SUMMARY = {"body_mass:forearm": {"mean": 0.6, "sd": 0.01, "q05": 0.58, "q50": 0.6, "q95": 0.62}}


def events(rid="arm2"):
    """A posterior, a prediction (2 joints and a 3-axis gyro, 3 steps), 2 measured samples, health and an alert."""
    bands = np.stack([np.full((3, 2), x) for x in (-1.0, -0.5, 0.0, 0.5, 1.0)])
    gyro = np.stack([np.arange(9.0).reshape(3, 3) + x for x in (-1.0, -0.5, 0.0, 0.5, 1.0)])
    t = np.array([10.0, 10.002])
    frames = [("posterior", protocol.posterior(rid, 1, 3, SUMMARY, stale=False)),
              ("prediction", protocol.prediction(rid, 2, 3, {"t": 10.004 + np.arange(3) * 0.002, "q_bands": bands,
                                                             "qd_bands": 2 * bands, "sensor:gyro": gyro},
                                                 quantiles=[0.05, 0.25, 0.5, 0.75, 0.95])),
              ("telemetry", protocol.telemetry(rid, 3, t, np.c_[t, -t], np.ones((2, 2)), np.zeros((2, 2)),
                                               sensors={"gyro": np.c_[t, 2 * t, 3 * t]})),
              ("health", protocol.reply(protocol.FLEET, 4, "health", status="ok", problems=[],
                                        robots={rid: {"posterior_version": 3}})),
              ("alert", protocol.reply(rid, 5, "alert", parameter="dof_damping:shoulder", active=True, p_outside=0.97,
                                       healthy=[0.0, 0.15], mean=0.2))]
    return [Event(f"{kind}/{rid if kind != 'health' else '*'}/", protocol.decode(f)) for kind, f in frames]


def read_mcap(path):
    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        counts: dict[str, int] = {}
        last: dict[str, dict] = {}
        for _, channel, message in reader.iter_messages():
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            last[channel.topic] = json.loads(message.data)
    channels = {c.topic: (c, summary.schemas[c.schema_id]) for c in summary.channels.values()}
    return channels, counts, last


def test_mcap_of_a_live_service_has_every_channel_and_schema(tmp_path, service_model):
    any_port = "tcp://127.0.0.1:*"
    settings = ServiceSettings({"arm-7": service_model.cfg}, tmp_path / "store.db", any_port, any_port, any_port,
                               worker=WorkerSettings(checkpoints=tmp_path / "checkpoints"))
    robot, path = service_model.robot, tmp_path / "twin.mcap"
    with TwinService(settings, {"arm-7": service_model}) as service, \
            TwinClient(service.endpoints["query"], timeout_s=10) as client:
        sub = Subscriber(service.endpoints["pub"], client=client)
        sub.robots.add("arm-7")
        sink = FoxgloveSink(mcap=path)
        done = threading.Event()

        def robot_side():
            with RobotLink(service.endpoints["ingest"], "arm-7") as link:
                stream(EmulatedRobot(robot, robot.nominal(), seed=2), link, 0.6, 50, rate_hz=0)
            done.set()

        feeder = threading.Thread(target=robot_side)
        feeder.start()
        try:  # the first window compiles the update kernels: minutes, once per test session
            watch(sub, seconds=900, out=open(tmp_path / "watch.jsonl", "w"), as_json=True,
                  until=lambda: sink.logged.get("/twin/arm-7/prediction/bands", 0) >= 1
                  and sink.logged.get("/twin/health", 0) >= 1, sink=sink)   # health comes once a second
        finally:
            feeder.join()
            sink.close()
            sub.close()
    channels, counts, last = read_mcap(path)
    # an MCAP holds the channels that got messages: every one (measured from the service's telemetry
    # topic, each applied window); the healthy band of dof_damping:shoulder that nominal data violates
    # raises an alert
    wanted = {"/twin/health"} | {f"/twin/arm-7/{k}" for k in ROBOT_CHANNELS} | \
        {f"/twin/arm-7/posterior/{n}" for n in service_model.names}
    assert wanted == set(channels)
    for topic, (channel, schema) in channels.items():
        kind = "posterior/parameter" if topic.count("/") == 4 and "/posterior/" in topic else \
            topic.removeprefix("/twin/").split("/", 1)[-1]
        assert channel.message_encoding == "json" and schema.encoding == "jsonschema"
        assert json.loads(schema.data) == SCHEMAS[kind], topic
    assert counts["/twin/arm-7/posterior"] >= 1 and counts["/twin/arm-7/prediction/median"] >= 1
    assert counts["/twin/arm-7/measured"] >= 1
    assert all(counts.get(f"/twin/arm-7/posterior/{n}", 0) == counts["/twin/arm-7/posterior"]
               for n in service_model.names)
    median, bands = last["/twin/arm-7/prediction/median"], last["/twin/arm-7/prediction/bands"]
    h, nq = len(median["t"]), robot.nq
    assert np.asarray(median["q"]).shape == (h, nq) and np.asarray(bands["q"]).shape == (5, h, nq)
    assert np.all(np.asarray(bands["end"]["q05"]) <= np.asarray(bands["end"]["q95"]))
    assert set(last["/twin/arm-7/posterior"]["parameters"][0]) == {"name", "mean", "sd", "q05", "q95"}


def publish_until(stop: threading.Event, pub) -> None:
    while not stop.wait(0.05):  # repeated: a SUB joining late misses the first messages
        for e in events():
            kind = e.topic.split("/")[0]
            frames = protocol.encode(e.message.type, e.message.robot_id, e.message.seq, e.message.arrays,
                                     **e.message.extra)
            pub.send_multipart([protocol.topic(kind, e.message.robot_id), *frames])


def test_watch_cli_writes_the_mcap(tmp_path, capsys):
    import zmq
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.linger = 0
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    stop = threading.Event()
    thread = threading.Thread(target=publish_until, args=(stop, pub))
    thread.start()
    try:
        assert main(["watch", "--endpoint", endpoint, "--json", "--seconds", "1", "--mcap",
                     str(tmp_path / "w.mcap")]) == 0
    finally:
        stop.set()
        thread.join()
        pub.close()
    channels, counts, last = read_mcap(tmp_path / "w.mcap")
    assert {"/twin/arm2/measured", "/twin/arm2/posterior/body_mass:forearm", "/twin/arm2/alerts",
            "/twin/health"} <= set(channels)
    assert last["/twin/arm2/measured"]["q"] == [10.002, -10.002]
    assert last["/twin/arm2/measured"]["timestamp"] == {"sec": 10, "nsec": 2_000_000}
    assert last["/twin/arm2/posterior/body_mass:forearm"]["q95"] == 0.62
    assert last["/twin/arm2/prediction/bands"]["end"] == {"q05": [-1.0, -1.0], "q50": [0.0, 0.0], "q95": [1.0, 1.0]}
    # a sensor's readings: measured per sample, predicted as the joints are (median, bands, the band at the end)
    assert last["/twin/arm2/measured/gyro"]["reading"] == [10.002, 20.004, 30.006]
    assert last["/twin/arm2/measured/gyro"]["timestamp"] == {"sec": 10, "nsec": 2_000_000}
    median, bands = last["/twin/arm2/prediction/median/gyro"], last["/twin/arm2/prediction/bands/gyro"]
    assert median["sensor"] == "gyro" and median["readings"] == np.arange(9.0).reshape(3, 3).tolist()
    assert median["t"] == bands["t"] == last["/twin/arm2/prediction/median"]["t"]
    assert np.asarray(bands["readings"]).shape == (5, 3, 3)
    assert bands["end"] == {"q05": [5.0, 6.0, 7.0], "q50": [6.0, 7.0, 8.0], "q95": [7.0, 8.0, 9.0]}
    assert json.loads(channels["/twin/arm2/prediction/bands/gyro"][1].data) == SCHEMAS["prediction/bands/sensor"]
    assert last["/twin/arm2/alerts"]["active"] is True
    assert main(["watch", "--endpoint", endpoint, "--seconds", "0.1", "--mcap", str(tmp_path / "no" / "x.mcap")]) == 2
    assert "error" in capsys.readouterr().err


def test_foxglove_server_advertises_channels_and_streams_to_a_websocket_client():
    sink = FoxgloveSink(port=0)
    try:
        for e in events():
            sink(e)
        # offered as the Foxglove app does: foxglove-sdk 0.30 speaks foxglove.sdk.v1, the successor of
        # foxglove.websocket.v1 with the same messages, and refuses a client offering only the old name
        with connect(f"ws://127.0.0.1:{sink.port}", subprotocols=["foxglove.sdk.v1", "foxglove.websocket.v1"],
                     open_timeout=10) as ws:
            assert ws.subprotocol == "foxglove.sdk.v1"
            advertised, deadline = {}, time.monotonic() + 10
            while len(advertised) < 10 and time.monotonic() < deadline:
                msg = json.loads(ws.recv(timeout=5))
                if msg["op"] == "advertise":
                    advertised.update({c["topic"]: c for c in msg["channels"]})
            wanted = {"/twin/health", "/twin/arm2/posterior/body_mass:forearm", "/twin/arm2/measured/gyro",
                      "/twin/arm2/prediction/median/gyro", "/twin/arm2/prediction/bands/gyro"} | \
                {f"/twin/arm2/{k}" for k in ROBOT_CHANNELS}
            assert wanted == set(advertised)
            posterior = advertised["/twin/arm2/posterior"]
            assert posterior["encoding"] == "json" and posterior["schemaName"] == "twin_bayes.Posterior"
            assert json.loads(posterior["schema"]) == SCHEMAS["posterior"]
            ws.send(json.dumps({"op": "subscribe", "subscriptions": [{"id": 7, "channelId": posterior["id"]}]}))
            time.sleep(0.2)  # the subscription reaches the server before the next message is logged
            sink(events()[0])
            while isinstance(frame := ws.recv(timeout=5), str):
                pass
            opcode, sub_id, _ = struct.unpack_from("<BIQ", frame)
            body = json.loads(frame[13:])
            assert (opcode, sub_id) == (1, 7) and body["version"] == 3 and body["parameters"][0]["q05"] == 0.58
    finally:
        sink.close()
