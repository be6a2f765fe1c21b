"""Realistic sample datasets, policies and contract definitions (used by the demo and tests).

Three datasets of a brake-disc supplier, each with a private data address pointing to a small
payload under ``catalog/sample_data/``:

* a product carbon footprint in PACT v3 shape (category ``carbon``, monthly updates, DQV measures);
* Industry Core shopfloor production tracking of machining line 2 (category ``process``);
* a single-level bill of material as built of a brake assembly (category ``supply-chain``).

Policies use full Catena-X IRIs (the DSP context defines no ``cx-policy:`` prefix). The
``open-access`` definition offers the BOM to everyone; the PCF and production data are offered only
to active Catena-X members (hidden while no policy engine is configured: fail closed).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path

from catalog._models import (
    Agent,
    Category,
    ContractDefinition,
    DataAddress,
    Dataset,
    DatasetSelector,
    PolicyDefinition,
    QualityMeasurement,
    TemporalCoverage,
    UseCaseSample,
)
from catalog._store import CatalogStore
from connector.errors import ConflictError

__all__ = [
    "sample_contract_definitions",
    "sample_data_dir",
    "sample_datasets",
    "sample_policies",
    "seed_samples",
    "seed_tck",
    "tck_dataset_ids",
]

CX = "https://w3id.org/catenax/2025/9/policy/"
METRIC = "https://w3id.org/dadam/metric/"
PUBLISHER = Agent(id="urn:bpn:BPNL000000000DAD", name="Musterwerk Bremsen GmbH")
CC_BY = "https://creativecommons.org/licenses/by/4.0/"
GERMANY = "http://publications.europa.eu/resource/authority/country/DEU"


def sample_data_dir() -> Path:
    """The folder with the sample payload files (inside the installed package)."""
    return Path(str(resources.files("catalog").joinpath("sample_data")))


def _file(name: str) -> tuple[DataAddress, int]:
    path = sample_data_dir() / name
    return DataAddress(type="file", properties={"path": str(path)}), path.stat().st_size


def sample_datasets() -> list[Dataset]:
    pcf_address, pcf_size = _file("pcf-brake-disc-pact-v3.json")
    track_address, track_size = _file("production-tracking-line2.json")
    bom_address, bom_size = _file("bom-brake-assembly-as-built.json")
    return [
        Dataset(
            id="pcf-brake-disc-bd330v",
            title="Product carbon footprint: brake disc BD-330-V",
            description=(
                "Cradle-to-gate product carbon footprint of the ventilated brake disc BD-330-V "
                "(grey cast iron, 330 mm) per piece, following the PACT Technical Specifications v3 "
                "and published for Catena-X PCF exchange."
            ),
            keywords=["pcf", "co2", "carbon footprint", "brake disc", "PACT"],
            category=Category.CARBON,
            type="https://w3id.org/catenax/taxonomy#PcfExchange",
            publisher=PUBLISHER,
            creator=Agent(id="urn:bpn:BPNS000000000LC2", name="Musterwerk sustainability office"),
            issued=datetime(2026, 10, 1, 8, 0, tzinfo=UTC),
            modified=datetime(2026, 11, 1, 8, 0, tzinfo=UTC),
            accrual_periodicity="monthly",
            temporal=TemporalCoverage(start=date(2026, 7, 1), end=date(2026, 9, 30)),
            spatial=[GERMANY],
            conforms_to=[
                "https://wbcsd.github.io/data-exchange-protocol/v3/",
                "urn:samm:io.catenax.pcf:7.0.0#Pcf",
            ],
            media_type="application/json",
            byte_size=pcf_size,
            license=CC_BY,
            purpose="Scope 3 (category 1) reporting and product-level carbon comparisons by customers.",
            usage_notes=(
                "Values are kgCO2e per piece as decimal strings (PACT v3). A new footprint gets a new id; "
                "the old one is listed in precedingPfIds and set to Deprecated."
            ),
            related=["production-tracking-line2"],
            samples=[
                UseCaseSample(
                    title="PCF of one brake disc (PACT v3 ListFootprints response)",
                    description="The payload shape consumers receive; values are real-looking but invented.",
                )
            ],
            quality=[
                QualityMeasurement(
                    metric=METRIC + "primaryDataShare", value=64.0, computed_on=date(2026, 10, 1)
                ),
                QualityMeasurement(metric=METRIC + "technologicalDQR", value=1.6),
                QualityMeasurement(metric=METRIC + "thirdPartyVerified", value=True),
            ],
            version="3.0.0",
            data_address=pcf_address,
        ),
        Dataset(
            id="production-tracking-line2",
            title="Production tracking: machining line 2",
            description=(
                "Process parameters per serialized brake disc from casting, machining and balancing "
                "(Industry Core shopfloor information, ProvideProductionTracking)."
            ),
            keywords=["production tracking", "process parameters", "industry core", "traceability"],
            category=Category.PROCESS,
            type="https://w3id.org/catenax/taxonomy#Submodel",
            publisher=PUBLISHER,
            issued=datetime(2026, 9, 1, 0, 0, tzinfo=UTC),
            modified=datetime(2026, 11, 20, 14, 5, tzinfo=UTC),
            accrual_periodicity="continuous",
            temporal=TemporalCoverage(start=date(2026, 9, 1)),
            spatial=[GERMANY],
            conforms_to=[
                "urn:samm:io.catenax.shopfloor_information.provide_production_tracking:1.0.0#ProvideProductionTracking"
            ],
            media_type="application/json",
            byte_size=track_size,
            license=CC_BY,
            purpose="Quality analysis and root-cause investigation by the customer.",
            usage_notes="One message per part instance; processParameterQuality is ok or nok.",
            related=["bom-brake-assembly-as-built"],
            quality=[QualityMeasurement(metric=METRIC + "completeness", value=0.97)],
            version="1.0.0",
            data_address=track_address,
        ),
        Dataset(
            id="bom-brake-assembly-as-built",
            title="Bill of material as built: brake assembly",
            description=(
                "Single-level bill of material (as built) of a front brake assembly: the brake disc, "
                "two pads and grease, with their suppliers' BPNLs."
            ),
            keywords=["bom", "bill of material", "as built", "industry core", "traceability"],
            category=Category.SUPPLY_CHAIN,
            type="https://w3id.org/catenax/taxonomy#Submodel",
            publisher=PUBLISHER,
            issued=datetime(2026, 11, 20, 15, 10, tzinfo=UTC),
            accrual_periodicity="irregular",
            spatial=[GERMANY],
            conforms_to=["urn:samm:io.catenax.single_level_bom_as_built:3.0.0#SingleLevelBomAsBuilt"],
            media_type="application/json",
            byte_size=bom_size,
            license=CC_BY,
            purpose="Traceability of components down the supply chain.",
            related=["production-tracking-line2"],
            version="3.0.0",
            transfer_types=["HttpData-PULL", "HttpData-PUSH", "AmazonS3-PUSH"],
            data_address=bom_address,
        ),
    ]


def sample_policies() -> list[PolicyDefinition]:
    return [
        PolicyDefinition(id="open-access", policy={"@type": "Set", "permission": [{"action": "use"}]}),
        PolicyDefinition(
            id="cx-member-access",
            policy={
                "@type": "Set",
                "permission": [
                    {
                        "action": "use",
                        "constraint": [
                            {"leftOperand": CX + "Membership", "operator": "eq", "rightOperand": "active"}
                        ],
                    }
                ],
            },
        ),
        PolicyDefinition(
            id="pcf-usage",
            policy={
                "@type": "Set",
                "permission": [
                    {
                        "action": "use",
                        "constraint": [
                            {
                                "and": [
                                    {
                                        "leftOperand": CX + "FrameworkAgreement",
                                        "operator": "eq",
                                        "rightOperand": "DataExchangeGovernance:1.0",
                                    },
                                    {
                                        "leftOperand": CX + "UsagePurpose",
                                        "operator": "isAnyOf",
                                        "rightOperand": ["cx.pcf.base:1"],
                                    },
                                ]
                            }
                        ],
                    }
                ],
            },
        ),
        PolicyDefinition(id="use-unrestricted", policy={"@type": "Set", "permission": [{"action": "use"}]}),
    ]


def sample_contract_definitions() -> list[ContractDefinition]:
    return [
        ContractDefinition(
            id="pcf-members",
            access_policy_id="cx-member-access",
            contract_policy_id="pcf-usage",
            selector=DatasetSelector(categories=[Category.CARBON]),
        ),
        ContractDefinition(
            id="process-members",
            access_policy_id="cx-member-access",
            contract_policy_id="use-unrestricted",
            selector=DatasetSelector(dataset_ids=["production-tracking-line2"]),
        ),
        ContractDefinition(
            id="bom-open",
            access_policy_id="open-access",
            contract_policy_id="use-unrestricted",
            selector=DatasetSelector(categories=[Category.SUPPLY_CHAIN]),
        ),
    ]


def seed_samples(store: CatalogStore) -> None:
    """Store the sample policies, datasets and contract definitions; existing ids are left alone."""
    for p in sample_policies():
        with contextlib.suppress(ConflictError):
            store.create_policy(p)
    for ds in sample_datasets():
        with contextlib.suppress(ConflictError):
            store.create_dataset(ds)
    for cd in sample_contract_definitions():
        with contextlib.suppress(ConflictError):
            store.create_contract_definition(cd)


def tck_dataset_ids() -> list[str]:
    """Dataset ids the DSP TCK's sample configuration expects (CAT:01-01/02, CN:01-01 … CN:03-04)."""
    cn = [f"ACN01{i:02d}" for i in range(1, 5)] + [f"ACN02{i:02d}" for i in range(1, 8)]
    cn += [f"ACN03{i:02d}" for i in range(1, 5)]
    return ["CAT0101", "CAT0102", *cn]


def seed_tck(store: CatalogStore) -> None:
    """Seed what the DSP TCK provider tests need: datasets CAT0101, CAT0102 and ACN0xyz (CAT0103 must
    not exist), open policies, and contract definition ``CD123`` offering the ACN datasets with
    ``accept_any_offer_tag`` so the TCK's fixed offer ids ``CD123:ACN0xyz:456`` resolve (decision 0101).
    Existing ids are left alone.
    """
    template = sample_datasets()[2]
    with contextlib.suppress(ConflictError):
        store.create_policy(PolicyDefinition(id="tck-open", policy={"permission": [{"action": "use"}]}))
    for ds_id in tck_dataset_ids():
        with contextlib.suppress(ConflictError):
            store.create_dataset(
                template.model_copy(update={"id": ds_id, "title": f"TCK dataset {ds_id}", "related": []})
            )
    definitions = [
        ContractDefinition(
            id="tck-catalog",
            access_policy_id="tck-open",
            contract_policy_id="tck-open",
            selector=DatasetSelector(dataset_ids=["CAT0101", "CAT0102"]),
        ),
        ContractDefinition(
            id="CD123",
            access_policy_id="tck-open",
            contract_policy_id="tck-open",
            selector=DatasetSelector(dataset_ids=[i for i in tck_dataset_ids() if i.startswith("ACN")]),
            accept_any_offer_tag=True,
        ),
    ]
    for cd in definitions:
        with contextlib.suppress(ConflictError):
            store.create_contract_definition(cd)
