"""CatalogStore: CRUD and paged queries for datasets, policies and contract definitions.

One store contract for SQLite and PostgreSQL (``tests/catalog/test_store.py`` runs on both). Every
write runs in one transaction and bumps ``catalog_revision``, which :class:`catalog.CatalogService`
reads to know when its in-memory catalog is stale, also when another process wrote.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import sqlalchemy as sa
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy.engine import Connection, Engine

from catalog import _tables as t
from catalog._models import Category, ContractDefinition, Dataset, PolicyDefinition
from connector.errors import ConflictError, NotFoundError, StoreError, ValidationError
from connector.store import read_only, run

__all__ = ["CatalogStore", "Page"]

T = TypeVar("T")
MAX_LIMIT = 1000
#: the catalog revision, read before every offer lookup (prebuilt for connector.store.run)
_REVISION = sa.select(t.revision.c.value).where(t.revision.c.id == 1)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a query: the items, how many match in total, and where the page starts."""

    items: list[T]
    total: int
    offset: int
    limit: int

    @property
    def next_offset(self) -> int | None:
        nxt = self.offset + self.limit
        return nxt if nxt < self.total else None

    @property
    def prev_offset(self) -> int | None:
        return max(0, self.offset - self.limit) if self.offset > 0 else None


def _now() -> datetime:
    return datetime.now(UTC)


def _check_paging(offset: int, limit: int) -> None:
    problems = []
    if offset < 0:
        problems.append(f"offset: must be >= 0, got {offset}")
    if not 1 <= limit <= MAX_LIMIT:
        problems.append(f"limit: must be between 1 and {MAX_LIMIT}, got {limit}")
    if problems:
        raise ValidationError("invalid paging", errors=problems)


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").lower() + "%"


class CatalogStore:
    """Persistence of the catalog entities on a migrated engine (see :func:`connector.store.migrate`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------------ revision
    def revision(self) -> int:
        """The catalog revision: changes whenever anything in the catalog changed."""
        # once per offer lookup: on the driver's cursor (decision 0406); on PostgreSQL one round
        # trip (read_only is autocommit there)
        with read_only(self.engine) as conn:
            value = run(conn, _REVISION, {}).scalar()
            conn.rollback()  # SQLite: end the read now; PostgreSQL: nothing to end
        if value is None:
            raise StoreError("catalog_revision row is missing: was the database migrated?")
        return int(value)

    @staticmethod
    def _bump(conn: Connection) -> int:
        """Increment the catalog revision inside the caller's transaction; the new value."""
        conn.execute(sa.update(t.revision).where(t.revision.c.id == 1).values(value=t.revision.c.value + 1))
        return int(conn.execute(sa.select(t.revision.c.value).where(t.revision.c.id == 1)).scalar_one())

    # ------------------------------------------------------------------ datasets
    @staticmethod
    def _dataset_row(ds: Dataset) -> dict[str, object]:
        body = ds.model_dump(mode="json", exclude={"data_address"})
        return {
            "category": ds.category.value,
            "title": ds.title,
            "body": json.dumps(body, separators=(",", ":"), ensure_ascii=False),
            "data_address": ds.data_address.model_dump_json(),
        }

    @staticmethod
    def _terms(conn: Connection, ds: Dataset) -> None:
        conn.execute(sa.delete(t.dataset_terms).where(t.dataset_terms.c.dataset_id == ds.id))
        rows = [{"dataset_id": ds.id, "kind": "keyword", "value": k} for k in ds.keywords]
        rows += [{"dataset_id": ds.id, "kind": "conformsTo", "value": c} for c in ds.conforms_to]
        if rows:
            conn.execute(sa.insert(t.dataset_terms), rows)

    @staticmethod
    def _load_dataset(body: str, data_address: str) -> Dataset:
        try:
            data = json.loads(body)
            data["data_address"] = json.loads(data_address)
            return Dataset.model_validate(data)
        except (ValueError, PydanticValidationError) as exc:
            raise StoreError(f"stored dataset is inconsistent: {exc}") from exc

    def create_dataset(self, ds: Dataset) -> Dataset:
        """Insert ``ds``; ConflictError if its id exists."""
        now = _now()
        try:
            with self.engine.begin() as conn:
                exists = conn.execute(sa.select(t.datasets.c.id).where(t.datasets.c.id == ds.id)).first()
                if exists:
                    raise ConflictError(f"dataset {ds.id!r} already exists", context={"datasetId": ds.id})
                rev = self._bump(conn)
                conn.execute(
                    sa.insert(t.datasets).values(
                        id=ds.id, revision=rev, created_at=now, updated_at=now, **self._dataset_row(ds)
                    )
                )
                self._terms(conn, ds)
        except sa.exc.IntegrityError as exc:
            raise ConflictError(f"dataset {ds.id!r} already exists", context={"datasetId": ds.id}) from exc
        return ds

    def create_datasets(self, items: Sequence[Dataset]) -> None:
        """Insert many datasets in one transaction (seeding, benchmarks); ConflictError on any duplicate."""
        now = _now()
        try:
            with self.engine.begin() as conn:
                rev = self._bump(conn)
                if items:
                    conn.execute(
                        sa.insert(t.datasets),
                        [
                            {
                                "id": d.id,
                                "revision": rev,
                                "created_at": now,
                                "updated_at": now,
                                **self._dataset_row(d),
                            }
                            for d in items
                        ],
                    )
                    terms = [
                        {"dataset_id": d.id, "kind": kind, "value": v}
                        for d in items
                        for kind, vals in (("keyword", d.keywords), ("conformsTo", d.conforms_to))
                        for v in vals
                    ]
                    if terms:
                        conn.execute(sa.insert(t.dataset_terms), terms)
        except sa.exc.IntegrityError as exc:
            raise ConflictError(f"a dataset id already exists: {str(exc.orig)[:200]}") from exc

    def get_dataset(self, dataset_id: str) -> Dataset:
        with read_only(self.engine) as conn:
            row = conn.execute(
                sa.select(t.datasets.c.body, t.datasets.c.data_address).where(t.datasets.c.id == dataset_id)
            ).first()
            conn.rollback()
        if row is None:
            raise NotFoundError(f"dataset {dataset_id!r} does not exist", context={"datasetId": dataset_id})
        return self._load_dataset(row.body, row.data_address)

    def update_dataset(self, ds: Dataset) -> Dataset:
        """Replace the stored dataset with the same id; NotFoundError if there is none."""
        with self.engine.begin() as conn:
            rev = self._bump(conn)
            result = conn.execute(
                sa.update(t.datasets)
                .where(t.datasets.c.id == ds.id)
                .values(revision=rev, updated_at=_now(), **self._dataset_row(ds))
            )
            if result.rowcount == 0:
                raise NotFoundError(f"dataset {ds.id!r} does not exist", context={"datasetId": ds.id})
            self._terms(conn, ds)
        return ds

    def delete_dataset(self, dataset_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(t.dataset_terms).where(t.dataset_terms.c.dataset_id == dataset_id))
            result = conn.execute(sa.delete(t.datasets).where(t.datasets.c.id == dataset_id))
            if result.rowcount == 0:
                raise NotFoundError(
                    f"dataset {dataset_id!r} does not exist", context={"datasetId": dataset_id}
                )
            self._bump(conn)

    def query_datasets(
        self,
        *,
        offset: int = 0,
        limit: int = 50,
        category: Category | str | None = None,
        keyword: str | None = None,
        conforms_to: str | None = None,
        q: str | None = None,
    ) -> Page[Dataset]:
        """Datasets ordered by id, filtered (all given filters must hold); ``q`` searches id and title."""
        _check_paging(offset, limit)
        conds: list[sa.ColumnElement[bool]] = []
        if category is not None:
            conds.append(t.datasets.c.category == Category(category).value)
        for kind, value in (("keyword", keyword), ("conformsTo", conforms_to)):
            if value is not None:
                sub = sa.select(t.dataset_terms.c.dataset_id).where(
                    t.dataset_terms.c.kind == kind, t.dataset_terms.c.value == value
                )
                conds.append(t.datasets.c.id.in_(sub))
        if q:
            pattern = _like(q)
            conds.append(
                sa.or_(
                    sa.func.lower(t.datasets.c.title).like(pattern, escape="\\"),
                    sa.func.lower(t.datasets.c.id).like(pattern, escape="\\"),
                )
            )
        where = sa.and_(sa.true(), *conds)
        with read_only(self.engine) as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(t.datasets).where(where)).scalar_one()
            rows = conn.execute(
                sa.select(t.datasets.c.body, t.datasets.c.data_address)
                .where(where)
                .order_by(t.datasets.c.id)
                .offset(offset)
                .limit(limit)
            ).all()
            conn.rollback()
        return Page([self._load_dataset(r.body, r.data_address) for r in rows], int(total), offset, limit)

    def dataset_revisions(self) -> list[tuple[str, int]]:
        """``(id, revision of its last write)`` of every dataset, ordered by id (cheap: no bodies)."""
        with read_only(self.engine) as conn:
            rows = conn.execute(
                sa.select(t.datasets.c.id, t.datasets.c.revision).order_by(t.datasets.c.id)
            ).all()
            conn.rollback()
        return [(r.id, int(r.revision)) for r in rows]

    def datasets_with_revisions(self, ids: Sequence[str] | None = None) -> dict[str, tuple[int, Dataset]]:
        """``id -> (revision, Dataset)`` for ``ids`` (all datasets when None); unknown ids are absent."""
        cols = (t.datasets.c.id, t.datasets.c.revision, t.datasets.c.body, t.datasets.c.data_address)
        out: dict[str, tuple[int, Dataset]] = {}
        with read_only(self.engine) as conn:
            if ids is None:
                batches: list[sa.Select[tuple[str, int, str, str]]] = [sa.select(*cols)]
            else:
                unique = sorted(set(ids))
                batches = [
                    sa.select(*cols).where(t.datasets.c.id.in_(unique[i : i + 500]))
                    for i in range(0, len(unique), 500)
                ]
            for query in batches:
                for r in conn.execute(query):
                    out[r.id] = (int(r.revision), self._load_dataset(r.body, r.data_address))
            conn.rollback()
        return out

    def all_datasets(self) -> list[Dataset]:
        """Every dataset, ordered by id (the catalog service's cache rebuild)."""
        with read_only(self.engine) as conn:
            rows = conn.execute(
                sa.select(t.datasets.c.body, t.datasets.c.data_address).order_by(t.datasets.c.id)
            ).all()
            conn.rollback()
        return [self._load_dataset(r.body, r.data_address) for r in rows]

    # ------------------------------------------------------------------ policies
    def create_policy(self, p: PolicyDefinition) -> PolicyDefinition:
        now = _now()
        try:
            with self.engine.begin() as conn:
                if conn.execute(sa.select(t.policies.c.id).where(t.policies.c.id == p.id)).first():
                    raise ConflictError(f"policy {p.id!r} already exists", context={"policyId": p.id})
                conn.execute(
                    sa.insert(t.policies).values(
                        id=p.id, body=json.dumps(p.policy), created_at=now, updated_at=now
                    )
                )
                self._bump(conn)
        except sa.exc.IntegrityError as exc:
            raise ConflictError(f"policy {p.id!r} already exists", context={"policyId": p.id}) from exc
        return p

    @staticmethod
    def _load_policy(pid: str, body: str) -> PolicyDefinition:
        try:
            return PolicyDefinition(id=pid, policy=json.loads(body))
        except (ValueError, PydanticValidationError) as exc:
            raise StoreError(f"stored policy {pid!r} is inconsistent: {exc}") from exc

    def get_policy(self, policy_id: str) -> PolicyDefinition:
        with read_only(self.engine) as conn:
            row = conn.execute(sa.select(t.policies.c.body).where(t.policies.c.id == policy_id)).first()
            conn.rollback()
        if row is None:
            raise NotFoundError(f"policy {policy_id!r} does not exist", context={"policyId": policy_id})
        return self._load_policy(policy_id, row.body)

    def update_policy(self, p: PolicyDefinition) -> PolicyDefinition:
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(t.policies)
                .where(t.policies.c.id == p.id)
                .values(body=json.dumps(p.policy), updated_at=_now())
            )
            if result.rowcount == 0:
                raise NotFoundError(f"policy {p.id!r} does not exist", context={"policyId": p.id})
            self._bump(conn)
        return p

    def delete_policy(self, policy_id: str) -> None:
        """Delete a policy; ConflictError naming the contract definitions that still use it."""
        cd = t.contract_definitions
        with self.engine.begin() as conn:
            users = (
                conn.execute(
                    sa.select(cd.c.id)
                    .where(sa.or_(cd.c.access_policy_id == policy_id, cd.c.contract_policy_id == policy_id))
                    .order_by(cd.c.id)
                )
                .scalars()
                .all()
            )
            if users:
                raise ConflictError(
                    f"policy {policy_id!r} is used by contract definition(s) {', '.join(users)}",
                    context={"policyId": policy_id, "contractDefinitionIds": list(users)},
                )
            result = conn.execute(sa.delete(t.policies).where(t.policies.c.id == policy_id))
            if result.rowcount == 0:
                raise NotFoundError(f"policy {policy_id!r} does not exist", context={"policyId": policy_id})
            self._bump(conn)

    def query_policies(
        self, *, offset: int = 0, limit: int = 50, q: str | None = None
    ) -> Page[PolicyDefinition]:
        """Policies ordered by id; ``q`` searches the id."""
        _check_paging(offset, limit)
        where = sa.func.lower(t.policies.c.id).like(_like(q), escape="\\") if q else sa.true()
        with read_only(self.engine) as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(t.policies).where(where)).scalar_one()
            rows = conn.execute(
                sa.select(t.policies.c.id, t.policies.c.body)
                .where(where)
                .order_by(t.policies.c.id)
                .offset(offset)
                .limit(limit)
            ).all()
            conn.rollback()
        return Page([self._load_policy(r.id, r.body) for r in rows], int(total), offset, limit)

    def policies_by_id(self, ids: Sequence[str]) -> dict[str, PolicyDefinition]:
        if not ids:
            return {}
        with read_only(self.engine) as conn:
            rows = conn.execute(
                sa.select(t.policies.c.id, t.policies.c.body).where(t.policies.c.id.in_(set(ids)))
            ).all()
            conn.rollback()
        return {r.id: self._load_policy(r.id, r.body) for r in rows}

    # ------------------------------------------------------------------ contract definitions
    @staticmethod
    def _cd_body(cd: ContractDefinition) -> str:
        return cd.model_dump_json(include={"selector", "accept_any_offer_tag"})

    @staticmethod
    def _check_policies(conn: Connection, cd: ContractDefinition) -> None:
        ids = {cd.access_policy_id, cd.contract_policy_id}
        found = set(conn.execute(sa.select(t.policies.c.id).where(t.policies.c.id.in_(ids))).scalars().all())
        problems = [
            f"{field}: policy {pid!r} does not exist"
            for field, pid in (
                ("access_policy_id", cd.access_policy_id),
                ("contract_policy_id", cd.contract_policy_id),
            )
            if pid not in found
        ]
        if problems:
            raise ValidationError("contract definition refers to missing policies", errors=problems)

    def create_contract_definition(self, cd: ContractDefinition) -> ContractDefinition:
        """Insert ``cd``; ConflictError on a duplicate id, ValidationError if a policy is missing."""
        now = _now()
        try:
            with self.engine.begin() as conn:
                if conn.execute(
                    sa.select(t.contract_definitions.c.id).where(t.contract_definitions.c.id == cd.id)
                ).first():
                    raise ConflictError(
                        f"contract definition {cd.id!r} already exists",
                        context={"contractDefinitionId": cd.id},
                    )
                self._check_policies(conn, cd)
                conn.execute(
                    sa.insert(t.contract_definitions).values(
                        id=cd.id,
                        access_policy_id=cd.access_policy_id,
                        contract_policy_id=cd.contract_policy_id,
                        body=self._cd_body(cd),
                        created_at=now,
                        updated_at=now,
                    )
                )
                self._bump(conn)
        except sa.exc.IntegrityError as exc:
            raise ConflictError(
                f"contract definition {cd.id!r} conflicts with stored state: {str(exc.orig)[:200]}",
                context={"contractDefinitionId": cd.id},
            ) from exc
        return cd

    @staticmethod
    def _load_cd(row: sa.Row[tuple[str, str, str, str]]) -> ContractDefinition:
        try:
            extra = json.loads(row.body)
            return ContractDefinition(
                id=row.id,
                access_policy_id=row.access_policy_id,
                contract_policy_id=row.contract_policy_id,
                **extra,
            )
        except (ValueError, PydanticValidationError) as exc:
            raise StoreError(f"stored contract definition {row.id!r} is inconsistent: {exc}") from exc

    def _cd_select(self) -> sa.Select[tuple[str, str, str, str]]:
        cd = t.contract_definitions
        return sa.select(cd.c.id, cd.c.access_policy_id, cd.c.contract_policy_id, cd.c.body)

    def get_contract_definition(self, cd_id: str) -> ContractDefinition:
        with read_only(self.engine) as conn:
            row = conn.execute(self._cd_select().where(t.contract_definitions.c.id == cd_id)).first()
            conn.rollback()
        if row is None:
            raise NotFoundError(
                f"contract definition {cd_id!r} does not exist", context={"contractDefinitionId": cd_id}
            )
        return self._load_cd(row)

    def update_contract_definition(self, cd: ContractDefinition) -> ContractDefinition:
        with self.engine.begin() as conn:
            self._check_policies(conn, cd)
            result = conn.execute(
                sa.update(t.contract_definitions)
                .where(t.contract_definitions.c.id == cd.id)
                .values(
                    access_policy_id=cd.access_policy_id,
                    contract_policy_id=cd.contract_policy_id,
                    body=self._cd_body(cd),
                    updated_at=_now(),
                )
            )
            if result.rowcount == 0:
                raise NotFoundError(
                    f"contract definition {cd.id!r} does not exist", context={"contractDefinitionId": cd.id}
                )
            self._bump(conn)
        return cd

    def delete_contract_definition(self, cd_id: str) -> None:
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.delete(t.contract_definitions).where(t.contract_definitions.c.id == cd_id)
            )
            if result.rowcount == 0:
                raise NotFoundError(
                    f"contract definition {cd_id!r} does not exist", context={"contractDefinitionId": cd_id}
                )
            self._bump(conn)

    def query_contract_definitions(
        self, *, offset: int = 0, limit: int = 50, policy_id: str | None = None, q: str | None = None
    ) -> Page[ContractDefinition]:
        """Contract definitions ordered by id; ``policy_id`` keeps those using that policy."""
        _check_paging(offset, limit)
        cd = t.contract_definitions
        conds: list[sa.ColumnElement[bool]] = []
        if policy_id is not None:
            conds.append(sa.or_(cd.c.access_policy_id == policy_id, cd.c.contract_policy_id == policy_id))
        if q:
            conds.append(sa.func.lower(cd.c.id).like(_like(q), escape="\\"))
        where = sa.and_(sa.true(), *conds)
        with read_only(self.engine) as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(cd).where(where)).scalar_one()
            rows = conn.execute(
                self._cd_select().where(where).order_by(cd.c.id).offset(offset).limit(limit)
            ).all()
            conn.rollback()
        return Page([self._load_cd(r) for r in rows], int(total), offset, limit)

    def all_contract_definitions(self) -> list[ContractDefinition]:
        with read_only(self.engine) as conn:
            rows = conn.execute(self._cd_select().order_by(t.contract_definitions.c.id)).all()
            conn.rollback()
        return [self._load_cd(r) for r in rows]
