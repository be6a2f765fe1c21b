"""The data bank through the management API and the CLI (`dadam bank verify` names altered rows)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import sqlalchemy as sa
from pydantic import SecretStr

from connector.app import create_app
from connector.settings import Settings
from connector.store import create_engine

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

BANK = "/api/management/v1/bank"


def test_bank_api_and_cli_verify(tmp_path: Path) -> None:
    db = f"sqlite:///{(tmp_path / 'bank.db').as_posix()}"
    settings = Settings(data_dir=tmp_path, database_url=SecretStr(db), api_key=SecretStr("k"))
    h = {"X-Api-Key": "k"}
    with TestClient(create_app(settings)) as c:
        assert c.get(BANK + "/accounts").status_code == 401
        r = c.post(BANK + "/accounts", headers=h, json=[{"id": "consumer", "ledger": "EUR", "flags": 1},
                                                      {"id": "provider", "ledger": "EUR"}, {"id": "bank", "ledger": "EUR"}])  # fmt: skip
        assert [x["result"] for x in r.json()["results"]] == ["created"] * 3
        r = c.post(BANK + "/transfers", headers=h, json=[
            {"id": "fund", "debit_account_id": "bank", "credit_account_id": "consumer", "amount": 500, "ledger": "EUR"},
            {"id": "pay", "debit_account_id": "consumer", "credit_account_id": "provider", "amount": 700, "ledger": "EUR"},
        ])  # fmt: skip
        assert [x["result"] for x in r.json()["results"]] == ["created", "exceeds_credits"]
        assert c.get(BANK + "/accounts/consumer", headers=h).json()["balance"] == 500
        assert c.get(BANK + "/verify", headers=h).json() == {"ok": True, "problems": []}
        bad = c.post(BANK + "/transfers", headers=h, json=[{"amount": 1}])
        assert bad.status_code == 400
        assert "KeyError" in bad.text
    env = {**os.environ, "DADAM_DATABASE_URL": db, "DADAM_DATA_DIR": str(tmp_path)}
    cli = [sys.executable, "-m", "connector.cli", "bank"]
    ok = subprocess.run([*cli, "verify"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    engine = create_engine(db)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE ledger_transfers SET amount = 5 WHERE id = 'fund'"))
    engine.dispose()
    failed = subprocess.run([*cli, "verify"], env=env, capture_output=True, text=True)
    assert failed.returncode == 1
    assert "transfer fund" in failed.stderr
    listed = subprocess.run([*cli, "transfers", "--csv"], env=env, capture_output=True, text=True, check=True)
    assert listed.stdout.splitlines()[0].startswith("id,debit_account_id")


def test_running_connector_signs_checkpoints_periodically(tmp_path: Path) -> None:
    import time

    db = f"sqlite:///{(tmp_path / 'bank.db').as_posix()}"
    settings = Settings(
        data_dir=tmp_path, database_url=SecretStr(db), api_key=SecretStr("k"), bank_checkpoint_seconds=1
    )
    h = {"X-Api-Key": "k"}
    with TestClient(create_app(settings)) as c:
        c.post(
            BANK + "/accounts", headers=h, json=[{"id": "a", "ledger": "EUR"}, {"id": "b", "ledger": "EUR"}]
        )
        c.post(BANK + "/transfers", headers=h, json=[{"id": "t", "debit_account_id": "a", "credit_account_id": "b",
                                                     "amount": 5, "ledger": "EUR"}])  # fmt: skip
        engine = create_engine(db)
        size = 0
        for _ in range(50):
            with engine.connect() as conn:
                size = conn.execute(sa.text("SELECT max(size) FROM bank_audit_checkpoints")).scalar() or 0
            if size:
                break
            time.sleep(0.1)
        engine.dispose()
        assert size >= 2  # accounts + transfer entries are covered by a signed tree head
        assert c.get(BANK + "/verify", headers=h).json() == {"ok": True, "problems": []}


def test_statements_json_csv_and_price_plans_over_the_api(tmp_path: Path) -> None:
    db = f"sqlite:///{(tmp_path / 'bank.db').as_posix()}"
    settings = Settings(data_dir=tmp_path, database_url=SecretStr(db), api_key=SecretStr("k"))
    h = {"X-Api-Key": "k"}
    party = "did:web:consumer.example"
    with TestClient(create_app(settings)) as c:
        assert c.post(
            BANK + "/deposits", headers=h, json={"party": party, "amount": 900, "ref": "d1"}
        ).status_code in (200, 201)
        usage = [{"id": f"u{i}", "agreement_id": "agr", "transfer_id": "t", "dataset_id": "d", "category": "carbon",
                  "bytes": 10, "records": 1, "calls": 1, "started_at": 1.0, "ended_at": 2.0, "outcome": "ok",
                  "consumer": party, "provider": settings.did} for i in range(2)]  # fmt: skip
        assert c.post(BANK + "/usage", headers=h, json=usage).status_code in (200, 201)
        price = {"payAmount": "0.50", "currency": "EUR", "unitOfCount": "call"}
        r = c.post(BANK + "/receipts", headers=h, json={"agreementId": "agr", "party": party, "price": price})
        assert r.status_code in (200, 201), r.text
        quoted = party.replace(":", "%3A")
        doc = c.get(f"{BANK}/statements/{quoted}", headers=h).json()
        assert doc["statement"]["consumer"] == party and doc["provider_signature"]
        csv_text = c.get(f"{BANK}/statements/{quoted}", headers=h, params={"format": "csv"}).text
        lines = csv_text.strip().splitlines()
        assert (
            lines[0] == "receipt,agreement,status,amount,signedBy" and ",agr,issued,100,provider" in lines[1]
        )
        assert c.get(BANK + "/statements", headers=h).json() == {"items": []}  # none exchanged yet
        plan = {"currency": "EUR", "unitOfCount": "MB", "tiers": [{"upTo": None, "unitPrice": "0.02"}]}
        r = c.post(BANK + "/price-plans", headers=h, json={"id": "p1", "plan": plan})
        assert r.status_code == 201 and r.json()["reference"].endswith(
            "/bank/price-plans/p1#sha256=" + r.json()["hash"][7:]
        )
        assert (
            c.post(
                BANK + "/price-plans", headers=h, json={"id": "p1", "plan": {**plan, "currency": "USD"}}
            ).status_code
            == 409
        )
        assert c.get(BANK + "/price-plans/p1", headers=h).json()["plan"] == plan
    env = {**os.environ, "DADAM_DATABASE_URL": db, "DADAM_DATA_DIR": str(tmp_path)}
    cli = [sys.executable, "-m", "connector.cli", "bank"]
    listed = subprocess.run([*cli, "receipts", "--csv"], env=env, capture_output=True, text=True, check=True)
    header, row = listed.stdout.splitlines()[:2]
    assert "status" in header.split(",") and "issued" in row and party in row
    as_json = subprocess.run(
        [*cli, "receipts", "--party", party], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(as_json.stdout)[0]["amount"] == 100
    kept = subprocess.run([*cli, "statements"], env=env, capture_output=True, text=True, check=True)
    assert json.loads(kept.stdout) == []
