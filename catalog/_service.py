"""CatalogService: what a caller may see, as DSP 2025-1 compact JSON; offer resolution for negotiations.

How a catalog is built for a caller:

1. the access policy of every contract definition is evaluated for the caller (once per policy);
2. a dataset is listed when at least one permitted contract definition selects it; each such
   definition contributes one Offer (``hasPolicy``) built from its contract policy;
3. the request's filter and paging apply to that list (ordered by dataset id).

A dataset no definition offers to the caller is invisible to it (catalog and ``dataset()`` alike:
"not found" and "not for you" look the same). The service keeps an in-memory snapshot of the
catalog (models, per-dataset JSON fragments, selector matches) tagged with the store revision; each
request checks the revision (one indexed read) and rebuilds when another writer changed anything.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from catalog import _dsp
from catalog import _tables as t
from catalog._access import AccessEvaluator, FailClosedEvaluator
from catalog._filter import CatalogFilter
from catalog._models import ContractDefinition, Dataset, PolicyDefinition
from catalog._store import CatalogStore
from connector.errors import NotFoundError, ValidationError
from connector.identity import Caller

__all__ = ["CatalogGuard", "CatalogPage", "CatalogService", "ResolvedOffer", "split_offer_id"]

_CACHE_ENTRIES = 256


@dataclass(frozen=True, slots=True)
class CatalogPage:
    """One catalog page: the compact JSON body and where it sits in the caller's whole list."""

    body: bytes
    total: int
    offset: int
    limit: int | None

    @property
    def next_offset(self) -> int | None:
        if self.limit is None:
            return None
        nxt = self.offset + self.limit
        return nxt if nxt < self.total else None

    @property
    def prev_offset(self) -> int | None:
        if self.offset <= 0:
            return None
        return max(0, self.offset - (self.limit or self.offset))

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = orjson.loads(self.body)
        return result


@dataclass(frozen=True, slots=True)
class ResolvedOffer:
    """An offer id resolved for a caller: what is offered, under which definition, with which policy."""

    dataset: Dataset
    contract_definition: ContractDefinition
    #: The Offer as the catalog shows it (``@id``, ``@type``, ``assigner``, rules; no ``target``).
    offer_policy_json: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CatalogGuard:
    """A condition for a write that depends on the catalog: a row of ``table`` with ``values``
    (the catalog revision a decision was made on) still exists."""

    table: sa.Table
    values: Mapping[str, Any]


def split_offer_id(offer_id: str) -> tuple[str, str, str]:
    """``<contractDefinitionId>:<datasetId>:<tag>`` split on the first and last ``:``."""
    first, last = offer_id.find(":"), offer_id.rfind(":")
    if first <= 0 or last <= first + 1 or last == len(offer_id) - 1:
        raise ValidationError(
            f"malformed offer id {offer_id!r}",
            errors=["offer id: expected <contractDefinitionId>:<datasetId>:<tag>"],
            context={"offerId": offer_id},
        )
    return offer_id[:first], offer_id[first + 1 : last], offer_id[last + 1 :]


@dataclass(slots=True)
class _Entry:
    """A dataset as of its last write, with its serialised fragments (built lazily, kept across snapshots)."""

    revision: int
    dataset: Dataset
    head: bytes | None = None
    distribution: bytes | None = None


@dataclass
class _Snapshot:
    revision: int
    datasets: list[Dataset]
    index: dict[str, int]
    definitions: list[ContractDefinition]
    policies: dict[str, PolicyDefinition]
    #: contract definition id -> indices of the datasets it selects (ascending)
    selected: dict[str, list[int]]
    selected_sets: dict[str, frozenset[int]]
    #: contract definition id -> b'"@type":"Offer",...' (the offer without its @id), and the tag
    offer_tail: dict[str, bytes]
    tags: dict[str, str]
    entries: list[_Entry]
    assembled: dict[tuple[int, tuple[str, ...]], bytes] = field(default_factory=dict)
    visible: OrderedDict[tuple[frozenset[str], CatalogFilter], list[tuple[int, tuple[str, ...]]]] = field(
        default_factory=OrderedDict
    )


def _inner(obj: Any) -> bytes:
    """orjson bytes of a dict without the enclosing braces (for splicing)."""
    return orjson.dumps(obj)[1:-1]


class CatalogService:
    """Builds catalogs and datasets for callers, resolves offers, exports DCAT-AP Turtle."""

    def __init__(
        self,
        store: CatalogStore,
        *,
        participant_id: str,
        dsp_base_url: str,
        access_evaluator: AccessEvaluator | None = None,
        title: str | None = None,
    ) -> None:
        self.store = store
        self.participant_id = participant_id
        self.dsp_base_url = dsp_base_url.rstrip("/")
        self.access_evaluator: AccessEvaluator = access_evaluator or FailClosedEvaluator()
        self.title = title or f"Data catalog of {participant_id}"
        self.catalog_id = f"{self.dsp_base_url}/catalog"
        self.service = _dsp.data_service(f"{participant_id}#dsp-2025-1", self.dsp_base_url)
        self._lock = threading.Lock()
        self._snap: _Snapshot | None = None
        self._entries: dict[str, _Entry] = {}
        self._catalog_prefix = _inner(
            {
                "@context": _dsp.CONTEXT,
                "@id": self.catalog_id,
                "@type": "Catalog",
                "participantId": participant_id,
                "dct:title": self.title,
                "service": [self.service],
            }
        )
        self._context_prefix = b'"@context":' + orjson.dumps(_dsp.CONTEXT)

    # ------------------------------------------------------------------ snapshot
    def _snapshot(self) -> _Snapshot:
        rev = self.store.revision()
        snap = self._snap
        if snap is not None and snap.revision == rev:
            return snap
        with self._lock:
            snap = self._snap
            if snap is not None and snap.revision == rev:
                return snap
            snap = self._build(rev)
            self._snap = snap
            return snap

    def _load_entries(self) -> list[_Entry]:
        """Every dataset, reusing cached entries whose revision did not change (incremental reload)."""
        revisions = self.store.dataset_revisions()
        cached = self._entries
        stale = [i for i, r in revisions if (e := cached.get(i)) is None or e.revision != r]
        loaded: dict[str, tuple[int, Dataset]] = {}
        if stale:
            whole = len(stale) > len(revisions) // 2
            loaded = self.store.datasets_with_revisions(None if whole else stale)
        entries: dict[str, _Entry] = {}
        for ds_id, r in revisions:
            entry = cached.get(ds_id)
            if entry is None or entry.revision != r:
                got = loaded.get(ds_id)
                if got is None:  # deleted between the two reads; the next revision check reloads
                    continue
                entry = _Entry(got[0], got[1])
            entries[ds_id] = entry
        self._entries = entries
        return list(entries.values())

    def _build(self, rev: int) -> _Snapshot:
        entries = self._load_entries()
        datasets = [e.dataset for e in entries]
        definitions = self.store.all_contract_definitions()
        needed = {cd.access_policy_id for cd in definitions} | {cd.contract_policy_id for cd in definitions}
        policies = self.store.policies_by_id(sorted(needed))
        index = {ds.id: i for i, ds in enumerate(datasets)}
        selected: dict[str, list[int]] = {}
        for cd in definitions:
            sel = cd.selector
            if sel.match_all:
                selected[cd.id] = list(range(len(datasets)))
            elif not sel.has_criteria():
                selected[cd.id] = sorted(index[i] for i in set(sel.dataset_ids) if i in index)
            else:
                selected[cd.id] = [i for i, ds in enumerate(datasets) if sel.matches(ds)]
        offer_tail: dict[str, bytes] = {}
        tags: dict[str, str] = {}
        for cd in definitions:
            policy = policies[cd.contract_policy_id].policy
            tags[cd.id] = _dsp.policy_tag(policy)
            offer_tail[cd.id] = _inner(_dsp.offer("", policy, self.participant_id))[len(b'"@id":"",') :]
        selected_sets = {k: frozenset(v) for k, v in selected.items()}
        return _Snapshot(
            rev, datasets, index, definitions, policies, selected, selected_sets, offer_tail, tags, entries
        )

    # ------------------------------------------------------------------ fragments
    def _head(self, snap: _Snapshot, i: int) -> bytes:
        entry = snap.entries[i]
        if entry.head is None:
            entry.head = _inner(_dsp.dataset_head(entry.dataset))
        return entry.head

    def _distribution(self, snap: _Snapshot, i: int) -> bytes:
        entry = snap.entries[i]
        if entry.distribution is None:
            entry.distribution = orjson.dumps(_dsp.distributions(entry.dataset, self.service))
        return entry.distribution

    def offer_id(self, cd: ContractDefinition, dataset_id: str, policy: Mapping[str, Any]) -> str:
        """The offer id of ``dataset_id`` under ``cd`` with contract policy ``policy``."""
        return f"{cd.id}:{dataset_id}:{_dsp.policy_tag(policy)}"

    def _dataset_bytes(self, snap: _Snapshot, i: int, cds: tuple[str, ...]) -> bytes:
        key = (i, cds)
        cached = snap.assembled.get(key)
        if cached is not None:
            return cached
        ds = snap.datasets[i]
        offers = b",".join(
            b'{"@id":' + orjson.dumps(f"{cd}:{ds.id}:{snap.tags[cd]}") + b"," + snap.offer_tail[cd] + b"}"
            for cd in cds
        )
        dist = self._distribution(snap, i)
        body = b"{" + self._head(snap, i) + b',"hasPolicy":[' + offers + b'],"distribution":' + dist + b"}"
        snap.assembled[key] = body
        return body

    # ------------------------------------------------------------------ access
    def _permitted(self, snap: _Snapshot, caller: Caller) -> frozenset[str]:
        decisions: dict[str, bool] = {}
        permitted = []
        for cd in snap.definitions:
            pid = cd.access_policy_id
            if pid not in decisions:
                decisions[pid] = self.access_evaluator.evaluate(snap.policies[pid].policy, caller).permitted
            if decisions[pid]:
                permitted.append(cd.id)
        return frozenset(permitted)

    def _visible(
        self, snap: _Snapshot, permitted: frozenset[str], flt: CatalogFilter
    ) -> list[tuple[int, tuple[str, ...]]]:
        key = (permitted, flt)
        hit = snap.visible.get(key)
        if hit is not None:
            snap.visible.move_to_end(key)
            return hit
        offers: dict[int, list[str]] = {}
        for cd in snap.definitions:  # ordered by id, so each dataset's offers are too
            if cd.id in permitted:
                for i in snap.selected[cd.id]:
                    offers.setdefault(i, []).append(cd.id)
        result = [(i, tuple(offers[i])) for i in sorted(offers) if not flt or flt.matches(snap.datasets[i])]
        snap.visible[key] = result
        if len(snap.visible) > _CACHE_ENTRIES:
            snap.visible.popitem(last=False)
        return result

    # ------------------------------------------------------------------ public API
    def catalog(
        self,
        caller: Caller,
        filter: CatalogFilter | None = None,
        offset: int = 0,
        limit: int | None = 50,
    ) -> CatalogPage:
        """The caller's catalog page (``limit=None``: everything) as compact DSP JSON."""
        if offset < 0 or (limit is not None and limit < 1):
            raise ValidationError(
                "invalid paging",
                errors=[f"offset must be >= 0 and limit >= 1, got offset={offset}, limit={limit}"],
            )
        snap = self._snapshot()
        visible = self._visible(snap, self._permitted(snap, caller), filter or CatalogFilter())
        window = visible[offset:] if limit is None else visible[offset : offset + limit]
        parts = [b"{", self._catalog_prefix]
        if window:
            parts.append(b',"dataset":[')
            parts.append(b",".join(self._dataset_bytes(snap, i, cds) for i, cds in window))
            parts.append(b"]")
        parts.append(b"}")
        return CatalogPage(b"".join(parts), len(visible), offset, limit)

    def dataset(self, caller: Caller, dataset_id: str) -> bytes:
        """The root Dataset (with ``@context``) if the caller may see it; NotFoundError otherwise."""
        snap = self._snapshot()
        i = snap.index.get(dataset_id)
        if i is not None:
            permitted = self._permitted(snap, caller)
            cds = tuple(
                cd.id for cd in snap.definitions if cd.id in permitted and i in snap.selected_sets[cd.id]
            )
            if cds:
                body = self._dataset_bytes(snap, i, cds)
                return b"{" + self._context_prefix + b"," + body[1:]
        raise NotFoundError(
            f"dataset {dataset_id!r} is not in the catalog", context={"datasetId": dataset_id}
        )

    def resolve_offer(self, offer_id: str, caller: Caller) -> ResolvedOffer:
        """Resolve an offer id from a ContractRequestMessage for ``caller``.

        Raises ValidationError for a malformed id and NotFoundError (with the reason) when the
        definition or dataset is unknown, the dataset is not selected by the definition, the tag
        does not match the current contract policy (unless the definition accepts any tag), or the
        caller does not satisfy the access policy.
        """
        return self._resolve(self._snapshot(), offer_id, caller)

    def resolve_offer_as_of(self, offer_id: str, caller: Caller) -> tuple[ResolvedOffer, CatalogGuard]:
        """:meth:`resolve_offer` against the catalog as last loaded by this process, without
        reading the current revision (one round trip fewer), and the guard that says which
        revision that was. The caller writes what it decides only if the guard still holds (the
        catalog row still has that revision, e.g. as a condition of its INSERT), and otherwise
        decides again with :meth:`resolve_offer`. An error from here may come from an outdated
        catalog: check it with :meth:`resolve_offer` before answering it."""
        snap = self._snap or self._snapshot()
        return self._resolve(snap, offer_id, caller), CatalogGuard(
            t.revision, {"id": 1, "value": snap.revision}
        )

    def _resolve(self, snap: _Snapshot, offer_id: str, caller: Caller) -> ResolvedOffer:
        cd_id, dataset_id, tag = split_offer_id(offer_id)
        ctx = {"offerId": offer_id}
        cd = next((c for c in snap.definitions if c.id == cd_id), None)
        if cd is None:
            raise NotFoundError(f"offer {offer_id!r}: no contract definition {cd_id!r}", context=ctx)
        i = snap.index.get(dataset_id)
        if i is None:
            raise NotFoundError(f"offer {offer_id!r}: no dataset {dataset_id!r}", context=ctx)
        if i not in snap.selected_sets[cd.id]:
            raise NotFoundError(
                f"offer {offer_id!r}: dataset {dataset_id!r} is not offered under contract definition {cd_id!r}",
                context=ctx,
            )
        if tag != snap.tags[cd.id] and not cd.accept_any_offer_tag:
            raise NotFoundError(
                f"offer {offer_id!r} is outdated: the contract policy of {cd_id!r} changed "
                f"(current offer id ends in :{snap.tags[cd.id]})",
                context=ctx,
            )
        decision = self.access_evaluator.evaluate(snap.policies[cd.access_policy_id].policy, caller)
        if not decision.permitted:
            raise NotFoundError(
                f"offer {offer_id!r} is not available to {caller.did}: "
                + "; ".join(decision.reasons or ["denied"]),
                context=ctx,
            )
        policy = snap.policies[cd.contract_policy_id].policy
        return ResolvedOffer(snap.datasets[i], cd, _dsp.offer(offer_id, policy, self.participant_id))

    def to_turtle(self, dataset_ids: Sequence[str] | None = None) -> str:
        """The catalog (all datasets, or those listed) as DCAT-AP Turtle for data portals."""
        from catalog._turtle import catalog_graph

        snap = self._snapshot()
        chosen = (
            snap.datasets
            if dataset_ids is None
            else [snap.datasets[snap.index[i]] for i in dataset_ids if i in snap.index]
        )
        graph = catalog_graph(
            chosen,
            catalog_id=self.catalog_id,
            title=self.title,
            participant_id=self.participant_id,
            service=self.service,
        )
        text: str = graph.serialize(format="turtle")
        return text
