"""Two different mailboxes never share a key; what no provider delivers to is refused, with
the reason, at every door: the store, the CSV import and the subscribe form."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import requests

from newsletter import csvio, store
from newsletter.errors import ImportRejected, InvalidInput
from newsletter.settings import Settings
from newsletter.web import WebApp

from .web_server import serving, web_settings

# The same tests on both stores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_backend")

KELVIN = "\u212aate@example.org"  # KELVIN SIGN, which NFC turns into K
LONG_LOCAL = "a" * 65 + "@example.org"


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[store.StoreConnection]:
    with closing(store.open_store(tmp_path / "newsletter.db")) as connection:
        yield connection


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        (KELVIN, "U+212A KELVIN SIGN"),
        ("straße@example.org", "U+00DF LATIN SMALL LETTER SHARP S"),
        ("zoë@example.org", "outside ASCII"),
        (LONG_LOCAL, "65 characters long; mail servers take at most 64"),
    ],
    ids=["kelvin-sign", "sharp-s", "diaeresis", "65-character-local-part"],
)
def test_undeliverable_addresses_are_refused_with_the_reason(address: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match="invalid address") as caught:
        store.normalize_email(address)
    assert reason in str(caught.value)


def test_64_characters_before_the_at_are_still_fine() -> None:
    address = "a" * 64 + "@example.org"
    assert store.normalize_email(address) == address


def test_the_kelvin_sign_never_updates_kate(conn: store.StoreConnection) -> None:
    kate = store.add_subscriber(conn, "kate@example.org", name="Kate")
    with pytest.raises(InvalidInput, match="KELVIN SIGN"):
        store.add_subscriber(conn, KELVIN, name="Mallory")
    assert store.require_subscriber(conn, kate.id).name == "Kate"
    assert store.count_subscribers(conn) == 1


def test_keys_fold_only_ascii_case() -> None:
    assert store.email_key("Kate@Example.ORG") == store.email_key("kate@example.org")
    assert store.email_key("straße@example.org") != store.email_key("STRASSE@example.org")
    assert store.email_key("ana@straße.de") != store.email_key("ana@strasse.de")


def test_international_domains_are_kept_in_their_ascii_form(conn: store.StoreConnection) -> None:
    assert store.normalize_email("ana@BÜCHER.de") == "ana@xn--bcher-kva.de"
    store.add_subscriber(conn, "ana@bücher.de")
    found = store.get_subscriber(conn, "ANA@xn--bcher-kva.de")
    assert found is not None and found.email == "ana@xn--bcher-kva.de"
    # IDNA 2008 keeps ß: straße.de and strasse.de are two domains, so two subscribers.
    store.add_subscriber(conn, "ana@straße.de")
    store.add_subscriber(conn, "ana@strasse.de")
    assert store.count_subscribers(conn) == 3


def test_import_rejects_each_undeliverable_row_by_line(
    conn: store.StoreConnection, tmp_path: Path, settings_with_web: Settings
) -> None:
    store.add_subscriber(conn, "kate@example.org", name="Kate")
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(
        f"email,name\n{KELVIN},Mallory\nstraße@example.org,S\nSTRASSE@example.org,T\n"
        f"{LONG_LOCAL},L\n",
        "utf-8",
    )
    with pytest.raises(ImportRejected) as caught:
        csvio.import_csv(conn, csv_file, settings_with_web.taxonomy)
    lines = {p.line: p.message for p in caught.value.problems}
    assert sorted(lines) == [2, 3, 5]
    assert "KELVIN SIGN" in lines[2] and "SHARP S" in lines[3] and "at most 64" in lines[5]
    assert store.require_subscriber(conn, "kate@example.org").name == "Kate"
    assert store.count_subscribers(conn) == 1


@pytest.fixture
def settings_with_web(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return web_settings(tmp_path, monkeypatch)


@pytest.mark.parametrize("address", [KELVIN, "straße@example.org", LONG_LOCAL])
def test_the_subscribe_form_refuses_them_with_a_400_and_the_reason(
    settings_with_web: Settings, address: str
) -> None:
    with serving(WebApp(settings_with_web)) as base:
        answer = requests.post(f"{base}/subscribe", data={"email": address}, timeout=5)
    assert answer.status_code == 400
    assert "mail providers cannot deliver" in answer.text or "at most 64" in answer.text
    with closing(store.open_store(settings_with_web.paths.database)) as conn:
        assert store.count_subscribers(conn) == 0
