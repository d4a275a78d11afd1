"""distkm's page on the Dask dashboard: the current fit's iterations and inertia, live.

Each Lloyd iteration publishes its record as a scheduler log event (topic
``distkm``), which any client can read back (``client.get_events("distkm")``).
A scheduler plugin adds a page beside the dashboard's own,
``http://<dashboard>/distkm``, that shows those events as a table refreshed
every two seconds: open it next to ``/status`` while a job runs.
"""

from __future__ import annotations

import html
import logging
import time

from distributed import default_client
from distributed.diagnostics.plugin import SchedulerPlugin
from tornado.web import RequestHandler

logger = logging.getLogger("distkm")

TOPIC = "distkm"
PAGE = "/distkm"


def publish(kind, record):
    """Send one record (e.g. an iteration) to the scheduler's event log, if a distributed client is active."""
    try:
        client = default_client()
    except ValueError:  # no distributed client: threads or sync scheduler
        return
    try:
        client.log_event(TOPIC, {"kind": kind, **record})
    except Exception as e:  # the page is a convenience: never fail a fit for it
        logger.debug("could not publish %s to the dashboard: %s", kind, e)


class DistkmDashboardPage(SchedulerPlugin):
    """Scheduler plugin serving ``/distkm``: the events of topic ``distkm`` as an HTML table."""

    name = "distkm-dashboard-page"

    def start(self, scheduler):
        class Handler(RequestHandler):
            def get(self):
                self.set_header("Content-Type", "text/html; charset=utf-8")
                self.write(render_page(scheduler.get_events(TOPIC)))

        app = getattr(scheduler, "http_application", None)
        if app is not None:
            app.add_handlers(r".*", [(PAGE, Handler)])


def render_page(events):
    """HTML of the page from ``(timestamp, record)`` events, newest fit first."""
    rows = []
    for stamp, record in reversed(list(events)[-500:]):
        if not isinstance(record, dict):
            continue
        kind = html.escape(str(record.get("kind", "")))
        when = time.strftime("%H:%M:%S", time.localtime(stamp))
        if kind == "iteration":
            text = (f"iteration {record.get('iteration')}: inertia {record.get('inertia', 0):.6g}, "
                    f"center shift {record.get('center_shift', 0):.3g}, {record.get('seconds', 0):.2f} s")
        else:
            text = ", ".join(f"{html.escape(str(k))} {html.escape(str(v))}" for k, v in record.items() if k != "kind")
        rows.append(f"<tr><td>{when}</td><td>{kind}</td><td>{html.escape(text)}</td></tr>")
    body = "\n".join(rows) or "<tr><td colspan=3>no distkm job has reported yet</td></tr>"
    return ("<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='2'>"
            "<title>distkm</title><style>body{font-family:sans-serif;margin:1em}td{padding:2px 10px}"
            "tr:nth-child(even){background:#f2f2f2}</style></head><body>"
            "<h2>distkm: iterations and inertia (newest first)</h2>"
            f"<table>{body}</table><p><a href='/status'>dashboard status</a></p></body></html>")


def _has_plugin(name, dask_scheduler=None):
    return name in dask_scheduler.plugins


def install(client):
    """Add the ``/distkm`` page to the client's scheduler (once; a failure is only logged)."""
    try:
        name = DistkmDashboardPage.name
        if client.run_on_scheduler(_has_plugin, name=name):  # a running scheduler keeps it between jobs
            return
        client.register_plugin(DistkmDashboardPage(), name=name)
    except Exception as e:  # e.g. distkm not importable where the scheduler runs
        logger.info("no /distkm dashboard page (%s: %s); iterations still show in the log", type(e).__name__, e)
