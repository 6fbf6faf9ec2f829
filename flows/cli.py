"""The `renewals` command line (Typer + Rich)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="renewals",
    help="Renewal, repayment and retention cycles on Prefect 3.",
    no_args_is_help=True,
    add_completion=False,
)
run_app = typer.Typer(help="Run a flow once, in this process.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the Renewals database.", no_args_is_help=True)
consent_app = typer.Typer(help="Compliance tools: why a message was (not) sent.", no_args_is_help=True)
webhooks_app = typer.Typer(help="The delivery-tracking webhook service.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(run_app, name="run")
app.add_typer(db_app, name="db")
app.add_typer(consent_app, name="consent")
limits_app = typer.Typer(
    help="Prefect global concurrency limits that share each sender's rate ceiling between dispatchers.",
    no_args_is_help=True,
)
app.add_typer(limits_app, name="limits")

out = Console()
err = Console(stderr=True)


def _settings() -> Any:
    from config.settings import get_settings

    return get_settings()


def _parse_markets(markets: str | None) -> list[str] | None:
    return [m.strip().upper() for m in markets.split(",") if m.strip()] if markets else None


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Create or migrate the database schema (Alembic) at RENEWALS_DATABASE_URL (default: SQLite in var/)."""
    from tasks.runtime import get_runtime
    from tasks.store.migrate import current_revision, upgrade

    engine = get_runtime().engine
    upgrade(engine, revision)
    err.print(
        f"database at revision {current_revision(engine)} ({engine.url.render_as_string(hide_password=True)})"
    )


@app.command("demo-data")
def demo_data(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the entity files into.")],
    customers: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed; same seed and date give identical files.")] = 42,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Day the portfolio is built around (YYYY-MM-DD); default today."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
) -> None:
    """Write a realistic multi-market demo portfolio (about 1% dirty rows) as one file per entity."""
    from config.loader import load_markets
    from tasks.sources.demo_data import generate_portfolio, write_portfolio

    if fmt not in {"csv", "parquet"}:
        raise typer.BadParameter("use csv or parquet", param_hint="--format")
    day = date.fromisoformat(as_of) if as_of else date.today()
    markets = load_markets(_settings().config_dir)
    frames = generate_portfolio(customers, seed, day, markets)
    paths = write_portfolio(frames, out_dir, fmt)
    table = Table(title=f"Demo portfolio: {customers:,} customers, seed {seed}, as of {day}")
    table.add_column("entity")
    table.add_column("rows", justify="right")
    table.add_column("file")
    for entity, path in paths.items():
        table.add_row(entity.value, f"{len(frames[entity]):,}", str(path))
    err.print(table)


def _run_cycle(
    as_of: date | None, markets: list[str] | None, dry_run: bool, playbook: str, shards: int = 1
) -> dict[str, Any]:
    from flows.renewal_cycle import renewal_cycle

    return renewal_cycle(as_of=as_of, markets=markets, dry_run=dry_run, playbook=playbook, shards=shards)


@run_app.command("renewal-cycle")
def run_renewal_cycle(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Cycle day (YYYY-MM-DD); default today.")
    ] = None,
    markets: Annotated[
        str | None, typer.Option(help="Comma-separated market codes, e.g. DE,FR; default all configured.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan, gate and render, but send nothing.")
    ] = False,
    playbook: Annotated[
        str,
        typer.Option(
            help='A playbook id in config/playbooks, or "all" (config/cycle.yaml, in priority order).'
        ),
    ] = "all",
    shards: Annotated[
        int,
        typer.Option(
            min=1,
            help="Split the customers into this many shards, each its own flow run (on the work pool of "
            "RENEWALS_SHARD_DEPLOYMENT when set, else one after another here).",
        ),
    ] = 1,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")
    ] = False,
) -> None:
    """Run one renewal cycle now, in this process, and show what each stage did."""
    if as_json:
        _logs_to_stderr()
    try:
        summary = _run_cycle(
            date.fromisoformat(as_of) if as_of else None, _parse_markets(markets), dry_run, playbook, shards
        )
    except Exception as exc:
        err.print(f"[bold red]Stopped before sending:[/] {exc}")
        raise typer.Exit(code=1) from exc
    if as_json:
        sys.stdout.write(json.dumps(summary, sort_keys=True, default=str) + "\n")
    else:
        print_summary(summary)


def _logs_to_stderr() -> None:
    for handler in logging.getLogger("prefect").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)


def print_summary(summary: dict[str, Any]) -> None:
    """Print the cycle summary as Rich tables."""
    from tasks.domain.summary import stage_rows

    title = (
        f"Renewal cycle {summary['cycle_id']} - {', '.join(summary['markets'])} - {summary['as_of']} - "
        f"{summary['playbook']}{' (dry run)' if summary.get('dry_run') else ''}"
    )
    table = Table(title=title, show_lines=False)
    table.add_column("stage", style="bold")
    table.add_column("what happened")
    table.add_column("detail", style="dim")
    table.add_column("time", justify="right")
    for stage, what, detail, secs in stage_rows(summary):
        table.add_row(stage, what, detail, secs)
    out.print(table)
    for heading, key in (
        ("messages by channel and status", "per_channel"),
        ("decisions by reason", "per_reason"),
    ):
        data = summary.get(key) or {}
        if data:
            t = Table(title=heading)
            t.add_column(heading.split(" by ")[1])
            t.add_column("count", justify="right")
            for k, v in data.items():
                t.add_row(k, f"{v:,}")
            out.print(t)
    out.print(f"[bold]{summary.get('headline', '')}[/]")


@run_app.command("train-risk-models")
def run_train_risk_models(
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Train on history up to this day (YYYY-MM-DD); default today."),
    ] = None,
    markets: Annotated[
        str | None,
        typer.Option(help="Comma-separated market codes whose history to learn from; default all."),
    ] = None,
    no_promote: Annotated[
        bool, typer.Option("--no-promote", help="Store the models as candidates; never make one active.")
    ] = False,
) -> None:
    """Train the renewal and repayment risk models; promote each only if it ranks better (docs/models.md)."""
    from flows.train_risk_models import train_risk_models

    try:
        result = train_risk_models(
            as_of=date.fromisoformat(as_of) if as_of else None,
            markets=_parse_markets(markets),
            promote=not no_promote,
        )
    except Exception as exc:
        err.print(f"[bold red]Training stopped:[/] {exc}")
        raise typer.Exit(code=1) from exc
    print_models(result)


def print_models(result: dict[str, Any]) -> None:
    """Print what a train-risk-models run measured and decided, per model."""
    table = Table(title=f"Risk models trained on history up to {result['as_of']}")
    for column in ("model", "version", "status", "ROC AUC", "scorecard", "PR AUC", "Brier"):
        table.add_column(column, overflow="fold")
    for kind in ("renewal", "repayment"):
        m = result[kind]
        card = m.get("scorecard_roc_auc")
        table.add_row(
            kind,
            m["version"],
            m["status"],
            f"{m['roc_auc']:.3f}",
            "" if card is None else f"{card:.3f}",
            f"{m['pr_auc']:.3f}",
            f"{m['brier']:.4f}",
        )
    out.print(table)
    for kind in ("renewal", "repayment"):
        out.print(f"{kind}: {result[kind]['reason']}", soft_wrap=True)


@run_app.command("dsr-export")
def run_dsr_export(customer: Annotated[str, typer.Option(help="Customer key.")]) -> None:
    """Answer an access request (GDPR Art. 15): write everything held about the customer to a JSON file."""
    from flows.dsr_export import dsr_export

    result = dsr_export(customer_key=customer)
    out.print(f"export written to {result['file']} (deadline {result['deadline']})")


@run_app.command("dsr-erase")
def run_dsr_erase(
    customer: Annotated[str, typer.Option(help="Customer key.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: erasure cannot be undone.")] = False,
) -> None:
    """Answer an erasure request (GDPR Art. 17): remove personal data, keep legal records tagged, suppress."""
    if not yes:
        raise typer.BadParameter("erasure cannot be undone; repeat with --yes", param_hint="--yes")
    from flows.dsr_erase import dsr_erase

    result = dsr_erase(customer_key=customer)
    out.print_json(data={k: v for k, v in result.items() if k != "kept_for"})


@run_app.command("retention-purge")
def run_retention_purge(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Purge as of this UTC date; default now.")
    ] = None,
) -> None:
    """Purge message content and stale contact details past the periods in config/retention.yaml."""
    from flows.retention_purge import retention_purge

    out.print_json(data=retention_purge(as_of=as_of))


@run_app.command("consent-audit")
def run_consent_audit(
    start: Annotated[
        str | None, typer.Option("--from", help="First day (YYYY-MM-DD); default last month.")
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="Day after the last (YYYY-MM-DD).")] = None,
) -> None:
    """Write the consent audit (decisions by market, purpose, channel, reason; anomalies) as CSV."""
    from flows.consent_audit import consent_audit

    result = consent_audit(
        start=date.fromisoformat(start) if start else None, end=date.fromisoformat(end) if end else None
    )
    out.print_json(data=result)


@run_app.command("grant-rewards")
def run_grant_rewards(
    as_of: Annotated[
        str | None, typer.Option(help="Day the rewards are earned by (YYYY-MM-DD); default today.")
    ] = None,
    markets: Annotated[str | None, typer.Option(help="Comma-separated market codes; default all.")] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Evaluate the rules; grant, fulfil and send nothing.")
    ] = False,
) -> None:
    """Run grant-rewards: claw back, expire, grant within budget, fulfil, notify; a rerun grants nothing."""
    from flows.grant_rewards import grant_rewards

    summary = grant_rewards(
        as_of=date.fromisoformat(as_of) if as_of else None, markets=_parse_markets(markets), dry_run=dry_run
    )
    out.print_json(data=summary)


@app.command("import-vouchers")
def import_vouchers(
    path: Annotated[Path, typer.Argument(help="CSV with code, rule, market[, valid_until].")],
) -> None:
    """Import voucher codes into the pool; codes already known are skipped, a bad row stops the import."""
    from tasks.fulfilment.vouchers import VoucherFileError
    from tasks.rewards import import_vouchers as run_import

    try:
        counts = run_import(path)
    except VoucherFileError as exc:
        err.print(f"[bold red]Not imported:[/] {exc}")
        raise typer.Exit(code=1) from exc
    out.print_json(data=counts)


@run_app.command("release-deferred")
def run_release_deferred(
    markets: Annotated[str | None, typer.Option(help="Comma-separated market codes; default all.")] = None,
) -> None:
    """Send deferred messages whose allowed contact slot has come (after a fresh consent check)."""
    from flows.release_deferred import release_deferred

    print_summary(release_deferred(markets=_parse_markets(markets)))


@consent_app.command("explain")
def consent_explain(
    customer_key: Annotated[str, typer.Argument(help="The customer's key (never an email or phone).")],
    cycle: Annotated[
        int | None, typer.Option("--cycle", help="Cycle id; default the latest with messages.")
    ] = None,
) -> None:
    """Explain, per message, the consent decision: outcome, rules, policy version, consent record, opt-out."""
    from tasks.explain import explain_customer
    from tasks.runtime import get_runtime

    with get_runtime().engine.connect() as conn:
        chain = explain_customer(conn, customer_key, cycle)
    if not chain:
        err.print(f"no planned messages for {customer_key}" + (f" in cycle {cycle}" if cycle else ""))
        raise typer.Exit(code=1)
    for msg in chain:
        out.print(
            f"[bold]{msg['what']}[/] — {msg['status']}" + (f" at {msg['sent_at']}" if msg["sent_at"] else "")
        )
        out.print(f"  message key: {msg['message_key']}")
        for dec in msg["decisions"]:
            out.print(
                f"  {dec['stage']} decision {dec['decided_at']}: "
                f"[bold]{dec['outcome']}[/] ({dec['reason']}) — {dec['why']}"
            )
            if dec["deferred_until"]:
                out.print(f"    deferred until {dec['deferred_until']}")
            for rule in dec["rules"]:
                out.print(f"    rule {rule}")
            out.print(f"    policy version {dec['policy_version']}")
            if dec["notes"]:
                out.print(f"    note: {dec['notes']}")
            out.print(f"    consent record: {dec['consent'] or 'none used (contract basis or no record)'}")
        out.print(f"  opt-out: {msg['opt_out']}\n")


@app.command("worklist")
def worklist(
    market: Annotated[str | None, typer.Option(help="Only this market (e.g. DE).")] = None,
    owner: Annotated[str | None, typer.Option(help="Only this owner team (config/worklist.yaml).")] = None,
    cycle: Annotated[int | None, typer.Option(help="Cycle id; default the latest completed cycle.")] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Also write the rows to this CSV file.")
    ] = None,
    with_contacts: Annotated[
        bool,
        typer.Option("--with-contacts", help="Add names, email and phone to the CSV (never shown here)."),
    ] = False,
) -> None:
    """Show the customers the playbooks escalate to a specialist, highest value at risk first."""
    from tasks.domain.frames import records
    from tasks.runtime import get_runtime
    from tasks.store.repository import latest_cycle
    from tasks.worklist import build_worklist, export_csv, filter_worklist, recent

    rt = get_runtime()
    with rt.engine.connect() as conn:
        cycle_id = cycle or latest_cycle(conn)
        if cycle_id is None:
            err.print("no completed cycle yet; run `renewals run renewal-cycle` first")
            raise typer.Exit(code=1)
        books = [rt.playbook(p) for p in rt.cycle.playbooks]
        rows = filter_worklist(
            build_worklist(conn, cycle_id, books, rt.worklist, rt.fx.eur_per_unit, recent(7)), market, owner
        )
        if csv_path is not None:
            export_csv(conn, rows, csv_path, with_contacts)
            err.print(
                f"{len(rows):,} rows written to {csv_path}"
                + (" with contact details" if with_contacts else "")
            )
    table = Table(title=f"Worklist, cycle {cycle_id}: {len(rows):,} escalations")
    for column in (
        "customer_key",
        "market",
        "owner",
        "reason",
        "detail",
        "value_at_risk_eur",
        "risk_in_words",
    ):
        table.add_column(column.replace("_", " "), overflow="fold")
    for row in records(rows.head(200)):
        value = "" if row["value_at_risk_eur"] is None else f"{float(row['value_at_risk_eur']):,.2f}"
        cells = [str(row[c] or "") for c in ("customer_key", "market", "owner", "reason", "detail")]
        table.add_row(*cells, value, str(row["risk_in_words"] or ""))
    out.print(table)


@app.command("report")
def report(
    start: Annotated[
        str | None, typer.Option("--from", help="First cycle day (YYYY-MM-DD); default 91 days ago.")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Last cycle day (YYYY-MM-DD); default today.")
    ] = None,
    report_out: Annotated[
        Path | None, typer.Option("--out", help="HTML file to write; default var/reports/...")
    ] = None,
    markets: Annotated[str | None, typer.Option(help="Comma-separated market codes; default all.")] = None,
    as_of: Annotated[
        str | None, typer.Option(help="Day outcomes are measured on (YYYY-MM-DD); default today.")
    ] = None,
    locale: Annotated[str, typer.Option(help="Locale of numbers and dates, e.g. de-DE.")] = "en",
) -> None:
    """Run the kpi-report flow: write one self-contained HTML report of the cycles run in a period."""
    from flows.kpi_report import kpi_report

    result = kpi_report(
        start=date.fromisoformat(start) if start else None,
        end=date.fromisoformat(end) if end else None,
        markets=_parse_markets(markets),
        as_of=date.fromisoformat(as_of) if as_of else None,
        out=str(report_out) if report_out else None,
        locale=locale,
    )
    table = Table(title="Treated vs holdout (pooled)")
    for column in ("kpi", "treated", "treated_rate", "control", "control_rate", "uplift", "interval_95"):
        table.add_column(column, justify="left" if column == "kpi" else "right")
    for row in result["headline"]:
        table.add_row(*(str(v) for v in row.values()))
    out.print(table)
    out.print(f"Report: {result['path']}", soft_wrap=True)


@app.command("timeline")
def timeline(customer_key: Annotated[str, typer.Argument(help="The customer's key.")]) -> None:
    """Show everything that happened to one customer: segments, decisions, messages, deliveries, consents."""
    from tasks.domain.frames import records
    from tasks.runtime import get_runtime
    from tasks.timeline import customer_timeline

    with get_runtime().engine.connect() as conn:
        events = customer_timeline(conn, customer_key)
    if events.empty:
        err.print(f"nothing recorded for {customer_key}")
        raise typer.Exit(code=1)
    table = Table(title=f"Timeline of {customer_key}")
    for column in ("at", "kind", "what", "detail"):
        table.add_column(column, overflow="fold")
    for row in records(events):
        table.add_row(f"{row['at']:%Y-%m-%d %H:%M}", str(row["kind"]), str(row["what"]), str(row["detail"]))
    out.print(table)


@webhooks_app.command("serve")
def webhooks_serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Serve Twilio status callbacks and inbound replies and SendGrid events (signatures required)."""
    import uvicorn

    from flows.webhooks import create_app
    from tasks.runtime import get_runtime

    runtime = get_runtime()
    uvicorn.run(create_app(runtime.settings, runtime.engine), host=host, port=port, log_level="info")


@app.command("demo")
def demo(
    customers: Annotated[int, typer.Option(min=100, help="Customers in the demo portfolio.")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed of the demo portfolio.")] = 42,
) -> None:
    """Make a demo portfolio (once a day), train risk models, run a cycle, grant rewards, write the report."""
    from config.loader import load_markets
    from tasks.runtime import get_runtime
    from tasks.sources.demo_data import generate_portfolio, write_portfolio
    from tasks.store.migrate import upgrade

    settings = _settings()
    day = date.today()
    data_dir = settings.resolved_source_dir
    stamp = data_dir / ".generated"
    wanted = f"{customers}:{seed}:{day.isoformat()}"
    if not stamp.exists() or stamp.read_text() != wanted:
        frames = generate_portfolio(customers, seed, day, load_markets(settings.config_dir))
        write_portfolio(frames, data_dir, "csv")
        stamp.write_text(wanted)
        err.print(f"demo portfolio: {customers:,} customers written to {data_dir}")
    else:
        err.print(f"demo portfolio for {day} already in {data_dir}")
    upgrade(get_runtime().engine)
    from tasks.train_models import has_active_model, load_history_for_training

    if not has_active_model("renewal"):
        # The first demo run has no model yet: load the history and train once, so the cycle scores with it.
        from flows.train_risk_models import train_risk_models

        try:
            load_history_for_training(day)
            print_models(train_risk_models(as_of=day))
        except ValueError as exc:
            err.print(f"no risk model trained ({exc}); the cycle scores with the scorecard")
    try:
        summary = _run_cycle(day, None, False, "all")
    except Exception as exc:
        err.print(f"[bold red]Stopped before sending:[/] {exc}")
        raise typer.Exit(code=1) from exc
    print_summary(summary)
    from flows.grant_rewards import grant_rewards
    from flows.kpi_report import default_period, kpi_report

    print_rewards(grant_rewards(as_of=day))
    start, end = default_period(day)
    report_file = kpi_report(start=start, end=end, as_of=day)["path"]
    out.print(
        f"\nOutbox (what would have been sent): {settings.resolved_outbox_dir}\n"
        f"Database: {settings.resolved_database_url}\n"
        f"KPI report (open in a browser): {report_file}\n"
        f"{prefect_ui_hint()}\n"
        "Specialists: `renewals worklist`, `renewals timeline CUSTOMER_KEY`, `renewals consent explain ...`\n"
        "Run `make demo` again today: nothing new is sent, no reward is granted twice.",
        soft_wrap=True,
    )


def prefect_ui_hint() -> str:
    """Return where the demo's flow runs and artifacts can be seen in the Prefect UI."""
    from prefect.settings import PREFECT_HOME, PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    if ui:
        return f"Prefect UI: {ui.rstrip('/')}/runs"
    # The ephemeral API stores runs and artifacts in the same database a local server reads.
    return (
        "Prefect UI: run `make ui`, then open http://127.0.0.1:4200/runs "
        f"(the runs and artifacts are kept in {PREFECT_HOME.value()})"
    )


def print_rewards(summary: dict[str, Any]) -> None:
    """Print what a grant-rewards run decided, per rule."""
    grant = summary.get("stages", {}).get("grant", {})
    table = Table(title=f"Rewards {summary.get('as_of')} - run {summary.get('cycle_id')}")
    for column in ("rule", "qualifying", "granted", "holdout", "over budget"):
        table.add_column(column, justify="left" if column == "rule" else "right")
    for rule, counts in sorted(grant.get("by_rule", {}).items()):
        table.add_row(
            rule,
            *(f"{int(counts.get(k, 0)):,}" for k in ("qualifying", "granted", "holdout", "over_budget")),
        )
    out.print(table)
    sent = summary.get("stages", {}).get("dispatch", {}).get("sent", 0)
    out.print(f"Reward notices sent: {sent:,} (service messages through the same consent gate and dispatch)")


@limits_app.command(
    "ensure",
    epilog=(
        "Sizes and slot decays follow from RENEWALS_SMS_RATE_PER_SECOND, RENEWALS_WHATSAPP_RATE_PER_SECOND "
        "and RENEWALS_SENDGRID_RATE_PER_SECOND, so that dispatch processes running with "
        "RENEWALS_SHARED_RATE_LIMITS=true never start more than the rate in any second between them. "
        "The limits live on the Prefect API at PREFECT_API_URL, which every dispatcher must share. "
        "Run it again after changing a rate: dispatch refuses a limit that does not match the settings."
    ),
)
def limits_ensure() -> None:
    """Create or update the rate limit of each sender (SMS, WhatsApp, email) on the Prefect API."""
    import httpx

    from tasks.channels.ratelimit import PermitUnavailable
    from tasks.rate_limits import api_url, ensure_limits

    settings = _settings()
    try:
        ensured = ensure_limits(settings)
    except (PermitUnavailable, ValueError) as exc:
        err.print(f"limits not ensured: {exc}")
        raise typer.Exit(code=1) from exc
    except httpx.HTTPError as exc:
        err.print(f"limits not ensured: the Prefect API at {api_url()} did not answer ({type(exc).__name__})")
        raise typer.Exit(code=1) from exc
    table = Table(title=f"Shared rate limits on {api_url()}")
    for column in ("name", "rate/s", "limit", "slot decay/s", "chunk", "permit life (s)", "action"):
        table.add_column(column, overflow="fold")
    for item in ensured:
        shared = item.limit
        table.add_row(
            shared.name,
            f"{shared.rate:g}",
            str(shared.limit),
            f"{shared.slot_decay_per_second:.3f}",
            str(shared.chunk),
            f"{shared.lifetime:.3f}",
            item.action,
        )
    out.print(table)
    if not settings.shared_rate_limits:
        err.print("dispatch uses these limits only with RENEWALS_SHARED_RATE_LIMITS=true (it is off)")


def main() -> None:
    """Entry point of the `renewals` script."""
    app()


if __name__ == "__main__":
    main()
