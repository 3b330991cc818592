from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.database_url import DatabaseUrl
from newsletter.errors import SettingsError
from newsletter.settings import find_settings, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "newsletter.toml"
    path.write_text(text, "utf-8")
    return path


def test_embedded_defaults_need_no_file(tmp_path: Path) -> None:
    settings = load_settings(None, root=tmp_path)
    assert settings.source is None
    assert settings.provider == "outbox"
    assert settings.paths.database == tmp_path / "newsletter.db"
    assert "Empathy" in settings.taxonomy


def test_settings_are_read_and_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[newsletter]\nname = "Digest"\nfrom_email = "News@Example.ORG"\nreply_to = "ed@example.org"\n'
        '[paths]\nbuild = "out"\n[provider]\nname = "smtp"\nhost = "mail.example.org"\n',
    )
    settings = load_settings(path)
    assert settings.name == "Digest"
    assert settings.from_email == "news@example.org"
    assert settings.reply_to == "ed@example.org"
    assert settings.paths.build == tmp_path / "out"
    assert settings.provider == "smtp"
    assert settings.provider_options == {"host": "mail.example.org"}
    assert settings.list_id == "digest.example.org"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[newsletter]\nnmae = "x"\n', r"newsletter.toml: newsletter.nmae: unknown key"),
        ('[newsleter]\nname = "x"\n', r"unknown table \[newsleter\]"),
        (
            '[newsletter]\nfrom_email = "not an address"\n',
            r"newsletter.from_email: 'not an address' is not an email",
        ),
        (
            '[newsletter]\nbase_url = "digest.example.org"\n',
            r"newsletter.base_url: must be an http\(s\) URL",
        ),
        ('[style]\naccent_color = "teal"\n', r"style.accent_color: must be a colour like #1f5f5b"),
        ("[newsletter]\nname = 3\n", r"newsletter.name: must be a string"),
        ('[newsletter]\npostal_address = ""\n', r"newsletter.postal_address: must not be empty"),
        ('[newsletter\nname = "x"\n', r"newsletter.toml: not valid TOML"),
        ('[newsletter]\ntopics_file = "missing.txt"\n', r"newsletter.topics_file: cannot read"),
    ],
    ids=[
        "unknown-key",
        "unknown-table",
        "bad-sender",
        "bad-base-url",
        "bad-colour",
        "wrong-type",
        "no-postal-address",
        "not-toml",
        "missing-topics-file",
    ],
)
def test_a_wrong_setting_names_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(write(tmp_path, text))


def test_a_newsletter_may_replace_the_taxonomy(tmp_path: Path) -> None:
    (tmp_path / "topics.txt").write_text("# ours\nSleep\nGrief\n", "utf-8")
    settings = load_settings(write(tmp_path, '[newsletter]\ntopics_file = "topics.txt"\n'))
    assert settings.taxonomy.topics == ("Sleep", "Grief")


def test_settings_are_found_in_a_parent_folder(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    nested = tmp_path / "issues" / "drafts"
    nested.mkdir(parents=True)
    assert find_settings(nested) == path


def test_crossref_settings_default_to_the_real_services_and_the_sender(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[newsletter]\nfrom_email = "news@example.org"\n'))
    assert settings.crossref.base_url == "https://api.crossref.org"
    assert settings.crossref.doi_base_url == "https://doi.org"
    assert settings.crossref.mailto == "news@example.org"
    assert settings.crossref.timeout == 10.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('base_url = "api.crossref.org"', "crossref.base_url: must be an http(s) URL"),
        ('mailto = "nobody"', "crossref.mailto: 'nobody' is not an email address"),
        ("timeout = 0", "crossref.timeout: must be a number of seconds above 0, not 0"),
        ('mail_to = "a@example.org"', "crossref.mail_to: unknown key; [crossref] takes: base_url"),
    ],
    ids=["url", "mailto", "timeout", "unknown"],
)
def test_crossref_settings_are_checked(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, f"[crossref]\n{line}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert f"{path}: {message}" in str(caught.value)


def test_the_store_is_a_file_or_a_postgresql_url_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    config = tmp_path / "newsletter.toml"
    config.write_text('[paths]\ndatabase = "postgres://news:pw@db.example.org:5433/list"\n')
    location = load_settings(config).paths.database
    assert isinstance(location, DatabaseUrl)
    assert location.url == "postgres://news:pw@db.example.org:5433/list"
    assert str(location) == "postgres://news:***@db.example.org:5433/list"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", "data/list.db")
    assert load_settings(config).paths.database == tmp_path / "data" / "list.db"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("mysql://db.example.org/list", "mysql:// is not a store this tool knows"),
        ("postgresql://db.example.org", "names no database"),
        ("postgresql://db.example.org:port/list", "is not a valid URL"),
        ("postgresql://db.example.org/my list", r"contains the character U\+0020"),
    ],
)
def test_a_store_url_that_cannot_work_is_refused_with_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    config = tmp_path / "newsletter.toml"
    config.write_text(f'[paths]\ndatabase = "{value}"\n')
    with pytest.raises(SettingsError, match=message) as raised:
        load_settings(config)
    assert "paths.database" in str(raised.value)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", "postgresql://u:secret@h/")
    with pytest.raises(SettingsError, match=r"\$NEWSLETTER_DATABASE_URL") as raised:
        load_settings(config)
    assert "secret" not in str(raised.value)
