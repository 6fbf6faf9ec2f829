"""Benchmark the naive Prefect design (task runs per message) against the real batch steps; figures only.

    .venv/bin/python benchmarks/naive.py --messages 2000

One run, one SQLite store in a temp dir, Prefect's ephemeral API. First the real `renewal_cycle` flow
runs over a generated demo portfolio sized for about N messages; the real design's time is the sum of
its plan, consent-gate, render and dispatch stages (the flow summary's `seconds`, Prefect start-up and
extract..segment left out), with the clock at --at (10:00 UTC today unless told otherwise; the gate's
send windows decide how many go out). Then the messages that cycle sent are sent again the naive way,
each under a new key in the same store and to its own outbox directory:

- sequential: five @task calls per message (check consent, render, insert, send, mark sent);
- submitted: the same five tasks per message with `.submit()`, each fed the previous one's future, on
  a ThreadPoolTaskRunner with --workers threads (default 8; Prefect's own default is unbounded);
- one task: one submitted task per message that does the five steps as plain calls;
- plain calls: the five steps without Prefect, each step timed (the floor of the per-message work).

Every task takes the project's STEP options (no cache key, no persisted result). The fastest Prefect
variant is the fair naive figure. Times are measured inside each flow body, as the real stages are,
so flow-run creation is left out on both sides; before each variant the script waits until the API
has recorded the previous variant's task runs, so none pays for another's backlog.

What is equivalent: the same messages (the ones the real cycle sent, rewards notices aside), the same
templates, context and renderer (tasks.render.message_context, Renderer.render, labels, offer blocks,
WhatsApp variables; the script counts bodies identical to the real ones), the consent rule of the
real gate (tasks.domain.consent.decide_message: erasure, address, WhatsApp opt-in, objections,
marketing basis, send windows), one message row per message, and one fsynced JSON line per message in
the outbox through the project's OutboxSender.

What is not, and which design it favours:
- the naive side gets its candidates from the real plan and plans nothing (favours naive);
- the real gate also decides the candidates it blocks, defers or keeps on standby, and stores one
  decision row each; the naive check stores nothing (favours naive);
- the naive consent SELECT reads customer, contracts and consents, not suppressions (a fresh demo
  store has none) or the sent history, so no frequency cap counts anything (favours naive);
- the real dispatch claims each batch, runs the gate again and checks advertising labels before it
  sends; the naive send does neither and marks a message sent with one UPDATE (favours naive);
- the naive steps run after the real cycle, with templates compiled and Babel formats cached; the
  real cycle is preceded by a dry run of the same day for the same reason (`--cold` leaves it out,
  which favours naive);
- the naive send fsyncs once per message, the real one once per batch per channel (favours real;
  the plain-calls row shows what that costs).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# On a busy 2-core machine the ephemeral API needs more than 20 s to start, and its SQLite is at
# times locked for longer than the client's 5 retries (about a minute) while it records task runs.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "10")
# Past 10,000 queued events the in-memory broker drops events with one warning each (tens of
# thousands here); the "task runs recorded" check reports the loss instead.
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "ERROR")
# Prefect reads PREFECT_HOME when it is imported, so the run's temp dir is made before that.
WORK = Path(tempfile.mkdtemp(prefix="renewals-naive-"))
os.environ["PREFECT_HOME"] = str(WORK / "prefect")

import send_clock  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.futures import PrefectFuture, wait  # noqa: E402
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner  # noqa: E402
from sqlalchemy import insert, select, update  # noqa: E402

from tasks._prefect import STEP  # noqa: E402
from tasks.channels.base import Outbound  # noqa: E402
from tasks.channels.outbox import OutboxSender  # noqa: E402
from tasks.domain.consent import (  # noqa: E402
    Counter,
    Outcome,
    Request,
    Subject,
    decide_message,
    required_label,
)
from tasks.domain.frames import records  # noqa: E402
from tasks.gate import consent_columns, consent_record, holiday_checker  # noqa: E402
from tasks.render import is_marketing, message_context, whatsapp_variables, with_instalments  # noqa: E402
from tasks.runtime import get_runtime  # noqa: E402
from tasks.store import schema as s  # noqa: E402
from tasks.store.bulk import read_frame  # noqa: E402
from tasks.store.repository import create_cycle, utcnow  # noqa: E402

# Messages sent per demo customer: 2,566 from 11,765 at the default --at 10:00 (0.22; at other hours
# send windows defer more or fewer), so --messages 2000 asks for about 2,500 and gets them.
MESSAGES_PER_CUSTOMER = 0.17
REAL_STAGES = ("plan", "consent-gate", "render", "dispatch")

# The naive variant being run sends to its own outbox directory; set before each variant.
_outbox: dict[str, Path] = {}
_senders: dict[tuple[Path, str], OutboxSender] = {}


@task(name="read-candidates", **STEP)
def read_candidates(source_cycle: int) -> list[dict[str, Any]]:
    """Return the messages the real cycle sent, with the customer and contract fields templates use."""
    m, cust, ct = s.messages, s.customers, s.contracts
    stmt = (
        select(
            m.c.message_key,
            m.c.playbook,
            m.c.step,
            m.c.market,
            m.c.channel,
            m.c.rank,
            m.c.send_rule,
            m.c.template,
            m.c.purpose,
            m.c.has_offer,
            m.c.recipient,
            m.c.anchor_date,
            m.c.customer_key,
            cust.c.locale,
            cust.c.first_name,
            cust.c.last_name,
            cust.c.email,
            cust.c.phone_e164,
            ct.c.contract_key,
            ct.c.product,
            ct.c.term_end,
            ct.c.price,
            ct.c.currency,
        )
        .join(cust, cust.c.customer_key == m.c.customer_key)
        .join(ct, ct.c.contract_key == m.c.contract_key)
        .where(m.c.cycle_id == source_cycle, m.c.status == "sent", m.c.playbook != "rewards")
        .order_by(m.c.message_key)
    )
    with get_runtime().engine.connect() as conn:
        frame = with_instalments(conn, read_frame(conn, stmt))
    return records(frame)


@task(name="check-consent", **STEP)
def check_consent(row: dict[str, Any]) -> dict[str, Any]:
    """Decide one message with the gate's rule, from one SELECT of its customer, contracts and consents."""
    rt = get_runtime()
    cust, ct, cons = s.customers, s.contracts, s.consents
    stmt = (
        select(
            cust.c.market,
            cust.c.timezone,
            cust.c.region,
            cust.c.email,
            cust.c.phone_e164,
            cust.c.erased_at,
            ct.c.contract_key,
            ct.c.status.label("contract_status"),
            ct.c.term_end,
            *consent_columns(),
        )
        .select_from(cust)
        .outerjoin(ct, ct.c.customer_key == cust.c.customer_key)
        .outerjoin(cons, cons.c.customer_key == cust.c.customer_key)
        .where(cust.c.customer_key == row["customer_key"])
    )
    with rt.engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    now = utcnow()
    subject = None
    market = rt.markets.get(str(row["market"]))
    if rows and market is not None:
        first = rows[0]
        names = [c.name for c in consent_columns()]
        consents = {
            r["consent_id"]: consent_record([r[n] for n in names])
            for r in rows
            if r["consent_id"] is not None
        }
        contracts = {r["contract_key"]: r for r in rows if r["contract_key"] is not None}
        ongoing = any(r["contract_status"] == "active" for r in contracts.values())
        ends = [r["term_end"] for r in contracts.values()]
        subject = Subject(
            customer_key=str(row["customer_key"]),
            market=first["market"],
            timezone=first["timezone"],
            region=first["region"],
            has_email=first["email"] is not None,
            has_phone=first["phone_e164"] is not None,
            erased=first["erased_at"] is not None,
            contract_keys=frozenset(contracts),
            relationship_end=now.date() if ongoing else max(ends, default=None),
            consents=tuple(consents.values()),
        )
    rules = market.rules if market is not None else None
    if subject is None or rules is None:
        return {"allowed": False, "outcome": "no_subject", "offer_removed": False}
    request = Request(
        message_key=str(row["message_key"]),
        channel=str(row["channel"]),
        purpose=str(row["purpose"]),
        has_offer=bool(row["has_offer"]),
        recipient=str(row["recipient"] or "customer"),
        send_rule=str(row["send_rule"]),
    )
    decision = decide_message(request, subject, rules, now, Counter(), holiday_checker(rules))
    return {
        "allowed": decision.outcome is Outcome.ALLOWED,
        "outcome": decision.outcome.value,
        "offer_removed": decision.offer_removed,
    }


@task(name="render-message", **STEP)
def render_message(row: dict[str, Any], decision: dict[str, Any], as_of: date) -> dict[str, Any] | None:
    """Render one allowed message the way tasks.render does; None when the check did not allow it."""
    if not decision["allowed"]:
        return None
    rt = get_runtime()
    st = rt.settings
    row = {**row, "offer_removed": decision["offer_removed"]}
    ctx = message_context(
        row,
        rt.playbook(str(row["playbook"])),
        row["step"],
        as_of,
        company=st.company_name,
        templates_dir=rt.renderer.templates_dir,
        link_secret=st.pii_hash_key.get_secret_value().encode(),
        link_base=str(st.renew_base_url),
        unsubscribe_base=str(st.unsubscribe_base_url),
    )
    market = rt.markets.get(str(row["market"]))
    label = required_label(market.rules, str(row["channel"]), is_marketing(row)) if market else None
    offer = bool(row["has_offer"]) and not bool(row["offer_removed"]) and row["purpose"] != "marketing"
    done = rt.renderer.render(row["channel"], row["template"], row["locale"], ctx, offer=offer, label=label)
    variables = whatsapp_variables(rt.whatsapp_registry, row, ctx) if row["channel"] == "whatsapp" else None
    return {
        **done.columns(),
        "template_variables": variables,
        "offer_removed": bool(row["offer_removed"]),
    }


@task(name="store-message", **STEP)
def store_message(
    row: dict[str, Any], rendered: dict[str, Any] | None, cycle_id: int, prefix: str
) -> str | None:
    """Insert one rendered message row in its own transaction; return its key."""
    if rendered is None:
        return None
    key = f"{prefix}:{row['message_key']}"
    now = utcnow()
    with get_runtime().engine.begin() as conn:
        conn.execute(
            insert(s.messages).values(
                message_key=key,
                cycle_id=cycle_id,
                playbook=row["playbook"],
                contract_key=row["contract_key"],
                customer_key=row["customer_key"],
                market=row["market"],
                step=row["step"],
                channel=row["channel"],
                rank=int(row["rank"]),
                send_rule=row["send_rule"],
                template=row["template"],
                purpose=row["purpose"],
                anchor_date=row["anchor_date"].date(),
                has_offer=bool(row["has_offer"]),
                recipient=row["recipient"] or "customer",
                status="rendered",
                attempts=0,
                planned_at=now,
                rendered_at=now,
                updated_at=now,
                **rendered,
            )
        )
    return key


@task(name="send-message", **STEP)
def send_message(row: dict[str, Any], rendered: dict[str, Any] | None, key: str | None) -> str | None:
    """Append one message to the outbox (fsynced); return the provider id."""
    if rendered is None or key is None:
        return None
    directory, channel = _outbox["dir"], str(row["channel"])
    sender = _senders.setdefault((directory, channel), OutboxSender(directory, channel))
    message = Outbound(
        message_key=key,
        channel=channel,
        to=str(row["email"] if channel == "email" else row["phone_e164"]),
        body=rendered["body"],
        purpose=row["purpose"],
        category=f"{row['playbook']}:{row['step']}",
        subject=rendered["subject"],
        html=rendered["body_html"],
        template=row["template"],
        locale=rendered["locale"],
        variables=rendered["template_variables"],
    )
    (result,) = sender.send([message])
    return f"{key}|{result.provider_message_id}"


@task(name="mark-sent", **STEP)
def mark_sent(sent: str | None) -> bool:
    """Set one message to sent with one UPDATE in its own transaction."""
    if sent is None:
        return False
    key, provider_id = sent.split("|")
    now = utcnow()
    m = s.messages
    with get_runtime().engine.begin() as conn:
        done = conn.execute(
            update(m)
            .where(m.c.message_key == key, m.c.status == "rendered")
            .values(
                status="sent",
                provider="outbox",
                provider_message_id=provider_id,
                attempts=1,
                sent_at=now,
                updated_at=now,
            )
        ).rowcount
    return bool(done)


def deliver_plain(row: dict[str, Any], as_of: date, cycle_id: int, prefix: str) -> bool:
    """Do the five per-message steps as plain calls."""
    decision = check_consent.fn(row)
    rendered = render_message.fn(row, decision, as_of)
    key = store_message.fn(row, rendered, cycle_id, prefix)
    return mark_sent.fn(send_message.fn(row, rendered, key))


@task(name="deliver-message", **STEP)
def deliver(row: dict[str, Any], as_of: date, cycle_id: int, prefix: str) -> bool:
    """Do the five per-message steps inside one task run."""
    return deliver_plain(row, as_of, cycle_id, prefix)


@flow(name="naive-sequential")
def naive_sequential(source_cycle: int, cycle_id: int, as_of: date, prefix: str) -> dict[str, Any]:
    """Five task calls per message, one after another."""
    start = time.perf_counter()
    rows = read_candidates(source_cycle)
    sent = 0
    for row in rows:
        decision = check_consent(row)
        rendered = render_message(row, decision, as_of)
        key = store_message(row, rendered, cycle_id, prefix)
        sent += mark_sent(send_message(row, rendered, key))
    return {"seconds": time.perf_counter() - start, "candidates": len(rows), "sent": sent}


@flow(name="naive-submitted")
def naive_submitted(source_cycle: int, cycle_id: int, as_of: date, prefix: str) -> dict[str, Any]:
    """Five submitted tasks per message, each waiting on the future of the one before."""
    start = time.perf_counter()
    rows = read_candidates(source_cycle)
    last: list[PrefectFuture[bool]] = []
    for row in rows:
        decision: Any = check_consent.submit(row)
        rendered: Any = render_message.submit(row, decision, as_of)
        key: Any = store_message.submit(row, rendered, cycle_id, prefix)
        sent: Any = send_message.submit(row, rendered, key)
        last.append(mark_sent.submit(sent))
    wait(last)
    done = sum(f.result() for f in last)
    return {"seconds": time.perf_counter() - start, "candidates": len(rows), "sent": done}


@flow(name="naive-one-task")
def naive_one_task(source_cycle: int, cycle_id: int, as_of: date, prefix: str) -> dict[str, Any]:
    """One submitted task per message."""
    start = time.perf_counter()
    rows = read_candidates(source_cycle)
    futures = [deliver.submit(row, as_of, cycle_id, prefix) for row in rows]
    wait(futures)
    done = sum(f.result() for f in futures)
    return {"seconds": time.perf_counter() - start, "candidates": len(rows), "sent": done}


def plain_loop(source_cycle: int, cycle_id: int, as_of: date, prefix: str) -> dict[str, Any]:
    """The same per-message steps without Prefect, timing each step."""
    start = time.perf_counter()
    rows = read_candidates.fn(source_cycle)
    spent = dict.fromkeys(("check", "render", "insert", "send", "mark"), 0.0)
    done = 0
    for row in rows:
        t0 = time.perf_counter()
        decision = check_consent.fn(row)
        t1 = time.perf_counter()
        rendered = render_message.fn(row, decision, as_of)
        t2 = time.perf_counter()
        key = store_message.fn(row, rendered, cycle_id, prefix)
        t3 = time.perf_counter()
        sent = send_message.fn(row, rendered, key)
        t4 = time.perf_counter()
        done += mark_sent.fn(sent)
        t5 = time.perf_counter()
        for step, began, ended in zip(spent, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5), strict=True):
            spent[step] += ended - began
    return {"seconds": time.perf_counter() - start, "candidates": len(rows), "sent": done, "steps": spent}


def recorded_task_runs(timeout: float = 900.0) -> int:
    """Wait until the API's count of task runs stops moving (its recorder has caught up); return it."""
    from prefect.client.orchestration import get_client

    last, steady = -1, 0
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while steady < 3:
            if time.monotonic() > deadline:
                note(f"the API was still recording task runs after {timeout:.0f}s; going on")
                break
            count = int(client.request("POST", "/task_runs/count", json={}).json())
            steady = steady + 1 if count == last else 0
            last = count
            time.sleep(1.0)
    return last


def note(text: str) -> None:
    """Say what the run is doing (on stderr, so the figures stay apart)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def open_cycle(as_of: date, label: str) -> int:
    """Open a cycle row for one naive variant's messages."""
    with get_runtime().engine.begin() as conn:
        return create_cycle(
            conn,
            as_of=as_of,
            markets=sorted(get_runtime().markets),
            playbook=label,
            playbook_version=1,
            dry_run=False,
            flow_run_id=None,
        )


def same_bodies(prefix: str) -> int:
    """Return how many of a variant's sent messages match the real message's subject and body exactly."""
    real, naive = s.messages.alias("real"), s.messages.alias("naive")
    stmt = (
        select(naive.c.message_key)
        .join(real, naive.c.message_key == prefix + ":" + real.c.message_key)
        .where(
            naive.c.status == "sent",
            naive.c.body == real.c.body,
            naive.c.subject.is_not_distinct_from(real.c.subject),
        )
    )
    with get_runtime().engine.connect() as conn:
        return len(conn.execute(stmt).all())


def outbox_lines(directory: Path) -> int:
    """Return the number of lines in a variant's outbox files."""
    return sum(len(p.read_text(encoding="utf-8").splitlines()) for p in directory.glob("*.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="about this many messages")
    parser.add_argument("--customers", type=int, help="portfolio size (default: sized from --messages)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--as-of", default="2026-11-22")
    parser.add_argument("--workers", type=int, default=8, help="ThreadPoolTaskRunner max_workers")
    parser.add_argument(
        "--cold", action="store_true", help="no warm-up dry run: the real stages pay first-use costs"
    )
    parser.add_argument("--skip-sequential", action="store_true", help="leave out the slowest variant")
    parser.add_argument("--at", default="10:00", type=send_clock.hour, metavar="HH:MM", help=send_clock.HELP)
    args = parser.parse_args()

    import prefect
    import sqlalchemy

    from config.loader import load_markets
    from tasks.sources.demo_data import generate_portfolio, write_portfolio
    from tasks.store.migrate import upgrade

    t_all = time.perf_counter()
    as_of = date.fromisoformat(args.as_of)
    customers = args.customers or max(100, round(args.messages / MESSAGES_PER_CUSTOMER))
    frames = generate_portfolio(customers, args.seed, as_of, load_markets(ROOT / "config"))
    write_portfolio(frames, WORK / "source", "csv")
    del frames
    os.environ.update(
        {
            "RENEWALS_DATABASE_URL": f"sqlite:///{WORK / 'renewals.db'}",
            "RENEWALS_SOURCE_DIR": str(WORK / "source"),
            "RENEWALS_OUTBOX_DIR": str(WORK / "outbox"),
            "RENEWALS_HOME": str(WORK / "home"),
        }
    )
    from flows.renewal_cycle import renewal_cycle

    upgrade(get_runtime().engine)
    send_clock.pin_hour(args.at)
    if not args.cold:
        # The naive variants run after the real cycle, with templates compiled, Babel data and holiday
        # calendars loaded and every module imported; a dry run of the same day gives the real stages
        # the same start (it plans, gates and renders, but sends nothing and keeps its keys apart).
        note(f"{customers:,} customers generated; warming up with a dry run of the cycle")
        renewal_cycle(as_of=as_of, dry_run=True)
    note("running the renewal cycle")
    t0 = time.perf_counter()
    summary = renewal_cycle(as_of=as_of)
    t_flow = time.perf_counter() - t0
    secs, st = summary["seconds"], summary["stages"]
    real = sum(secs[stage] for stage in REAL_STAGES)
    n = int(st["dispatch"]["sent"])
    if not n:
        raise SystemExit(
            "the real cycle sent nothing (send windows closed at this hour?); nothing to compare"
        )

    # ThreadPoolTaskRunner's future type is narrower than the one Flow.with_options is typed for.
    runner = cast("TaskRunner[PrefectFuture[Any]]", ThreadPoolTaskRunner(max_workers=args.workers))
    variants: list[tuple[str, Any, int]] = [
        ("naive, 5 tasks/msg, sequential calls", naive_sequential, 5),
        (
            f"naive, 5 tasks/msg, .submit() x{args.workers}",
            naive_submitted.with_options(task_runner=runner),
            5,
        ),
        (f"naive, 1 task/msg, .submit() x{args.workers}", naive_one_task.with_options(task_runner=runner), 1),
        ("same steps as plain calls, no Prefect", plain_loop, 0),
    ][1 if args.skip_sequential else 0 :]
    results = []
    before = recorded_task_runs()
    for i, (label, run, per_message) in enumerate(variants):
        prefix = f"naive{i}"
        _outbox["dir"] = WORK / "naive-outbox" / prefix
        cycle_id = open_cycle(as_of, prefix)
        note(f"running {label}")
        t0 = time.perf_counter()
        out = run(summary["cycle_id"], cycle_id, as_of, prefix)
        out["wall"] = time.perf_counter() - t0
        # The next variant starts once the API has recorded this one's task runs.
        after = recorded_task_runs() if per_message else before
        out["task_runs"] = (after - before, 1 + per_message * out["candidates"] if per_message else 0)
        before = after
        out["same"], out["lines"] = same_bodies(prefix), outbox_lines(_outbox["dir"])
        results.append((label, out))
    get_runtime().close()

    print(
        f"\nNaive vs real design: {customers:,} customers, seed {args.seed}, as of {as_of}, SQLite, "
        f"{send_clock.described(args.at)}"
    )
    print(
        f"machine: {os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
        f"prefect {prefect.__version__}, sqlalchemy {sqlalchemy.__version__}; Prefect ephemeral API"
    )
    print(
        f"real cycle: {st['plan']['candidates']:,} candidates, {st['consent-gate']['decided']:,} decided, "
        f"{st['render']['rendered']:,} rendered, {n:,} sent (asked for about {args.messages:,}); "
        f"flow wall {t_flow:.1f}s with Prefect start-up and extract..segment"
    )
    print(f"real stages: {', '.join(f'{k} {secs[k]:.2f}s' for k in REAL_STAGES)}\n")

    def row(label: str, sent: int, seconds: float, ratio: str) -> None:
        print(
            f"{label:<42}{sent:>9,}{seconds:>9.2f}{sent / seconds:>9.0f}{1000 * seconds / n:>8.2f}{ratio:>10}"
        )

    print(f"{'design':<42}{'messages':>9}{'seconds':>9}{'msg/s':>9}{'ms/msg':>8}{'real is':>10}")
    row("real: plan + gate + render + dispatch", n, real, "")
    for label, out in results:
        row(label, out["sent"], out["seconds"], f"{out['seconds'] / real:.1f}x")

    naive = [(label, out) for label, out in results if out["task_runs"][1]]
    best_label, best = min(naive, key=lambda r: r[1]["seconds"])
    plain = results[-1][1]
    print(
        f"\nfastest naive variant ({best_label}): {best['seconds']:.2f}s, "
        f"real design {best['seconds'] / real:.1f}x faster; naive overhead "
        f"{1000 * (best['seconds'] - real) / n:.2f} ms per message"
    )
    per_step = ", ".join(f"{k} {1000 * v / n:.2f}" for k, v in plain["steps"].items())
    print(f"per-message steps without Prefect (ms/msg): {per_step}")
    sequential = next((out for label, out in results if "sequential" in label), None)
    if sequential is not None:
        per_run = (sequential["seconds"] - plain["seconds"]) / sequential["task_runs"][1]
        print(
            f"Prefect cost per task run (sequential 5 tasks/msg minus plain calls): {1000 * per_run:.2f} ms"
        )

    print("\nchecks: sent / candidates / bodies same as real / outbox lines / task runs recorded / flow wall")
    for label, out in results:
        got, expected = out["task_runs"]
        runs = f"{got:,} of {expected:,}" if expected else "-"
        print(
            f"  {label:<42}{out['sent']:>6,} /{out['candidates']:>6,} /{out['same']:>6,} /{out['lines']:>6,}"
            f" /{runs:>16} /{out['wall']:>6.1f}s"
        )
    total = time.perf_counter() - t_all
    print(f"\nwhole run {total:.0f}s (generate, real cycle, {len(results)} naive variants)")
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
