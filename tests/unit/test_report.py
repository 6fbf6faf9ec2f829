"""The HTML report: every chart present, self-contained, well-formed, aggregates only, empty data survives."""

from __future__ import annotations

import ast
import re
import sys
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.domain import kpis
from tasks.reporting import charts
from tasks.reporting.report import CHART_NAMES, NotAggregated, ReportData, render_report, write_report
from tests.support.factories import ROOT

AS_OF = date(2026, 11, 22)
MARKETS = ("DE", "FR")
SEGMENTS = ("high-risk", "standard")
RENEWAL_STEPS = (("T-30", -30), ("T-14", -14), ("T-7", -7), ("T-1", -1), ("T+3", 3))
LADDER = ("D+1", "D+7", "D+15", "D+30")


def synthetic_inputs(seed: int = 11, terms: int = 1600) -> dict[str, pd.DataFrame]:
    """Return realistic raw KPI inputs; their customer keys and emails must never reach the report."""
    rng = np.random.default_rng(seed)
    ids = np.arange(terms)
    market = rng.choice(MARKETS, terms)
    segment = rng.choice(SEGMENTS, terms, p=[0.3, 0.7])
    control = rng.random(terms) < 0.1
    term_end = pd.Timestamp(AS_OF) - pd.to_timedelta(rng.integers(-20, 120, terms), unit="D")
    p_on_time = np.where(segment == "high-risk", 0.55, 0.75) - np.where(control, 0.08, 0.0)
    on_time = rng.random(terms) < p_on_time
    late = ~on_time & (rng.random(terms) < 0.3)
    renew_day = np.where(on_time, -rng.integers(0, 30, terms), rng.integers(1, 40, terms))
    renewed = term_end + pd.to_timedelta(renew_day, unit="D")
    renewed = renewed.where(on_time | late)
    first_contact = (term_end - pd.Timedelta(days=30)).where(~control)
    sent = np.where(control, 0, rng.integers(1, 6, terms))
    exposures = pd.DataFrame(
        {
            "contract_key": [f"K{i:06d}" for i in ids],
            "customer_key": [f"C{i:06d}" for i in ids],
            "email": [f"person{i:06d}@example.com" for i in ids],
            "market": market,
            "playbook": "renewal-standard",
            "segment": segment,
            "group": np.where(control, "control", "treated"),
            "term_end": term_end,
            "renewed_at": renewed,
            "price_eur": rng.choice([89.0, 119.9, 240.0], terms),
            "first_contact_at": first_contact,
            "messages_sent": sent,
            "messaging_cost_eur": sent * 0.06,
            "reward_cost_eur": np.where(~control & on_time & (rng.random(terms) < 0.2), 12.0, 0.0),
        }
    )
    funnel_rows = []
    for row in exposures[~control].itertuples(index=False):
        for step, offset in RENEWAL_STEPS:
            day = row.term_end + pd.Timedelta(days=offset)
            if pd.notna(row.renewed_at) and row.renewed_at < day:
                break
            funnel_rows.append(
                {
                    "contract_key": row.contract_key,
                    "term_end": row.term_end,
                    "step": step,
                    "offset_days": offset,
                    "sent_at": day + pd.Timedelta(hours=9),
                    "renewed_at": row.renewed_at,
                }
            )
    funnel = pd.DataFrame(funnel_rows)
    n_inst = terms * 2
    due = pd.Timestamp(AS_OF) - pd.to_timedelta(rng.integers(0, 150, n_inst), unit="D")
    inst_control = rng.random(n_inst) < 0.1
    late_days = rng.choice([-3, 0, 0, 2, 5, 9, 20, 40, 400], n_inst)
    late_days = late_days + np.where(inst_control, rng.integers(0, 6, n_inst), 0)
    paid = (due + pd.to_timedelta(late_days, unit="D")).where(late_days < 300)
    reached = [
        max((s for s in LADDER if kpis.step_offset(s) <= d), default="", key=kpis.step_offset)
        for d in late_days
    ]
    instalments = pd.DataFrame(
        {
            "instalment_key": [f"I{i:06d}" for i in range(n_inst)],
            "contract_key": [f"K{i % terms:06d}" for i in range(n_inst)],
            "customer_key": [f"C{i % terms:06d}" for i in range(n_inst)],
            "market": rng.choice(MARKETS, n_inst),
            "playbook": "repayment-ladder",
            "group": np.where(inst_control, "control", "treated"),
            "due_date": due,
            "paid_date": paid,
            "amount_eur": 250.0,
            "max_step": np.where(inst_control, "", reached),
        }
    )
    n_inactive = 600
    inactive_control = rng.random(n_inactive) < 0.1
    became = pd.Timestamp(AS_OF) - pd.to_timedelta(rng.integers(0, 120, n_inactive), unit="D")
    back = rng.random(n_inactive) < np.where(inactive_control, 0.15, 0.22)
    reactivation = pd.DataFrame(
        {
            "customer_key": [f"C{i:06d}" for i in range(n_inactive)],
            "market": rng.choice(MARKETS, n_inactive),
            "playbook": "winback",
            "group": np.where(inactive_control, "control", "treated"),
            "became_inactive": became,
            "reactivated_at": (became + pd.to_timedelta(rng.integers(1, 60, n_inactive), unit="D")).where(
                back
            ),
        }
    )
    n_msg = 3000
    channel = rng.choice(["email", "sms", "whatsapp"], n_msg, p=[0.5, 0.35, 0.15])
    status = rng.choice(
        ["delivered", "read", "sent", "failed", "undelivered", "bounced", "in_doubt", "blocked"],
        n_msg,
        p=[0.55, 0.15, 0.12, 0.04, 0.04, 0.03, 0.02, 0.05],
    )
    deliveries = pd.DataFrame(
        {
            "message_key": [f"renewal-standard:K{i % terms:06d}:T-7:sms" for i in range(n_msg)],
            "market": rng.choice(MARKETS, n_msg),
            "channel": channel,
            "status": status,
            "error_code": np.where(
                np.isin(status, ["failed", "undelivered", "bounced"]),
                rng.choice(["30003", "30007", "550"], n_msg),
                "",
            ),
            "cost_eur": np.where(channel == "email", 0.001, 0.07),
        }
    )
    rewarded = exposures[exposures["reward_cost_eur"] > 0]
    rewards = pd.DataFrame(
        {
            "reward_key": [f"R{i:06d}" for i in range(len(rewarded))],
            "customer_key": rewarded["customer_key"].to_numpy(),
            "market": rewarded["market"].to_numpy(),
            "rule": "early-renewal",
            "status": rng.choice(
                ["granted", "fulfilled", "redeemed", "expired", "clawed_back"], len(rewarded)
            ),
            "cost_eur": 12.0,
            "granted_at": (rewarded["term_end"] - pd.Timedelta(days=5)).to_numpy(),
        }
    )
    return {
        "exposures": exposures,
        "funnel": funnel,
        "instalment_exposures": instalments,
        "reactivation": reactivation,
        "deliveries": deliveries,
        "rewards": rewards,
    }


def synthetic_report_data(inputs: dict[str, pd.DataFrame] | None = None) -> ReportData:
    """Return ReportData computed by the KPI functions from synthetic inputs."""
    raw = inputs if inputs is not None else synthetic_inputs()
    exposures = raw["exposures"]
    return ReportData(
        period_start=date(2026, 8, 1),
        period_end=AS_OF,
        generated_at=datetime(2026, 11, 23, 6, 0, tzinfo=UTC),
        markets=MARKETS,
        funnel=kpis.renewal_funnel(raw["funnel"], as_of=AS_OF),
        renewal_uplift=kpis.renewal_uplift(exposures, AS_OF),
        churn=kpis.churn_rate(exposures, AS_OF, by=["market"]),
        repayment_uplift=kpis.repayment_uplift(raw["instalment_exposures"], AS_OF),
        ladder=kpis.ladder_cure_rates(raw["instalment_exposures"], AS_OF),
        reactivation=kpis.reactivation_rate(raw["reactivation"], AS_OF, 30),
        reward_economics=kpis.reward_economics(exposures, raw["rewards"], AS_OF),
        reminder_to_renewal=kpis.reminder_to_renewal_days(exposures, as_of=AS_OF),
        channel_health=kpis.channel_health(raw["deliveries"]),
    )


def empty_report_data() -> ReportData:
    """Return ReportData whose KPI frames were computed from empty inputs."""
    return synthetic_report_data({name: kpis.empty_frame(kpis.SCHEMAS[name]) for name in kpis.SCHEMAS})


class _Structure(HTMLParser):
    """Collect chart names and check that every opened element is closed in order."""

    VOID = frozenset({"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.charts: list[str] = []
        self.svg_titles = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "svg":
            self.charts.append(dict(attrs).get("data-chart") or "")
        if tag == "title" and "svg" in self.stack:
            self.svg_titles += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "svg":
            self.charts.append(dict(attrs).get("data-chart") or "")

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()


def _parse(html: str) -> _Structure:
    parser = _Structure()
    parser.feed(html)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def inputs() -> dict[str, pd.DataFrame]:
    return synthetic_inputs()


@pytest.fixture(scope="module")
def html(inputs: dict[str, pd.DataFrame]) -> str:
    return render_report(synthetic_report_data(inputs))


@pytest.fixture(scope="module")
def empty_html() -> str:
    return render_report(empty_report_data())


def test_every_chart_is_present_once(html: str) -> None:
    assert sorted(_parse(html).charts) == sorted(CHART_NAMES)


def test_charts_are_accessible_images_with_titles(html: str) -> None:
    tags = re.findall(r"<svg [^>]*>", html)
    assert len(tags) == len(CHART_NAMES)
    for tag in tags:
        assert 'class="chart"' in tag and 'role="img"' in tag and 'aria-label="' in tag
    assert _parse(html).svg_titles >= len(CHART_NAMES)


def test_report_is_well_formed(html: str) -> None:
    parsed = _parse(html)
    assert parsed.errors == []
    assert parsed.stack == []


@pytest.mark.parametrize(
    "pattern", [r"<script", r"<link[^>]+href", r"url\(", r"@import", r"src=\"?https?:", r"<iframe"]
)
def test_report_loads_nothing_from_anywhere(html: str, pattern: str) -> None:
    assert not re.search(pattern, html, re.IGNORECASE)


def test_report_shows_no_customer_contract_or_contact_data(
    html: str, inputs: dict[str, pd.DataFrame]
) -> None:
    identifiers: set[str] = set()
    for frame in inputs.values():
        for column in (
            "customer_key",
            "contract_key",
            "instalment_key",
            "message_key",
            "reward_key",
            "email",
        ):
            if column in frame:
                identifiers.update(frame[column].astype(str))
    leaked = sorted(i for i in identifiers if i in html)
    assert leaked == []
    assert not re.search(r"\b[CK]\d{6}\b|@example\.com", html)


def test_report_refuses_a_frame_with_personal_columns() -> None:
    data = synthetic_report_data()
    leaky = kpis.renewal_uplift(synthetic_inputs(terms=200)["exposures"], AS_OF, by=["customer_key"])
    with pytest.raises(NotAggregated, match="customer_key"):
        render_report(
            ReportData(data.period_start, data.period_end, data.generated_at, MARKETS, renewal_uplift=leaky)
        )


def test_report_refuses_a_frame_missing_metric_columns() -> None:
    data = synthetic_report_data()
    broken = data.renewal_uplift.drop(columns=["uplift_low"])
    with pytest.raises(ValueError, match="uplift_low"):
        render_report(
            ReportData(data.period_start, data.period_end, data.generated_at, MARKETS, renewal_uplift=broken)
        )


def test_report_shows_the_period_markets_and_figures(html: str) -> None:
    assert "Aug 1, 2026" in html and "Nov 22, 2026" in html
    assert "DE, FR" in html
    assert re.search(r"\d+\.\d%", html)
    assert " pp" in html and "€" in html


def test_empty_data_renders_every_chart_as_no_data(empty_html: str) -> None:
    parsed = _parse(empty_html)
    assert parsed.errors == []
    assert sorted(parsed.charts) == sorted(CHART_NAMES)
    assert empty_html.count(charts.NO_DATA) >= len(CHART_NAMES)
    assert "n/a" in empty_html


def test_default_report_data_renders_without_frames() -> None:
    bare = ReportData(date(2026, 11, 16), date(2026, 11, 22), datetime(2026, 11, 23, 6, 0), ())
    page = render_report(bare)
    assert sorted(_parse(page).charts) == sorted(CHART_NAMES)
    assert "all markets" in page


def test_text_from_frames_is_escaped() -> None:
    data = synthetic_report_data()
    odd = data.renewal_uplift.assign(segment='<b>x</b> & "y"')
    page = render_report(
        ReportData(data.period_start, data.period_end, data.generated_at, MARKETS, renewal_uplift=odd)
    )
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page


def test_german_locale_formats_numbers_the_german_way() -> None:
    data = synthetic_report_data()
    page = render_report(
        ReportData(
            data.period_start,
            data.period_end,
            data.generated_at,
            MARKETS,
            reward_economics=data.reward_economics,
            locale="de-DE",
        )
    )
    assert 'lang="de-DE"' in page
    assert re.search(r"\d+,\d\s?%", page)


def test_write_report_creates_one_file(tmp_path: Path) -> None:
    out = write_report(synthetic_report_data(), tmp_path / "out" / "report.html")
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]


@pytest.mark.parametrize("path", sorted((ROOT / "tasks/reporting").glob("*.py")), ids=lambda p: p.name)
def test_reporting_imports_only_domain_jinja_babel_pandas_and_numpy(path: Path) -> None:
    allowed = {"tasks", "jinja2", "babel", "pandas", "numpy"}
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    bad = {
        n
        for n in names
        if n.split(".")[0] not in sys.stdlib_module_names | allowed
        or (n.startswith("tasks") and not n.startswith(("tasks.domain", "tasks.reporting")))
    }
    assert not bad


class TestCharts:
    def test_uplift_chart_draws_whiskers_and_na_rows(self) -> None:
        svg = charts.uplift_chart(
            "u",
            "Uplift",
            ["a", "b"],
            [0.05, float("nan")],
            [0.01, float("nan")],
            [0.09, float("nan")],
            fmt=charts.percent,
        )
        assert 'data-chart="u"' in svg and "<path" in svg
        assert "no control group" in svg

    def test_charts_without_values_say_no_data(self) -> None:
        nan = float("nan")
        for svg in (
            charts.bar_chart("b", "B", ["x"], [charts.Series("s", [nan], "#000")]),
            charts.uplift_chart("u", "U", [], [], [], [], fmt=charts.percent),
            charts.funnel_chart("f", "F", ["T-30"], [0], [nan], [nan], count_fmt=str),
            charts.line_chart("l", "L", [], []),
            charts.stacked_bar_chart("s", "S", ["email"], [charts.Series("d", [0], "#000")], count_fmt=str),
        ):
            assert charts.NO_DATA in svg and 'role="img"' in svg

    def test_nice_ticks_cover_the_range_with_round_steps(self) -> None:
        assert charts.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
        ticks = charts.nice_ticks(-0.03, 0.12)
        assert ticks[0] <= -0.03 and ticks[-1] >= 0.12
        assert ticks == [-0.05, 0.0, 0.05, 0.1, 0.15]


def test_frames_without_grouping_keys_render_as_one_row_labelled_all(inputs: dict[str, pd.DataFrame]) -> None:
    exposures = inputs["exposures"]
    data = ReportData(
        date(2026, 8, 1),
        AS_OF,
        datetime(2026, 11, 23, 6, 0),
        MARKETS,
        renewal_uplift=kpis.renewal_uplift(exposures, AS_OF, by=()),
        reward_economics=kpis.reward_economics(exposures, inputs["rewards"], AS_OF, by=()),
        channel_health=kpis.channel_health(inputs["deliveries"], by=()),
        funnel=kpis.renewal_funnel(inputs["funnel"], as_of=AS_OF),
    )
    page = render_report(data)
    assert _parse(page).errors == []
    assert ">all<" in page
