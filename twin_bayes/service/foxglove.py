"""The live twin for Foxglove: the service's PUB stream as JSON channels on Foxglove's WebSocket
protocol (`foxglove.websocket.v1`) and/or in an MCAP file, through `foxglove-sdk` (docs/FOXGLOVE.md).

Per robot R (all created when R is first seen; JSON encoding, each with a JSON schema):

    /twin/R/measured             one message per measured sample (when the service publishes
                                 `telemetry/R/`): t s, q, qd, ctrl
    /twin/R/prediction/median    per prediction: t (h,) s, q (h, nq), qd (h, nv) of the 0.5 quantile
    /twin/R/prediction/bands     per prediction: quantiles (Q,), t, q (Q, h, nq), qd (Q, h, nv), and the
                                 band at the horizon's end (`end`: q05, q50, q95 per joint)
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

_NUM = {"type": "number"}
_VEC = {"type": "array", "items": _NUM}
_MAT = {"type": "array", "items": _VEC}
_CUBE = {"type": "array", "items": _MAT}
_TIME = {"type": "object", "title": "time", "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}}}
_STATS = {"mean": _NUM, "sd": _NUM, "q05": _NUM, "q95": _NUM}


def _schema(title: str, **properties: Any) -> dict:
    return {"title": title, "type": "object", "properties": {"timestamp": _TIME, **properties}}


SCHEMAS = {
    "measured": _schema("twin_bayes.Measured", robot_id={"type": "string"}, t=_NUM, q=_VEC, qd=_VEC, ctrl=_VEC),
    "prediction/median": _schema("twin_bayes.PredictionMedian", robot_id={"type": "string"},
                                 posterior_version={"type": "integer"}, t=_VEC, q=_MAT, qd=_MAT),
    "prediction/bands": _schema("twin_bayes.PredictionBands", robot_id={"type": "string"},
                                posterior_version={"type": "integer"}, quantiles=_VEC, t=_VEC, q=_CUBE, qd=_CUBE,
                                end={"type": "object", "properties": {"q05": _VEC, "q50": _VEC, "q95": _VEC}}),
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
            a = m.arrays
            for k in range(m.n):
                self._log(f"/twin/{rid}/measured", "measured", {
                    "timestamp": _stamp(float(a["t"][k])), "robot_id": rid, "t": float(a["t"][k]),
                    **{f: np.asarray(a[f][k], float).tolist() for f in ("q", "qd", "ctrl")}})

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
        end = {f"q{round(x * 100):02d}": q[quantiles.index(x), -1].tolist()
               for x in (0.05, 0.5, 0.95) if x in quantiles}
        self._log(f"/twin/{rid}/prediction/bands", "prediction/bands",
                  {**head, "quantiles": quantiles, "q": q.tolist(), "qd": qd.tolist(), "end": end})

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.writer is not None:
            self.writer.close()
