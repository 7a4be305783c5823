"""The study page: figures drawn with matplotlib (Agg), embedded in one HTML file.

:func:`write_report` writes ``REPORT_DIR/index.html`` (self-contained: every
figure a PNG in a ``data:`` URI, tables as HTML, no script, no network) and
``REPORT_DIR/figures.json`` (every number the page shows). Each section opens
with one sentence saying what it shows and the number that matters; a section
with nothing to show says why.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from ..errors import FastpathError
from ..files import temp_beside, temp_done

#: Section titles, in page order, keyed as in ``figures.json``.
SECTIONS = (
    ("traffic_mix", "Traffic mix"),
    ("balance", "Balance over backends"),
    ("where", "Where traffic goes"),
    ("state_over_time", "State over time"),
    ("change", "Change"),
    ("headroom", "Conntrack headroom"),
)


def pyplot():
    """matplotlib's pyplot on the Agg backend, or a one-line error naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise FastpathError("fastpath study draws its figures with matplotlib, which is not installed: "
                            "pip install 'fastpath[study]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _n(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.3g}"


def _table(rows: list[dict], cols: list[str]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return _n(v) if abs(v) >= 100 else f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


# --------------------------------------------------------------------------- sections

def _traffic_mix(plt, f: dict) -> tuple[str, list[str], str]:
    from matplotlib.ticker import EngFormatter

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, key in zip(axes, ("verdict", "path", "reason")):
        items = sorted(f[key].items(), key=lambda kv: -kv[1])
        if items:
            ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#4c72b0")
        else:
            ax.text(0.5, 0.5, "every flow delivered or egress", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"flows by {key}")
        ax.set_xlabel("flows")
        ax.xaxis.set_major_formatter(EngFormatter())      # 200k, not 200000 run into its neighbour
    fig.tight_layout()
    others = sorted(((k, v) for k, v in f["verdict"].items() if k != "delivered"), key=lambda kv: -kv[1])
    tail = f"; the largest other verdict is {others[0][0]} ({others[0][1]:,} flows)" if others else ""
    sentence = f"{_pct(f['delivered_share'])} of {f['flows']:,} flows were delivered{tail}."
    return sentence, [_png(fig)], ""


def _balance(plt, f: dict) -> tuple[str, list[str], str]:
    tops = f["top_services"]
    if not tops:
        return "", [], "No flow reached a service backend, so there is no spread to show."
    lbs = list(tops[0]["by_lb"])
    cols = min(3, len(tops))
    rows = (len(tops) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.0 * rows), squeeze=False)
    width = 0.8 / max(1, len(lbs))
    for ax, svc in zip(axes.flat, tops):
        for k, lb in enumerate(lbs):
            if lb in svc["by_lb"]:
                y = svc["by_lb"][lb]["flows"]
                ax.bar([i + k * width for i in range(len(y))], y, width, label=lb)
        ax.set_title(svc["service"], fontsize=9)
        ax.set_xlabel("backend")
        ax.set_ylabel("flows")
        ax.set_xticks([])
    for ax in list(axes.flat)[len(tops):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    moms = {lb: max((s["by_lb"][lb]["max_over_mean"] or 0) for s in tops if lb in s["by_lb"]) for lb in lbs}
    sentence = ("Load per backend of the busiest services under each balancer; the worst max/mean among them is "
                + ", ".join(f"{v:.2f} under {lb}" for lb, v in moms.items()) + ".")
    tables = ""
    for lb, rows_ in f["worst"].items():
        tables += (f"<h3>Worst services by imbalance, {html.escape(lb)} "
                   f"(at least {f['min_flows_per_backend']} flows per backend)</h3>")
        tables += _table(rows_, ["service", "backends", "flows", "max_over_mean", "cv"]) or \
            "<p>No service has enough flows per backend to rank.</p>"
    return sentence, [_png(fig)], tables


def _heat(plt, ax, matrix, labels, title):
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    im = ax.imshow(np.log10(1 + m), cmap="viridis", aspect="auto")
    ax.set_title(title)
    if len(labels) <= 40:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_xlabel("destination")
    ax.set_ylabel("source")
    plt.colorbar(im, ax=ax, label="log10(1 + flows)")


def _where(plt, f: dict) -> tuple[str, list[str], str]:
    if not f["forwarded_flows"]:
        return "", [], "No flow was forwarded between two nodes of the cluster."
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    _heat(plt, axes[0], f["node_flows"], f["heatmap_nodes"], "flows, node x node (busiest nodes)")
    _heat(plt, axes[1], f["zone_flows"], f["zones"], "flows, zone x zone")
    fig.tight_layout()
    bytes_note = f" ({_n(f['cross_zone_bytes'])} bytes)" if f.get("cross_zone_bytes") is not None else ""
    sentence = (f"{_pct(f['cross_node_share'])} of {f['forwarded_flows']:,} forwarded flows cross nodes and "
                f"{_pct(f['cross_zone_share'])} cross zones{bytes_note}.")
    tables = "<h3>Top node pairs</h3>" + (_table(f["top_node_pairs"], ["src_node", "dst_node", "flows", "bytes"])
                                           or "<p>No flow went from one node of the cluster to another.</p>")
    tables += "<h3>Top source pods</h3>" + (_table(f["top_source_pods"], ["pod", "flows", "bytes"])
                                            or "<p>No flow came from a pod.</p>")
    return sentence, [_png(fig)], tables


def _state(plt, f: dict) -> tuple[str, list[str], str]:
    if "why_empty" in f:
        return "", [], f"Nothing to show: {f['why_empty']}."
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.6))
    for node, s in f["busiest"].items():
        axes[0].plot(s["t"], [e / max(1, s["max"]) for e in s["entries"]], label=node)
    axes[0].set_title("conntrack occupancy (entries / max), fullest nodes")
    axes[0].set_xlabel("seconds into the trace")
    axes[0].set_ylabel("occupancy")
    axes[0].legend(fontsize=7)
    axes[1].plot(f["t"], f["drops_over_time"], label="conntrack drops")
    axes[1].plot(f["t"], f["floods_over_time"], label="FDB floods")
    axes[1].set_title("drops and floods per interval, all nodes")
    axes[1].set_xlabel("seconds into the trace")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    sentence = (f"The fullest node, {f['peak_node']}, peaked at {_pct(f['peak_occupancy'])} of its conntrack "
                f"table; {f['drops']:,} new connections were dropped for a full table and "
                f"{f['fdb_floods']:,} frames flooded for an aged-out FDB entry.")
    return sentence, [_png(fig)], ""


def _change(plt, f: dict) -> tuple[str, list[str], str]:
    if "why_empty" in f:
        return "", [], f"Nothing to show: {f['why_empty']}."
    lbs = list(f["by_lb"])
    if not any(f["by_lb"][lb]["service_flows"] for lb in lbs):
        if "events" in f:
            broken = ", ".join(f"{f['by_lb'][lb]['broken_connections']:,} under {lb}" for lb in lbs)
            return "", [], ("No service flow met a group of events while the trace played (the events fall outside "
                            "its time span, or change no service port it uses), so no flow could change backend; "
                            f"connections broken by pods going away: {broken}.")
        return "", [], "No flow of the trace went to a service, so none could change backend."
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(lbs, [100 * (f["by_lb"][lb]["changed_share"] or 0) for lb in lbs], color="#dd8452")
    ax.set_ylabel("% of service flows")
    if "events" in f:
        ax.set_title(f"flows that change backend over {Path(f['events']).name}")
        fig.tight_layout()
        sentence = ("Share of the flows of service ports a group of events changed that went to another backend "
                    "than the cluster just before the group would have given: "
                    + ", ".join(f"{_pct(f['by_lb'][lb]['changed_share'])} under {lb}" for lb in lbs)
                    + f". Connections broken by pods going away: "
                    + ", ".join(f"{f['by_lb'][lb]['broken_connections']:,} under {lb}" for lb in lbs) + ".")
    else:
        ax.set_title(f"flows that change backend against {Path(f['against']).name}")
        fig.tight_layout()
        sentence = ("Share of service flows sent to another backend when the same trace meets the other cluster: "
                    + ", ".join(f"{_pct(f['by_lb'][lb]['changed_share'])} under {lb}" for lb in lbs) + ".")
    tables = ""
    for lb in lbs:
        tables += f"<h3>{html.escape(lb)}: busiest services</h3>"
        tables += (_table(f["by_lb"][lb]["services"], ["service", "flows", "changed", "changed_share"])
                   or "<p>No service flow.</p>")
    return sentence, [_png(fig)], tables


def _headroom(plt, f: dict) -> tuple[str, list[str], str]:
    rows = f["nodes"]
    if not rows:
        return "", [], "No flow created a conntrack entry on any node."
    show = rows[:20]
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(show) + 1.2))
    ax.barh([r["node"] for r in show][::-1], [r["fill_rate_flows_per_s"] or 0 for r in show][::-1],
            color="#55a868")
    if f.get("observed_rate_flows_per_s"):
        ax.axvline(f["observed_rate_flows_per_s"], color="k", ls="--", label="the trace's rate")
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("cluster flow rate that fills the node's table (flows/s)")
    fig.tight_layout()
    first = f["first_to_fill"]
    rate = f.get("observed_rate_flows_per_s")
    sentence = (f"At this trace's mix of connection lifetimes, {first['node']}'s conntrack table "
                f"({first['conntrack_max']:,} entries) fills first, at {_n(first['fill_rate_flows_per_s'])} "
                f"flows/s across the cluster" + (f" (the trace ran at {_n(rate)} flows/s)." if rate else "."))
    tables = _table(show, ["node", "conntrack_max", "entries_per_flow", "mean_lifetime_s", "fill_rate_flows_per_s"])
    return sentence, [_png(fig)], tables


_DRAW = {"traffic_mix": _traffic_mix, "balance": _balance, "where": _where, "state_over_time": _state,
         "change": _change, "headroom": _headroom}

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1em;margin-top:1.2em}img{max-width:100%;height:auto;display:block;margin:.6em 0}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:right}
td:first-child,th:first-child{text-align:left}p.lead{font-size:1.05em}p.empty{color:#666;font-style:italic}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}"""


def render_html(figs: dict) -> str:
    """The page for ``figs`` (the :func:`~fastpath.report.figures.figures` dict), as one HTML string."""
    plt = pyplot()
    st = figs["study"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>fastpath study</title>"
             f"<style>{_STYLE}</style></head><body><h1>fastpath capacity study</h1><dl>"]
    for k in ("cluster", "trace", "against", "flows", "balancers", "seed"):
        v = st.get(k)
        if v is not None:
            parts.append(f"<dt>{k}</dt><dd>{html.escape(', '.join(v) if isinstance(v, list) else _cell(v))}</dd>")
    parts.append("</dl>")
    for key, title in SECTIONS:
        sentence, images, extra = _DRAW[key](plt, figs[key])
        parts.append(f"<section id='{key}'><h2>{html.escape(title)}</h2>")
        if sentence:
            parts.append(f"<p class='lead'>{html.escape(sentence)}</p>")
        for i, src in enumerate(images):
            parts.append(f"<img src='{src}' alt='{html.escape(title)} figure {i + 1}'>")
        if extra and not sentence:
            parts.append(f"<p class='empty'>{html.escape(extra)}</p>")
        elif extra:
            parts.append(extra)
        parts.append("</section>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(figs: dict, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/figures.json``; returns the page's path.

    Both files are written under temporary names and renamed, so a failed study
    leaves no half-written page.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FastpathError(f"{out}: the report folder is a file")
    page = render_html(figs)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("figures.json", json.dumps(figs, indent=1, allow_nan=False)), ("index.html", page)):
            fd, tmp = temp_beside(out / name)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                os.replace(tmp, out / name)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            finally:
                temp_done(tmp)
    except OSError as e:
        raise FastpathError(f"{out}: cannot write the report ({e.strerror or e})") from None
    return out / "index.html"
