"""Agent runs and their effect journal in SQLite: every write is its own committed transaction, so a process killed
right after a call returns leaves the journal exactly as far as it got."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from archivist.store.records import AgentRunRecord, AgentStepRecord, ApprovalRecord, EffectRecord, EffectStatus
from archivist.store.rows import json_or_none, reader, utc_now
from archivist.store.sqlite.database import SQLiteDatabase
from archivist.types import ConflictError, NotFoundError

_RUN_SELECT = "id, task, status, created_at, updated_at, collection, reason, limits, totals, result, tools, owner"
#: what a run is read back with: its columns and its lease (who drives it now, until when)
_RUN_READ = f"{_RUN_SELECT}, lease_holder, lease_until"
_STEP_SELECT = "run_id, seq, kind, name, created_at, data, call_id, arguments, tokens, cost_usd, latency_ms"
_EFFECT_SELECT = (
    "run_id, step, call_id, tool, arguments_hash, idempotency_key, arguments, created_at, status, result, completed_at"
)
_APPROVAL_SELECT = "run_id, step, call_id, tool, arguments, created_at, kind, status, decided_at"
_RUN_FIELDS = {"status", "reason", "totals", "result", "limits"}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class SQLiteAgentRuns(SQLiteDatabase):
    """The `AgentRunStore` of an SQLite file."""

    def create_agent_run(self, run: AgentRunRecord) -> None:
        """Store a new run, or raise ConflictError when its id is taken."""
        try:
            with self._transaction() as conn:
                conn.execute(
                    f"INSERT INTO agent_runs ({_RUN_SELECT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run.id,
                        run.task,
                        run.status,
                        run.created_at,
                        run.updated_at,
                        run.collection,
                        run.reason,
                        _dumps(run.limits),
                        _dumps(run.totals),
                        _dumps(run.result) if run.result is not None else None,
                        _dumps(list(run.tools)),
                        run.owner,
                    ),
                )
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"agent run {run.id!r} already exists") from exc

    def update_agent_run(self, run_id: str, **fields: Any) -> bool:
        """Set a run's status, reason, totals or result (and its updated_at); return whether the run exists."""
        unknown = set(fields) - _RUN_FIELDS
        if unknown:
            raise ValueError(f"update_agent_run: unknown fields {sorted(unknown)}")
        values = {
            k: _dumps(v) if k in ("totals", "result", "limits") and v is not None else v for k, v in fields.items()
        }
        values["updated_at"] = utc_now()
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._transaction() as conn:
            return conn.execute(f"UPDATE agent_runs SET {sets} WHERE id = ?", [*values.values(), run_id]).rowcount > 0

    def get_agent_run(self, run_id: str) -> AgentRunRecord | None:
        """Return one run by id or unique id prefix, or None."""
        rows = (
            self._conn()
            .execute(
                # A prefix compared as text, not a LIKE pattern: '_' and '%' in an id match only themselves.
                f"SELECT {_RUN_READ} FROM agent_runs WHERE id = ? OR substr(id, 1, ?) = ? LIMIT 2",
                (run_id, len(run_id), run_id),
            )
            .fetchall()
        )
        exact = [r for r in rows if r[0] == run_id]
        if exact:
            return _run_record(exact[0])
        return _run_record(rows[0]) if len(rows) == 1 else None

    def list_agent_runs(
        self, *, limit: int = 50, owner: str | None = None, collections: Sequence[str] | None = None
    ) -> list[AgentRunRecord]:
        """Return runs, the most recently updated first: only those `owner` started, when given, and only runs over
        one of `collections`, when given (a run over every collection is then left out)."""
        clauses, args = [], []
        if owner is not None:
            clauses.append("owner = ?")
            args.append(owner)
        if collections is not None:
            clauses.append(f"collection IN ({', '.join('?' * len(collections)) or 'NULL'})")
            args.extend(collections)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn().execute(
            f"SELECT {_RUN_READ} FROM agent_runs {where} ORDER BY updated_at DESC, rowid DESC LIMIT ?",
            (*args, limit),
        )
        return [_run_record(r) for r in rows]

    def lease_agent_run(self, run_id: str, holder: str, *, until: str, now: str, take_from: str | None = None) -> str:
        """Take or renew a run's lease for `holder` until `until` — when it is free, expired at `now`, already
        `holder`'s, or held by `take_from` (a holder known dead) — and return who holds it after the call."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE agent_runs SET lease_holder = ?, lease_until = ? WHERE id = ? AND (lease_holder IS NULL"
                " OR lease_until IS NULL OR lease_until < ? OR lease_holder = ? OR lease_holder = ?)",
                (holder, until, run_id, now, holder, take_from),
            )
            row = conn.execute("SELECT lease_holder FROM agent_runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no agent run {run_id!r}")
        return str(row[0])

    def release_agent_run(self, run_id: str, holder: str) -> None:
        """Give up a run's lease, if `holder` still holds it."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE agent_runs SET lease_holder = NULL, lease_until = NULL WHERE id = ? AND lease_holder = ?",
                (run_id, holder),
            )

    def add_agent_step(self, step: AgentStepRecord) -> None:
        """Append a step to a run's journal; raise ConflictError when the run has a step of that number, and
        NotFoundError when there is no such run."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM agent_runs WHERE id = ?", (step.run_id,)).fetchone() is None:
                raise NotFoundError(f"no agent run {step.run_id!r}")
            try:
                conn.execute(
                    f"INSERT INTO agent_steps ({_STEP_SELECT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        step.run_id,
                        step.seq,
                        step.kind,
                        step.name,
                        step.created_at,
                        _dumps(step.data),
                        step.call_id,
                        _dumps(step.arguments) if step.arguments is not None else None,
                        step.tokens,
                        step.cost_usd,
                        step.latency_ms,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"agent run {step.run_id!r} already has step {step.seq}") from exc

    def agent_steps(self, run_id: str) -> list[AgentStepRecord]:
        """Return a run's steps in order."""
        rows = self._conn().execute(f"SELECT {_STEP_SELECT} FROM agent_steps WHERE run_id = ? ORDER BY seq", (run_id,))
        return [_step_record(r) for r in rows]

    def record_intent(self, effect: EffectRecord) -> None:
        """Commit the intent of a side-effecting call before it runs; raise ConflictError when an intent with the
        same (run, step, call id, arguments hash) exists (the call was already started, here or elsewhere)."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM agent_runs WHERE id = ?", (effect.run_id,)).fetchone() is None:
                raise NotFoundError(f"no agent run {effect.run_id!r}")
            try:
                conn.execute(
                    f"INSERT INTO agent_effects ({_EFFECT_SELECT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        effect.run_id,
                        effect.step,
                        effect.call_id,
                        effect.tool,
                        effect.arguments_hash,
                        effect.idempotency_key,
                        _dumps(effect.arguments),
                        effect.created_at,
                        "pending",
                        None,
                        None,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise ConflictError(
                    f"agent run {effect.run_id!r} step {effect.step}: the intent of call {effect.call_id!r} is already"
                    " recorded"
                ) from exc

    def record_outcome(self, run_id: str, idempotency_key: str, status: EffectStatus, result: Any) -> bool:
        """Commit a call's outcome; return False when its intent is missing or already has an outcome."""
        if status == "pending":
            raise ValueError("record_outcome: an outcome is 'succeeded' or 'failed'")
        with self._transaction() as conn:
            return (
                conn.execute(
                    "UPDATE agent_effects SET status = ?, result = ?, completed_at = ?"
                    " WHERE run_id = ? AND idempotency_key = ? AND status = 'pending'",
                    (status, _dumps(result), utc_now(), run_id, idempotency_key),
                ).rowcount
                > 0
            )

    def agent_effects(self, run_id: str) -> list[EffectRecord]:
        """Return a run's side-effect intents with their outcomes, by step."""
        rows = self._conn().execute(
            f"SELECT {_EFFECT_SELECT} FROM agent_effects WHERE run_id = ? ORDER BY step, call_id", (run_id,)
        )
        return [_effect_record(r) for r in rows]

    def request_approval(self, approval: ApprovalRecord) -> None:
        """Store a pending approval of a step's tool call (nothing changes when that step already has one of that
        kind)."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM agent_runs WHERE id = ?", (approval.run_id,)).fetchone() is None:
                raise NotFoundError(f"no agent run {approval.run_id!r}")
            # A used approval (its one attempt taken) asks again; a pending or decided one stays as it is.
            conn.execute(
                f"INSERT INTO agent_approvals ({_APPROVAL_SELECT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, step, kind) DO UPDATE SET status = 'pending', decided_at = NULL,"
                " created_at = excluded.created_at WHERE agent_approvals.status = 'consumed'",
                (
                    approval.run_id,
                    approval.step,
                    approval.call_id,
                    approval.tool,
                    _dumps(approval.arguments),
                    approval.created_at,
                    approval.kind,
                    "pending",
                    None,
                ),
            )

    def decide_approval(self, run_id: str, step: int, *, approved: bool, now: str) -> bool:
        """Approve or reject a pending approval; return False when the step has no pending approval."""
        with self._transaction() as conn:
            return (
                conn.execute(
                    "UPDATE agent_approvals SET status = ?, decided_at = ?"
                    " WHERE run_id = ? AND step = ? AND status = 'pending'",
                    ("approved" if approved else "rejected", now, run_id, step),
                ).rowcount
                > 0
            )

    def consume_approval(self, run_id: str, step: int, kind: str) -> bool:
        """Take an approved approval for the one attempt it covers; return False when it is not (or no longer)
        approved: another process took it."""
        with self._transaction() as conn:
            return (
                conn.execute(
                    "UPDATE agent_approvals SET status = 'consumed'"
                    " WHERE run_id = ? AND step = ? AND kind = ? AND status = 'approved'",
                    (run_id, step, kind),
                ).rowcount
                > 0
            )

    def agent_approvals(self, run_id: str) -> list[ApprovalRecord]:
        """Return a run's approvals by step."""
        rows = self._conn().execute(
            f"SELECT {_APPROVAL_SELECT} FROM agent_approvals WHERE run_id = ? ORDER BY step, created_at", (run_id,)
        )
        return [_approval_record(r) for r in rows]

    def prune_agent_runs(self, before: str) -> int:
        """Delete the finished runs (succeeded or failed) last updated before `before` (UTC ISO time) with their
        journal; return how many. A paused or running run is kept, whatever its age: it may hold an intent whose
        outcome nobody knows yet."""
        with self._transaction() as conn:
            return conn.execute(
                "DELETE FROM agent_runs WHERE updated_at < ? AND status IN ('succeeded', 'failed')", (before,)
            ).rowcount


def _tools(value: str) -> tuple[str, ...]:
    return tuple(json.loads(value))


_run_record = reader(AgentRunRecord, _RUN_READ, limits=json.loads, totals=json.loads, result=json_or_none, tools=_tools)
_step_record = reader(AgentStepRecord, _STEP_SELECT, data=json.loads, arguments=json_or_none)
_effect_record = reader(EffectRecord, _EFFECT_SELECT, arguments=json.loads, result=json_or_none)
_approval_record = reader(ApprovalRecord, _APPROVAL_SELECT, arguments=json.loads)
