"""Inline SVG charts for the report: no JavaScript, no external assets, readable when printed."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

Formatter = Callable[[float], str]

WIDTH = 760
NO_DATA = "no data for this period"
INK = "#1f2328"
MUTED = "#656d76"
GRID = "#d0d7de"
TREATED = "#0969da"
CONTROL = "#8c959f"
GOOD = "#1a7f37"
BAD = "#cf222e"
NEUTRAL = "#8c959f"
WARN = "#bf8700"
DOUBT = "#8250df"


@dataclass(frozen=True)
class Series:
    """A named run of values drawn in one colour."""

    name: str
    values: Sequence[float]
    color: str
    dashed: bool = False


def percent(value: float) -> str:
    """Format a share as a whole-number percentage (the charts' default)."""
    return "n/a" if not math.isfinite(value) else f"{value * 100:.0f}%"


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(1, chars - 1)] + "…"


_QUIET = frozenset({"axis-label", "tick", "no-data"})


def _text(x: float, y: float, text: str, *, anchor: str = "start", cls: str = "", extra: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    fill = "" if "fill=" in extra else f' fill="{MUTED if cls in _QUIET else INK}"'
    return f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}"{klass}{fill}{extra}>{_e(text)}</text>'


def _svg(name: str, title: str, height: float, body: Sequence[str], summary: str = "") -> str:
    label = f"{title}. {summary}" if summary else title
    return (
        f'<svg class="chart" data-chart="{_e(name)}" role="img" aria-label="{_e(label)}" '
        f'width="{WIDTH}" height="{_n(height)}" viewBox="0 0 {WIDTH} {_n(height)}" '
        f'preserveAspectRatio="xMinYMin meet" font-family="inherit" font-size="12">'
        f"<title>{_e(title)}</title>"
        + _text(0, 16, title, cls="chart-title", extra=' font-weight="600" font-size="14"')
        + "".join(body)
        + "</svg>"
    )


def no_data_chart(name: str, title: str, message: str = NO_DATA) -> str:
    """Return a chart frame that says there is nothing to draw."""
    body = [
        f'<rect x="0.5" y="28.5" width="{WIDTH - 1}" height="70" fill="none" stroke="{GRID}" rx="4"/>',
        _text(WIDTH / 2, 68, message, anchor="middle", cls="no-data"),
    ]
    return _svg(name, title, 100, body, message)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Return round tick values covering `[low, high]`."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        high = low + 1 if math.isfinite(low) else 1.0
        low = low if math.isfinite(low) else 0.0
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step + 1e-9) * step
    ticks: list[float] = []
    tick = start
    while tick < high + step * 0.999:
        ticks.append(round(tick, 12))
        tick += step
    return ticks


def _legend(series: Sequence[tuple[str, str, bool]], y: float) -> list[str]:
    out: list[str] = []
    x = WIDTH
    for name, color, dashed in reversed(series):
        width = 7 * len(name) + 26
        x -= width
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        out.append(
            f'<line x1="{_n(x)}" y1="{_n(y - 4)}" x2="{_n(x + 14)}" y2="{_n(y - 4)}" stroke="{color}" '
            f'stroke-width="8"{dash}/>'
        )
        out.append(_text(x + 18, y, name, extra=f' fill="{INK}"'))
    return out


def bar_chart(
    name: str,
    title: str,
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    fmt: Formatter = percent,
    tick_fmt: Formatter | None = None,
    y_label: str = "",
    x_label: str = "",
    height: float = 300,
) -> str:
    """Return grouped vertical bars, one group per category and one bar per series, values on top."""
    values = [v for s in series for v in _finite(s.values)]
    if not categories or not values:
        return no_data_chart(name, title)
    tick_fmt = tick_fmt or fmt
    left, right, top, bottom = 70.0, 16.0, 56.0, 58.0
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    # Headroom above the tallest bar keeps its value label clear of the legend.
    ticks = nice_ticks(min(0.0, *values) * 1.08, max(0.0, *values) * 1.08)
    lo, hi = ticks[0], ticks[-1]

    def y_of(v: float) -> float:
        return top + plot_h * (hi - v) / (hi - lo)

    body = _legend([(s.name, s.color, False) for s in series], 36)
    for t in ticks:
        y = y_of(t)
        body.append(
            f'<line x1="{_n(left)}" y1="{_n(y)}" x2="{_n(WIDTH - right)}" y2="{_n(y)}" stroke="{GRID}"/>'
        )
        body.append(_text(left - 6, y + 4, tick_fmt(t), anchor="end", cls="tick"))
    band = plot_w / len(categories)
    bar_w = min(48.0, band * 0.72 / max(len(series), 1))
    zero = y_of(0.0)
    for i, category in enumerate(categories):
        x0 = left + band * i + (band - bar_w * len(series)) / 2
        for j, s in enumerate(series):
            v = float(s.values[i]) if i < len(s.values) else math.nan
            x = x0 + j * bar_w
            if not math.isfinite(v):
                body.append(_text(x + bar_w / 2, zero - 4, "n/a", anchor="middle"))
                continue
            y, h = (y_of(v), zero - y_of(v)) if v >= 0 else (zero, y_of(v) - zero)
            body.append(
                f'<rect x="{_n(x + 1)}" y="{_n(y)}" width="{_n(bar_w - 2)}" height="{_n(max(h, 0.5))}" '
                f'fill="{s.color}"><title>{_e(category)}, {_e(s.name)}: {_e(fmt(v))}</title></rect>'
            )
            label_y = y - 4 if v >= 0 else y + h + 12
            body.append(
                _text(x + bar_w / 2, label_y, fmt(v), anchor="middle", cls="value", extra=' font-size="11"')
            )
        chars = max(3, int(band / 6.5))
        body.append(
            _text(
                left + band * (i + 0.5),
                top + plot_h + 16,
                _clip(category, chars),
                anchor="middle",
                cls="category",
            )
        )
    body.append(
        f'<line x1="{_n(left)}" y1="{_n(zero)}" x2="{_n(WIDTH - right)}" y2="{_n(zero)}" stroke="{INK}"/>'
    )
    body += _axis_labels(left, top, plot_w, plot_h, x_label, y_label, bottom_offset=40)
    return _svg(name, title, height, body, f"{len(categories)} groups")


def _axis_labels(
    left: float, top: float, plot_w: float, plot_h: float, x_label: str, y_label: str, bottom_offset: float
) -> list[str]:
    out: list[str] = []
    if x_label:
        out.append(
            _text(left + plot_w / 2, top + plot_h + bottom_offset, x_label, anchor="middle", cls="axis-label")
        )
    if y_label:
        cy = top + plot_h / 2
        out.append(
            _text(
                14,
                cy,
                y_label,
                anchor="middle",
                cls="axis-label",
                extra=f' transform="rotate(-90 14 {_n(cy)})"',
            )
        )
    return out


def uplift_chart(
    name: str,
    title: str,
    labels: Sequence[str],
    estimates: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    *,
    fmt: Formatter,
    bound_fmt: Formatter | None = None,
    tick_fmt: Formatter | None = None,
    x_label: str = "",
    missing: str = "n/a: no control group",
) -> str:
    """Return horizontal bars from zero to each estimate with whiskers for its interval."""
    points = _finite([*estimates, *lows, *highs])
    if not labels or not points:
        return no_data_chart(name, title)
    tick_fmt = tick_fmt or fmt
    bound_fmt = bound_fmt or fmt
    left, right, top, row = 220.0, 200.0, 48.0, 30.0
    plot_w = WIDTH - left - right
    plot_h = row * len(labels)
    height = top + plot_h + 58
    ticks = nice_ticks(min(0.0, *points), max(0.0, *points))
    lo, hi = ticks[0], ticks[-1]

    def x_of(v: float) -> float:
        return left + plot_w * (v - lo) / (hi - lo)

    body = _legend(
        [("interval above 0", GOOD, False), ("below 0", BAD, False), ("inconclusive", NEUTRAL, False)], 36
    )
    for t in ticks:
        x = x_of(t)
        body.append(
            f'<line x1="{_n(x)}" y1="{_n(top)}" x2="{_n(x)}" y2="{_n(top + plot_h)}" stroke="{GRID}"/>'
        )
        body.append(_text(x, top + plot_h + 16, tick_fmt(t), anchor="middle", cls="tick"))
    zero = x_of(0.0)
    for i, label in enumerate(labels):
        cy = top + row * i + row / 2
        body.append(_text(left - 8, cy + 4, _clip(label, 34), anchor="end", cls="category"))
        est, low, high = float(estimates[i]), float(lows[i]), float(highs[i])
        if not math.isfinite(est):
            body.append(_text(zero + 6, cy + 4, missing))
            continue
        color = GOOD if low > 0 else BAD if high < 0 else NEUTRAL
        x0, x1 = sorted((zero, x_of(est)))
        body.append(
            f'<rect x="{_n(x0)}" y="{_n(cy - 7)}" width="{_n(max(x1 - x0, 1.0))}" height="14" fill="{color}" '
            f'fill-opacity="0.75"><title>{_e(label)}: {_e(fmt(est))}</title></rect>'
        )
        interval = ""
        if math.isfinite(low) and math.isfinite(high):
            xl, xh = x_of(low), x_of(high)
            body.append(
                f'<path d="M{_n(xl)} {_n(cy)}H{_n(xh)}M{_n(xl)} {_n(cy - 6)}V{_n(cy + 6)}'
                f'M{_n(xh)} {_n(cy - 6)}V{_n(cy + 6)}" stroke="{INK}" stroke-width="1.5" fill="none"/>'
            )
            interval = f" ({bound_fmt(low)} to {bound_fmt(high)})"
        body.append(_text(WIDTH - right + 8, cy + 4, fmt(est) + interval, cls="value"))
    body.append(
        f'<line x1="{_n(zero)}" y1="{_n(top)}" x2="{_n(zero)}" y2="{_n(top + plot_h)}" stroke="{INK}"/>'
    )
    body += _axis_labels(left, top, plot_w, plot_h, x_label, "", bottom_offset=40)
    return _svg(name, title, height, body, f"{len(labels)} rows")


def funnel_chart(
    name: str,
    title: str,
    steps: Sequence[str],
    reached: Sequence[float],
    renewed_share: Sequence[float],
    cumulative_share: Sequence[float],
    *,
    count_fmt: Formatter,
    share_fmt: Formatter = percent,
) -> str:
    """Return a funnel: one centred bar per step, as wide as the contracts it reached, with renewal shares."""
    top_reach = max(_finite(reached), default=0.0)
    if not steps or top_reach <= 0:
        return no_data_chart(name, title)
    left, right, top, row = 90.0, 250.0, 52.0, 34.0
    plot_w = WIDTH - left - right
    plot_h = row * len(steps)
    height = top + plot_h + 46
    centre = left + plot_w / 2
    body = [
        _text(left - 8, top - 8, "step", anchor="end", cls="axis-label"),
        _text(centre, top - 8, "contracts reached", anchor="middle", cls="axis-label"),
        _text(WIDTH - right + 8, top - 8, "renewed before next step · cumulative", cls="axis-label"),
    ]
    for i, step in enumerate(steps):
        cy = top + row * i + row / 2
        n = float(reached[i]) if math.isfinite(float(reached[i])) else 0.0
        w = max(plot_w * n / top_reach, 2.0)
        body.append(_text(left - 8, cy + 4, _clip(step, 12), anchor="end", cls="category"))
        body.append(
            f'<rect x="{_n(centre - w / 2)}" y="{_n(cy - 12)}" width="{_n(w)}" height="24" fill="{TREATED}" '
            f'fill-opacity="{_n(0.9 - 0.5 * i / max(len(steps), 1))}" rx="2">'
            f"<title>{_e(step)}: {_e(count_fmt(n))}</title></rect>"
        )
        body.append(
            _text(centre, cy + 4, count_fmt(n), anchor="middle", cls="value", extra=' fill="#ffffff"')
        )
        shares = f"{share_fmt(float(renewed_share[i]))} · {share_fmt(float(cumulative_share[i]))}"
        body.append(_text(WIDTH - right + 8, cy + 4, shares, cls="value"))
    body.append(
        _text(
            centre,
            top + plot_h + 24,
            "bar width = contracts the step reached",
            anchor="middle",
            cls="axis-label",
        )
    )
    return _svg(name, title, height, body, f"{len(steps)} steps")


def line_chart(
    name: str,
    title: str,
    x_labels: Sequence[str],
    series: Sequence[Series],
    *,
    fmt: Formatter = percent,
    y_max: float | None = 1.0,
    step: bool = True,
    x_label: str = "",
    y_label: str = "",
    height: float = 300,
) -> str:
    """Return one line (a step line by default) per series over categorical x positions."""
    values = [v for s in series for v in _finite(s.values)]
    if not x_labels or not values:
        return no_data_chart(name, title)
    left, right, top, bottom = 70.0, 30.0, 48.0, 58.0
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    ticks = nice_ticks(0.0, y_max if y_max is not None else max(values))
    hi = ticks[-1]
    gap = plot_w / len(x_labels)

    def x_of(i: int) -> float:
        return left + gap * (i + 0.5)

    def y_of(v: float) -> float:
        return top + plot_h * (hi - v) / hi

    body = _legend([(s.name, s.color, s.dashed) for s in series], 36)
    for t in ticks:
        y = y_of(t)
        body.append(
            f'<line x1="{_n(left)}" y1="{_n(y)}" x2="{_n(WIDTH - right)}" y2="{_n(y)}" stroke="{GRID}"/>'
        )
        body.append(_text(left - 6, y + 4, fmt(t), anchor="end", cls="tick"))
    for i, label in enumerate(x_labels):
        body.append(
            _text(
                x_of(i),
                top + plot_h + 16,
                _clip(label, max(3, int(gap / 6.5))),
                anchor="middle",
                cls="category",
            )
        )

    def highest(i: int) -> float:
        return max(
            (float(s.values[i]) for s in series if math.isfinite(float(s.values[i]))), default=math.nan
        )

    for s in series:
        path: list[str] = []
        previous: float | None = None
        for i, raw in enumerate(s.values):
            v = float(raw)
            if not math.isfinite(v):
                previous = None
                continue
            x, y = x_of(i), y_of(v)
            if previous is None:
                path.append(f"M{_n(x)} {_n(y)}")
            elif step:
                path.append(f"H{_n(x)}V{_n(y)}")
            else:
                path.append(f"L{_n(x)} {_n(y)}")
            previous = v
            body.append(
                f'<circle cx="{_n(x)}" cy="{_n(y)}" r="4" fill="{s.color}">'
                f"<title>{_e(x_labels[i])}, {_e(s.name)}: {_e(fmt(v))}</title></circle>"
            )
            # The higher point of a pair is labelled above, the lower below, so labels never collide.
            dy = -9 if v >= highest(i) else 17
            body.append(
                _text(
                    x, y + dy, fmt(v), anchor="middle", cls="value", extra=f' font-size="11" fill="{s.color}"'
                )
            )
        if path:
            dash = ' stroke-dasharray="6 4"' if s.dashed else ""
            body.append(f'<path d="{"".join(path)}" fill="none" stroke="{s.color}" stroke-width="2"{dash}/>')
    base = y_of(0.0)
    body.append(
        f'<line x1="{_n(left)}" y1="{_n(base)}" x2="{_n(WIDTH - right)}" y2="{_n(base)}" stroke="{INK}"/>'
    )
    body += _axis_labels(left, top, plot_w, plot_h, x_label, y_label, bottom_offset=40)
    return _svg(name, title, height, body, f"{len(x_labels)} points")


def stacked_bar_chart(
    name: str,
    title: str,
    categories: Sequence[str],
    parts: Sequence[Series],
    *,
    count_fmt: Formatter,
    share_fmt: Formatter = percent,
    x_label: str = "",
) -> str:
    """Return one horizontal 100% bar per category split into the parts' shares, with the total beside it."""
    totals = [
        sum(max(float(p.values[i]), 0.0) for p in parts if math.isfinite(float(p.values[i])))
        for i in range(len(categories))
    ]
    if not categories or not any(t > 0 for t in totals):
        return no_data_chart(name, title)
    left, right, top, row = 120.0, 110.0, 48.0, 34.0
    plot_w = WIDTH - left - right
    plot_h = row * len(categories)
    height = top + plot_h + 58
    body = _legend([(p.name, p.color, False) for p in parts], 36)
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + plot_w * t
        body.append(
            f'<line x1="{_n(x)}" y1="{_n(top)}" x2="{_n(x)}" y2="{_n(top + plot_h)}" stroke="{GRID}"/>'
        )
        body.append(_text(x, top + plot_h + 16, share_fmt(t), anchor="middle", cls="tick"))
    for i, category in enumerate(categories):
        cy = top + row * i + row / 2
        body.append(_text(left - 8, cy + 4, _clip(category, 16), anchor="end", cls="category"))
        total = totals[i]
        if total <= 0:
            body.append(_text(left + 6, cy + 4, "n/a"))
            continue
        x = left
        for p in parts:
            v = float(p.values[i])
            if not math.isfinite(v) or v <= 0:
                continue
            w = plot_w * v / total
            body.append(
                f'<rect x="{_n(x)}" y="{_n(cy - 11)}" width="{_n(w)}" height="22" fill="{p.color}">'
                f"<title>{_e(category)}, {_e(p.name)}: {_e(count_fmt(v))} "
                f"({_e(share_fmt(v / total))})</title></rect>"
            )
            if w >= 34:
                body.append(
                    _text(
                        x + w / 2,
                        cy + 4,
                        share_fmt(v / total),
                        anchor="middle",
                        cls="value",
                        extra=' fill="#ffffff"',
                    )
                )
            x += w
        body.append(_text(WIDTH - right + 8, cy + 4, "n = " + count_fmt(total), cls="value"))
    body += _axis_labels(left, top, plot_w, plot_h, x_label, "", bottom_offset=40)
    return _svg(name, title, height, body, f"{len(categories)} rows")
