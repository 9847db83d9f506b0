"""`twin-bayes watch` on a real PUB socket: JSON lines and the live view's content."""
import io
import json
import threading

import numpy as np
import zmq
from rich.console import Console

from twin_bayes.service import protocol
from twin_bayes.service.client import Subscriber
from twin_bayes.service.watch import sparkline, watch

SUMMARY = {"body_mass:forearm": {"mean": 0.6, "sd": 0.01, "q05": 0.58, "q50": 0.6, "q95": 0.62}}
HEALTH = {"status": "degraded", "problems": ["arm2: silent for 12.0 s"],
          "robots": {"arm2": {"chunks": 9, "windows": 2, "posterior_version": 2,
                              "calibration": {"coverage_90": 0.875, "coverage_50": None}}}}
ALERT = {"parameter": "dof_damping:shoulder", "healthy": [0.0, 0.15], "p_outside": 0.97, "mean": 0.75,
         "active": True, "trend": [0.25, 0.5, 0.75]}


def messages():
    """A service's PUB stream: (topic kind, robot_id, builder of the frames for a sequence number)."""
    bands = np.stack([np.full((4, 2), x) for x in (-1.0, -0.5, 0.0, 0.5, 1.0)])
    for version in (1, 2):
        summary = {k: {**v, "mean": v["mean"] * version} for k, v in SUMMARY.items()}
        yield "posterior", "arm2", lambda s, v=version, m=summary: protocol.posterior("arm2", s, v, m, stale=False)
    yield "prediction", "arm2", lambda s: protocol.prediction(
        "arm2", s, 2, {"t": np.arange(1, 5) * 0.002, "q_bands": bands}, quantiles=[0.05, 0.25, 0.5, 0.75, 0.95])
    yield "health", protocol.FLEET, lambda s: protocol.reply(protocol.FLEET, s, "health", **HEALTH)
    yield "alert", "arm2", lambda s: protocol.reply("arm2", s, "alert", **ALERT)


def publish_until(stop: threading.Event, pub: zmq.Socket) -> None:
    seq = 0
    while not stop.wait(0.02):  # repeat: a SUB joining late misses the first messages
        for kind, rid, build in messages():
            seq += 1
            pub.send_multipart([protocol.topic(kind, rid), *build(seq)])


def test_json_lines_and_live_view_show_posterior_prediction_health_and_alerts():
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.linger = 0
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    sub = Subscriber(endpoint)
    stop = threading.Event()
    thread = threading.Thread(target=publish_until, args=(stop, pub))
    thread.start()
    out = io.StringIO()
    try:
        view = watch(sub, seconds=1.0, as_json=True, out=out)
    finally:
        stop.set()
        thread.join()
        sub.close()
        pub.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {x["topic"] for x in lines} == {"posterior/arm2/", "prediction/arm2/", "health/*/", "alert/arm2/"}
    assert view.messages == len(lines)
    assert view.posteriors["arm2"]["version"] == 2
    assert list(view.trends[("arm2", "body_mass:forearm")]) in ([0.6, 1.2], [1.2])  # v1 may come too early
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(view.render())
    text = console.export_text()
    for expected in ("arm2: posterior v2", "body_mass:forearm", "1.2", "q0 0 [-1, 1]", "health: degraded",
                     "silent for 12.0 s", "coverage_90 0.88", "ALERT arm2 dof_damping:shoulder", "▁▅█"):
        assert expected in text, expected


def test_sparkline_scales_between_min_and_max():
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert sparkline([2.0, 2.0]) == "▁▁"
    assert sparkline([]) == ""
