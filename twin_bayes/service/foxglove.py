"""The live twin for Foxglove: the service's PUB stream as JSON channels on Foxglove's WebSocket
protocol (`foxglove.websocket.v1`) and/or in an MCAP file, through `foxglove-sdk` (docs/FOXGLOVE.md).

Per robot R (all created when R is first seen; JSON encoding, each with a JSON schema):

    /twin/R/measured             one message per measured sample (the service's `telemetry/R/`): t s, q, qd, ctrl
    /twin/R/measured/<sensor>    the same per observed sensor: t s, reading (dim,)
    /twin/R/prediction/median    per prediction: t (h,) s, q (h, nq), qd (h, nv) of the 0.5 quantile
    /twin/R/prediction/bands     per prediction: quantiles (Q,), t, q (Q, h, nq), qd (Q, h, nv), and the
                                 band at the horizon's end (`end`: q05, q50, q95 per joint)
    /twin/R/prediction/median/<sensor>, /twin/R/prediction/bands/<sensor>
                                 the same of each predicted sensor's readings (`readings` (h, dim), (Q, h, dim),
                                 `end` per axis), row k read at t[k] − dt (docs/PROTOCOL.md)
    /twin/R/posterior            per version: version, stale, reason, parameters [{name, mean, sd, q05, q95}]
    /twin/R/posterior/<name>     per version, one parameter: version, mean, sd, q05, q95
    /twin/R/alerts               per alert: parameter, active, p_outside, healthy, mean
    /twin/health                 the service's health reports

Every message has `timestamp` ({sec, nsec}, Foxglove's time): the sample's or prediction's start
time for measured and predictions, else when it was received. Log times are receipt times (ns).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from twin_bayes.service.client import Event
from twin_bayes.service.protocol import SENSOR

_NUM = {"type": "number"}
_VEC = {"type": "array", "items": _NUM}
_MAT = {"type": "array", "items": _VEC}
_CUBE = {"type": "array", "items": _MAT}
_TIME = {"type": "object", "title": "time", "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}}}
_STATS = {"mean": _NUM, "sd": _NUM, "q05": _NUM, "q95": _NUM}
_END = {"type": "object", "properties": {"q05": _VEC, "q50": _VEC, "q95": _VEC}}


def _schema(title: str, **properties: Any) -> dict:
    return {"title": title, "type": "object", "properties": {"timestamp": _TIME, **properties}}


SCHEMAS = {
    "measured": _schema("twin_bayes.Measured", robot_id={"type": "string"}, t=_NUM, q=_VEC, qd=_VEC, ctrl=_VEC),
    "measured/sensor": _schema("twin_bayes.MeasuredReading", robot_id={"type": "string"}, sensor={"type": "string"},
                               t=_NUM, reading=_VEC),
    "prediction/median": _schema("twin_bayes.PredictionMedian", robot_id={"type": "string"},
                                 posterior_version={"type": "integer"}, t=_VEC, q=_MAT, qd=_MAT),
    "prediction/bands": _schema("twin_bayes.PredictionBands", robot_id={"type": "string"},
                                posterior_version={"type": "integer"}, quantiles=_VEC, t=_VEC, q=_CUBE, qd=_CUBE,
                                end=_END),
    "prediction/median/sensor": _schema("twin_bayes.PredictedReadingsMedian", robot_id={"type": "string"},
                                        sensor={"type": "string"}, posterior_version={"type": "integer"}, t=_VEC,
                                        readings=_MAT),
    "prediction/bands/sensor": _schema("twin_bayes.PredictedReadingsBands", robot_id={"type": "string"},
                                       sensor={"type": "string"}, posterior_version={"type": "integer"},
                                       quantiles=_VEC, t=_VEC, readings=_CUBE, end=_END),
    "posterior": _schema("twin_bayes.Posterior", robot_id={"type": "string"}, version={"type": "integer"},
                         stale={"type": "boolean"}, reason={"type": ["string", "null"]},
                         parameters={"type": "array", "items": {"type": "object", "properties": {
                             "name": {"type": "string"}, **_STATS}}}),
    "posterior/parameter": _schema("twin_bayes.Parameter", robot_id={"type": "string"}, name={"type": "string"},
                                   version={"type": "integer"}, **_STATS),
    "alerts": _schema("twin_bayes.Alert", robot_id={"type": "string"}, parameter={"type": "string"},
                      active={"type": "boolean"}, p_outside=_NUM, healthy=_VEC, mean=_NUM),
    "health": _schema("twin_bayes.Health", status={"type": "string"}, problems={"type": "array",
                      "items": {"type": "string"}}, robots={"type": "object"}),
}
ROBOT_CHANNELS = ("measured", "prediction/median", "prediction/bands", "posterior", "alerts")


def _stamp(t_s: float) -> dict[str, int]:
    sec = int(np.floor(t_s))
    return {"sec": sec, "nsec": min(999_999_999, int(round((t_s - sec) * 1e9)))}


def _now() -> dict[str, int]:
    ns = time.time_ns()
    return {"sec": ns // 10**9, "nsec": ns % 10**9}


def _end(quantiles: list[float], bands: np.ndarray) -> dict[str, list[float]]:
    """{q05, q50, q95} (those among the quantiles): bands (Q, h, n) at the horizon's end, per column."""
    return {f"q{round(x * 100):02d}": bands[quantiles.index(x), -1].tolist() for x in (0.05, 0.5, 0.95)
            if x in quantiles}


def _sensors(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{name: array} of a message's `sensor:<name>` arrays."""
    return {k.removeprefix(SENSOR): np.asarray(v, float) for k, v in arrays.items() if k.startswith(SENSOR)}


def _jsonable(x: Any) -> Any:
    """Non-finite floats (which JSON cannot carry) as None."""
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


class FoxgloveSink:
    """Logs PUB events on the channels above; `port` (0: a free one) serves them over WebSocket on
    `host`, `mcap` records them. Call `close()` when done (stops the server, finishes the file)."""

    def __init__(self, port: int | None = None, mcap: str | Path | None = None, host: str = "127.0.0.1") -> None:
        import foxglove

        if port is None and mcap is None:
            raise ValueError("give a WebSocket port, an MCAP file or both")
        self._fox = foxglove
        self.context = foxglove.Context()
        self.writer = None if mcap is None else foxglove.open_mcap(str(mcap), allow_overwrite=True,
                                                                    context=self.context)
        self.server = None if port is None else foxglove.start_server(name="twin-bayes", host=host, port=port,
                                                                      context=self.context)
        self.channels: dict[str, Any] = {}
        self.logged: dict[str, int] = {}
        self._channel("/twin/health", "health")

    @property
    def port(self) -> int | None:
        """The WebSocket server's port (None without a server)."""
        return None if self.server is None else self.server.port

    def _channel(self, topic: str, kind: str):
        if topic not in self.channels:
            self.channels[topic] = self._fox.Channel(topic, schema=SCHEMAS[kind], context=self.context)
        return self.channels[topic]

    def _robot(self, rid: str) -> None:
        for kind in ROBOT_CHANNELS:
            self._channel(f"/twin/{rid}/{kind}", kind)

    def _log(self, topic: str, kind: str, msg: Mapping[str, Any]) -> None:
        self._channel(topic, kind).log(_jsonable(dict(msg)), log_time=time.time_ns())
        self.logged[topic] = self.logged.get(topic, 0) + 1

    def __call__(self, event: Event) -> None:
        """Log one PUB event (a snapshot event counts as a posterior)."""
        kind, m = event.topic.split("/", 1)[0], event.message
        if kind == "health":
            for rid in m.extra.get("robots") or {}:
                self._robot(rid)
            self._log("/twin/health", "health", {"timestamp": _now(), **m.extra})
            return
        rid = m.robot_id
        self._robot(rid)
        if kind in ("posterior", "snapshot"):
            self._posterior(rid, m.extra)
        elif kind == "prediction" and {"t", "q_bands", "qd_bands"} <= set(m.arrays):
            self._prediction(rid, m)
        elif kind == "alert":
            body = m.extra
            self._log(f"/twin/{rid}/alerts", "alerts", {"timestamp": _now(), "robot_id": rid,
                      **{k: body.get(k) for k in ("parameter", "active", "p_outside", "healthy", "mean")}})
        elif kind == "telemetry":
            self._measured(rid, m)

    def _measured(self, rid: str, m) -> None:
        a, sensors = m.arrays, _sensors(m.arrays)
        for k in range(m.n):
            t = float(a["t"][k])
            head = {"timestamp": _stamp(t), "robot_id": rid, "t": t}
            self._log(f"/twin/{rid}/measured", "measured",
                      {**head, **{f: np.asarray(a[f][k], float).tolist() for f in ("q", "qd", "ctrl")}})
            for name, r in sensors.items():
                self._log(f"/twin/{rid}/measured/{name}", "measured/sensor", {**head, "sensor": name,
                                                                               "reading": r[k].tolist()})

    def _posterior(self, rid: str, body: Mapping[str, Any]) -> None:
        summary = body.get("summary") or {}
        version, stamp = body.get("version"), _now()
        params = [{"name": n, **{k: s.get(k) for k in _STATS}} for n, s in summary.items()]
        self._log(f"/twin/{rid}/posterior", "posterior", {"timestamp": stamp, "robot_id": rid, "version": version,
                  "stale": body.get("stale"), "reason": body.get("reason"), "parameters": params})
        for p in params:
            self._log(f"/twin/{rid}/posterior/{p['name']}", "posterior/parameter",
                      {"timestamp": stamp, "robot_id": rid, "version": version, **p})

    def _prediction(self, rid: str, m) -> None:
        t, q, qd = (np.asarray(m.arrays[k], float) for k in ("t", "q_bands", "qd_bands"))
        quantiles = [float(x) for x in m.extra.get("quantiles", [])]
        head = {"timestamp": _stamp(float(t[0])), "robot_id": rid,
                "posterior_version": m.extra.get("posterior_version"), "t": t.tolist()}
        if 0.5 in quantiles:
            i = quantiles.index(0.5)
            self._log(f"/twin/{rid}/prediction/median", "prediction/median",
                      {**head, "q": q[i].tolist(), "qd": qd[i].tolist()})
        self._log(f"/twin/{rid}/prediction/bands", "prediction/bands",
                  {**head, "quantiles": quantiles, "q": q.tolist(), "qd": qd.tolist(), "end": _end(quantiles, q)})
        for name, r in _sensors(m.arrays).items():
            self._readings(f"/twin/{rid}/prediction", name, {**head, "sensor": name}, quantiles, r)

    def _readings(self, prefix: str, name: str, head: dict, quantiles: list[float], bands: np.ndarray) -> None:
        """A sensor's predicted readings, bands (Q, h, dim): median and bands as the joints' under `prefix`."""
        if 0.5 in quantiles:
            self._log(f"{prefix}/median/{name}", "prediction/median/sensor",
                      {**head, "readings": bands[quantiles.index(0.5)].tolist()})
        self._log(f"{prefix}/bands/{name}", "prediction/bands/sensor",
                  {**head, "quantiles": quantiles, "readings": bands.tolist(), "end": _end(quantiles, bands)})

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.writer is not None:
            self.writer.close()
