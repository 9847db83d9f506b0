"""`twin-bayes watch`: a live terminal view of the service's PUB stream (or one JSON line per message).

The view shows, per robot, each parameter's posterior (mean, 90% interval, a sparkline of the
mean over the last versions), the latest prediction (median and 90% band at the end of its
horizon) and the service's health (status, problems, band coverage of the re-predicted windows and of
the forecasts, alerts).
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np

from twin_bayes.service.client import Event, ServiceError, Subscriber, TwinTimeout
from twin_bayes.service.protocol import ProtocolError

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled between the smallest and largest."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = hi - lo
    return "".join(SPARKS[0 if span <= 0 else min(len(SPARKS) - 1, int((v - lo) / span * len(SPARKS)))]
                   for v in values)


def event_json(event: Event) -> dict[str, Any]:
    """A message as a JSON-able dict: topic, type, robot_id, seq, resync, body, arrays as nested lists."""
    m = event.message
    return {"topic": event.topic, "type": m.type, "robot_id": m.robot_id, "seq": m.seq,
            "resync": event.resync, "body": dict(m.extra),
            "arrays": {k: np.asarray(v).tolist() for k, v in m.arrays.items()}}


class WatchView:
    """What the live view shows, folded from PUB events (and snapshot events on resync)."""

    def __init__(self, trend_length: int = 30) -> None:
        self.trend_length = trend_length
        self.posteriors: dict[str, dict[str, Any]] = {}
        self.trends: dict[tuple[str, str], deque[float]] = {}
        self.predictions: dict[str, dict[str, Any]] = {}
        self.health: dict[str, Any] = {}
        self.alerts: dict[tuple[str, str], dict[str, Any]] = {}
        self.messages = 0
        self.problems: deque[str] = deque(maxlen=5)  # last messages that could not be shown

    def update(self, event: Event) -> None:
        m, kind = event.message, event.topic.split("/", 1)[0]
        self.messages += 1
        if kind in ("posterior", "snapshot"):
            body = m.extra
            if body.get("version", 0) <= self.posteriors.get(m.robot_id, {}).get("version", -1):
                return  # already shown (a snapshot, or a message repeated)
            self.posteriors[m.robot_id] = {k: body.get(k) for k in ("version", "summary", "stale", "reason")}
            for name, s in (body.get("summary") or {}).items():
                trend = self.trends.setdefault((m.robot_id, name), deque(maxlen=self.trend_length))
                trend.append(float(s["mean"]))
        elif kind == "prediction":
            self.predictions[m.robot_id] = {"version": m.extra.get("posterior_version"),
                                            "quantiles": list(m.extra.get("quantiles", [])),
                                            **{k: np.asarray(v) for k, v in m.arrays.items()}}
        elif kind == "health":
            self.health = dict(m.extra)
        elif kind == "alert":
            self.alerts[(m.robot_id, str(m.extra.get("parameter")))] = dict(m.extra)

    def _posterior_table(self, rid: str):
        from rich.table import Table

        p = self.posteriors[rid]
        state = f"stale: {p['reason']}" if p.get("stale") else "current"
        table = Table(title=f"{rid}: posterior v{p['version']} ({state})", title_justify="left")
        for col in ("parameter", "mean", "5%", "95%", "trend"):
            table.add_column(col, justify="left" if col in ("parameter", "trend") else "right")
        for name, s in (p.get("summary") or {}).items():
            table.add_row(name, f"{s['mean']:.4g}", f"{s['q05']:.4g}", f"{s['q95']:.4g}",
                          sparkline(list(self.trends.get((rid, name), []))))
        return table

    def _prediction_line(self, rid: str) -> str:
        p = self.predictions[rid]
        qs = p["quantiles"]
        if "q_bands" not in p or not all(x in qs for x in (0.05, 0.5, 0.95)):
            return f"{rid}: prediction from v{p['version']}"
        bands, t = p["q_bands"][:, -1], p["t"]
        lo, mid, hi = (bands[qs.index(x)] for x in (0.05, 0.5, 0.95))
        joints = ", ".join(f"q{j} {mid[j]:.4g} [{lo[j]:.4g}, {hi[j]:.4g}]" for j in range(len(mid)))
        return f"{rid}: prediction from v{p['version']} at t = {t[-1]:.3f} s: {joints}"

    def _health_lines(self) -> list[str]:
        h = self.health
        if not h:
            return ["health: (none yet)"]
        lines = [f"health: {h.get('status')}" + "".join(f"\n  ! {p}" for p in h.get("problems", []))]
        def coverage(cal) -> str:
            return ", ".join(f"{k} {v:.2f}" for k, v in (cal or {}).items()
                             if k.startswith("coverage") and isinstance(v, float) and math.isfinite(v))

        for rid, r in (h.get("robots") or {}).items():
            model, forecast = coverage(r.get("model_calibration")), coverage(r.get("calibration"))
            lines.append(f"  {rid}: chunks {r.get('chunks')}, windows {r.get('windows')}, "
                         f"posterior v{r.get('posterior_version')}"
                         + (f", model calibration {model}" if model else "")
                         + (f", forecast {forecast}" if forecast else ""))
        return lines

    def _alert_lines(self) -> list[str]:
        return [f"ALERT {rid} {name}: P(outside {a.get('healthy')}) = {a.get('p_outside', 0):.2f}, "
                f"mean {a.get('mean', 0):.4g}, trend {sparkline([float(x) for x in a.get('trend', [])])}"
                for (rid, name), a in sorted(self.alerts.items()) if a.get("active")]

    def render(self):
        """A rich renderable of the whole view."""
        from rich.console import Group
        from rich.text import Text

        lines = [self._prediction_line(rid) for rid in sorted(self.predictions)]
        lines += self._health_lines() + self._alert_lines()
        return Group(*(self._posterior_table(rid) for rid in sorted(self.posteriors)),
                     *(Text(line) for line in lines),
                     *(Text(f"watch: {p}", style="red") for p in self.problems),
                     Text(f"{self.messages} messages", style="dim"))


def watch(subscriber: Subscriber, seconds: float | None = None, as_json: bool = False,
          out: TextIO = sys.stdout, until: Callable[[], bool] | None = None,
          sink: Callable[[Event], None] | None = None) -> WatchView:
    """Show the stream until `seconds` have passed (None: until interrupted) or `until()` is true
    (asked at least every 0.2 s); returns the final view.

    as_json: print one JSON object per message (snapshots included) instead of the live view.
    sink: also called with every event (e.g. `service.foxglove.FoxgloveSink`).
    """
    view = WatchView()
    deadline = math.inf if seconds is None else time.monotonic() + seconds

    def events():
        while (left := deadline - time.monotonic()) > 0 and not (until is not None and until()):
            try:
                for event in subscriber.recv(min(0.2, left)):
                    if sink is not None:
                        sink(event)
                    yield event
            except (ProtocolError, ServiceError, TwinTimeout) as e:  # a bad message or a failed resync
                view.problems.append(f"{type(e).__name__}: {e}")

    if as_json:
        for event in events():
            view.update(event)
            out.write(json.dumps(event_json(event)) + "\n")
            out.flush()
        return view
    from rich.console import Console
    from rich.live import Live

    with Live(view.render(), console=Console(file=out), refresh_per_second=4) as live:
        for event in events():
            view.update(event)
            live.update(view.render())
    return view
