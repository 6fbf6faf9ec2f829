"""Email through SendGrid v3 mail/send (sendgrid-python): one request per message, or batched per template."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sendgrid import SendGridAPIClient

from tasks.channels.base import Outbound, SendInterrupted, SendResult, SendStatus
from tasks.channels.errors import SENDGRID_STATUSES, Classified, ErrorClass, Rule, classify_sendgrid
from tasks.channels.ratelimit import ConcurrencyLimiter, Limiter, PermitUnavailable, fan_out
from tasks.channels.results import ChannelResult, failed, template_fields
from tasks.channels.retry import RetryPolicy
from tasks.domain.messaging import locale_chain

log = logging.getLogger(__name__)

SENDGRID_API = "https://api.sendgrid.com"
# mail/send accepts at most 1000 personalizations (and 1000 recipients) per request.
MAX_PERSONALIZATIONS = 1000
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255


@dataclass(frozen=True)
class Job:
    """One mail/send request to make: its messages and, when batched, their shared dynamic template."""

    messages: tuple[Outbound, ...]
    template_id: str | None


class SendGridEmailSender:
    """Sends email with HTML and text parts, message_key in custom_args, marketing unsubscribe headers.

    Messages of one batch that share a dynamic template (and category and purpose) go out in one request
    with up to 1000 personalizations; the others one request each. SendGrid has no idempotency key, so
    a timeout or 5xx after the request left is IN_DOUBT, never retried.
    """

    provider = "sendgrid"
    # SendGrid has no lookup API: lost outcomes are reconciled from Event Webhook events by message key.
    reconciles_by_lookup = False
    channel = "email"

    def __init__(
        self,
        api_key: str,
        *,
        from_email: str,
        base_url: str = SENDGRID_API,
        from_name: str | None = None,
        reply_to: str | None = None,
        limiter: Limiter | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 8,
        timeout: float = 10.0,
        dynamic_templates: Mapping[str, str] | None = None,
        asm_group_id: int | None = None,
        unsubscribe_url: str | None = None,
        unsubscribe_mailto: str | None = None,
        marketing_purposes: frozenset[str] = frozenset({"marketing"}),
        sandbox: bool = False,
        max_personalizations: int = MAX_PERSONALIZATIONS,
        statuses: Mapping[int, Rule] = SENDGRID_STATUSES,
    ) -> None:
        if not api_key:
            # An empty key makes the SDK read SENDGRID_API_KEY from the environment behind our back.
            raise ValueError("SendGrid needs an API key")
        if not from_email:
            raise ValueError("SendGrid needs a From address")
        if timeout <= 0 or concurrency < 1 or not 1 <= max_personalizations <= MAX_PERSONALIZATIONS:
            raise ValueError("timeout, concurrency and max_personalizations out of range")
        bad = {k: v for k, v in (dynamic_templates or {}).items() if not v.startswith("d-")}
        if bad:
            raise ValueError(f"dynamic template ids must start with d-: {sorted(bad)}")
        self._api_key = api_key
        # python_http_client builds URLs as host + "/v3/...", so a trailing slash would double it.
        self.base_url = base_url.rstrip("/")
        self.from_email = from_email
        self.from_name = from_name
        self.reply_to = reply_to
        self.limiter: Limiter = limiter or ConcurrencyLimiter(concurrency)
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self.timeout = timeout
        self.dynamic_templates = dict(dynamic_templates or {})
        self.asm_group_id = asm_group_id
        self.unsubscribe_url = unsubscribe_url
        self.unsubscribe_mailto = unsubscribe_mailto
        self.marketing_purposes = marketing_purposes
        self.sandbox = sandbox
        self.max_personalizations = max_personalizations
        self.statuses = statuses
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # --- plumbing -------------------------------------------------------------------------------------

    def _client(self) -> Any:
        """Return this thread's SDK client: per-call headers mutate state shared by the client's children."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = SendGridAPIClient(api_key=self._api_key, host=self.base_url)
            client.client.timeout = self.timeout
            self._local.client = client
        return client

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="sendgrid")
            return self._pool

    def close(self) -> None:
        """Stop the worker threads."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> SendGridEmailSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- request bodies -------------------------------------------------------------------------------

    def template_id(self, msg: Outbound) -> str | None:
        """Return the dynamic template of a message ("key/locale" along the chain, then "key"), if any."""
        template, locale, variables = template_fields(msg)
        if template is None or variables is None or not self.dynamic_templates:
            return None
        for candidate in [f"{template}/{loc}" for loc in locale_chain(locale or "en")] + [template]:
            if candidate in self.dynamic_templates:
                return self.dynamic_templates[candidate]
        return None

    def is_marketing(self, msg: Outbound) -> bool:
        """Return whether a message is marketing (unsubscribe headers and group required)."""
        return msg.purpose in self.marketing_purposes

    @staticmethod
    def categories(msg: Outbound) -> list[str]:
        """Return the SendGrid categories of a message: playbook and step (never personal data)."""
        parts = [p for p in msg.category.split(":", 1) if p]
        return [p[:MAX_CATEGORY_LENGTH] for p in parts][:MAX_CATEGORIES]

    def _personalization(self, msg: Outbound, template_id: str | None) -> dict[str, Any]:
        # custom_args return on every webhook event and SendGrid stores them as non-personal: the key only.
        item: dict[str, Any] = {"to": [{"email": msg.to}], "custom_args": {"message_key": msg.message_key}}
        if template_id is not None:
            _, _, variables = template_fields(msg)
            data: dict[str, Any] = dict(variables or {})
            if msg.subject:
                data.setdefault("subject", msg.subject)
            item["dynamic_template_data"] = data
        if self.is_marketing(msg):
            headers = self._unsubscribe_headers(msg.message_key)
            if headers:
                item["headers"] = headers
        return item

    def _unsubscribe_headers(self, message_key: str) -> dict[str, str]:
        # Gmail and Yahoo (2024 bulk-sender rules) and RFC 8058 want both forms plus one-click POST.
        targets = []
        key = quote(message_key, safe="")
        if self.unsubscribe_mailto:
            targets.append(f"<mailto:{self.unsubscribe_mailto}?subject=unsubscribe%20{key}>")
        if self.unsubscribe_url:
            sep = "&" if "?" in self.unsubscribe_url else "?"
            targets.append(f"<{self.unsubscribe_url}{sep}key={key}>")
        if not targets:
            return {}
        headers = {"List-Unsubscribe": ", ".join(targets)}
        if self.unsubscribe_url:
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        return headers

    def body(self, messages: Sequence[Outbound], template_id: str | None) -> dict[str, Any]:
        """Return the mail/send JSON for one message, or for messages sharing `template_id`."""
        first = messages[0]
        sender: dict[str, str] = {"email": self.from_email}
        if self.from_name:
            sender["name"] = self.from_name
        payload: dict[str, Any] = {
            "personalizations": [self._personalization(m, template_id) for m in messages],
            "from": sender,
        }
        if template_id is not None:
            payload["template_id"] = template_id
        else:
            payload["subject"] = first.subject or ""
            # text/plain must precede text/html (SendGrid rejects the other order).
            content = [{"type": "text/plain", "value": first.body}]
            if first.html:
                content.append({"type": "text/html", "value": first.html})
            payload["content"] = content
        categories = self.categories(first)
        if categories:
            payload["categories"] = categories
        if self.reply_to:
            payload["reply_to"] = {"email": self.reply_to}
        if self.is_marketing(first) and self.asm_group_id is not None:
            payload["asm"] = {"group_id": self.asm_group_id}
        if self.sandbox:
            payload["mail_settings"] = {"sandbox_mode": {"enable": True}}
        return payload

    def jobs(self, batch: Sequence[Outbound]) -> list[Job]:
        """Group a batch into requests: per dynamic template, category and purpose in chunks, else singly."""
        groups: dict[tuple[str, str, bool], list[Outbound]] = {}
        jobs: list[Job] = []
        for msg in batch:
            template_id = self.template_id(msg)
            if template_id is None:
                jobs.append(Job((msg,), None))
            else:
                groups.setdefault((template_id, msg.category, self.is_marketing(msg)), []).append(msg)
        for (template_id, _, _), members in groups.items():
            for start in range(0, len(members), self.max_personalizations):
                jobs.append(Job(tuple(members[start : start + self.max_personalizations]), template_id))
        return jobs

    # --- send -----------------------------------------------------------------------------------------

    def send(self, batch: Sequence[Outbound]) -> list[SendResult]:
        """Send every message; return one result per message, in batch order."""
        if not batch:
            return []
        halted: list[Classified] = []
        stopped: list[PermitUnavailable] = []
        done: dict[str, ChannelResult] = {}
        jobs = self.jobs(batch)
        for results in fan_out(
            self._executor(), self.concurrency, jobs, lambda j: self._run_guarded(j, halted, stopped)
        ):
            done.update((r.message_key, r) for r in results)
        if stopped:
            raise SendInterrupted([done[m.message_key] for m in batch if m.message_key in done], stopped[0])
        return [done[m.message_key] for m in batch]

    def _run_guarded(
        self, job: Job, halted: list[Classified], stopped: list[PermitUnavailable]
    ) -> list[ChannelResult]:
        """Return the job's results; a message left without one never started (no permit could be had)."""
        out: list[ChannelResult] = []
        if stopped:
            return out
        try:
            self._run(job, halted, out)
        except PermitUnavailable as exc:
            stopped.append(exc)
        except Exception as exc:
            # No traceback: SDK error texts can quote addresses. A crash after the request left may have sent.
            log.error("sendgrid send crashed (%s)", type(exc).__name__)
            detail = f"sender error {type(exc).__name__}"
            failure = Classified(ErrorClass.AMBIGUOUS, "INTERNAL", detail=detail)
            known = {r.message_key for r in out}
            out.extend(
                failed(m.message_key, self.provider, failure, 1)
                for m in job.messages
                if m.message_key not in known
            )
        return out

    def _run(self, job: Job, halted: list[Classified], out: list[ChannelResult]) -> None:
        """Send one request and append its messages' results to `out` (as they are known, for a split job)."""
        payload = self.body(job.messages, job.template_id)
        client = self._client()

        def call(attempt: int) -> Any:
            del attempt
            with self.limiter.acquire(1):
                return client.client.mail.send.post(request_body=payload, timeout=self.timeout)

        outcome = self.retry.run(
            call,
            lambda exc: classify_sendgrid(exc, self.statuses),
            lambda: halted[0] if halted else None,
        )
        failure = outcome.error
        if failure is None:
            headers = getattr(outcome.value, "headers", None)
            message_id = headers.get("X-Message-Id") if headers is not None else None
            out.extend(
                ChannelResult(
                    m.message_key,
                    SendStatus.SENT,
                    self.provider,
                    provider_message_id=message_id,
                    attempts=outcome.attempts,
                )
                for m in job.messages
            )
            return
        if failure.halt and not halted:
            halted.append(failure)
        # A rejected batched request was not accepted at all: take out the personalizations SendGrid blamed
        # and resend the rest; split one that is too large. Nothing else is resent.
        if len(job.messages) > 1 and failure.status == 400:
            blamed = _blamed(failure.fields, len(job.messages))
            if blamed and len(blamed) < len(job.messages):
                rest = tuple(m for i, m in enumerate(job.messages) if i not in blamed)
                out.extend(
                    failed(m.message_key, self.provider, failure, outcome.attempts)
                    for i, m in enumerate(job.messages)
                    if i in blamed
                )
                self._run(Job(rest, job.template_id), halted, out)
                return
        if len(job.messages) > 1 and failure.status == 413:
            middle = len(job.messages) // 2
            self._run(Job(job.messages[:middle], job.template_id), halted, out)
            self._run(Job(job.messages[middle:], job.template_id), halted, out)
            return
        out.extend(failed(m.message_key, self.provider, failure, outcome.attempts) for m in job.messages)

    def reconcile(self, message_keys: Sequence[str]) -> dict[str, SendResult]:
        """Return nothing: SendGrid has no lookup by our key; dispatch settles email from webhook events."""
        del message_keys
        return {}


def _blamed(fields: Sequence[str], size: int) -> set[int]:
    """Return the personalization indexes SendGrid's error fields name (personalizations.<i>.to.0.email)."""
    found = set()
    for name in fields:
        parts = name.split(".")
        if len(parts) > 1 and parts[0] == "personalizations" and parts[1].isdigit() and int(parts[1]) < size:
            found.add(int(parts[1]))
    return found
