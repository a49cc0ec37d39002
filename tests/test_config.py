import ipaddress
from pathlib import Path

import pytest

from xrayvision.config import (
    DEFAULT_REGIONS,
    MASK,
    ROLES,
    ConfigError,
    effective_settings,
    load_settings,
    mask_url,
)
from xrayvision.passwords import hash_password

HASH = hash_password("pw", n=2**10)


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


def test_defaults_without_files_or_env(tmp_path):
    s = load_settings(tmp_path, env={})
    assert s.server.roles == ROLES
    assert s.web.host == "127.0.0.1" and s.web.port == 8080
    assert s.dicom.ae_title == "XRAYVISION" and s.dicom.port == 11112
    assert s.ai.model == "google/medgemma-4b-it"
    assert s.relay.concurrency == 4
    assert s.processing.severity_threshold == 5
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("data/xrayvision.db")
    assert s.regions == DEFAULT_REGIONS
    assert s.warnings == ()


def test_precedence_defaults_cfg_local_env(tmp_path):
    write(tmp_path, "xrayvision.cfg", "[web]\nport = 9001\nrate_limit = 10\n[dicom]\nport = 2000\n")
    write(tmp_path, "local.cfg", "[web]\nport = 9002\n[relay]\nconcurrency = 8\n")
    s = load_settings(tmp_path, env={"XRAYVISION_WEB_PORT": "9003"})
    assert s.web.port == 9003  # env beats local.cfg beats xrayvision.cfg
    assert s.web.rate_limit == 10  # only in xrayvision.cfg
    assert s.relay.concurrency == 8  # only in local.cfg
    assert s.dicom.port == 2000
    assert s.ai.timeout == 300.0  # built-in default


def test_env_sets_every_kind_of_value(tmp_path):
    env = {
        "XRAYVISION_SERVER_ROLES": "relay,web",
        "XRAYVISION_WEB_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7",
        "XRAYVISION_WEB_METRICS_AUTH": "yes",
        "XRAYVISION_DICOM_ALLOWED_CALLING_AETS": "PACS1, ER_CR01",
        "XRAYVISION_AI_SECONDARY_URL": "http://gpu2:8000/",
        "XRAYVISION_DATABASE_URL": "postgres://u:p@db:5432/x",
        "XRAYVISION_USERS_ALICE": f"radiologist:{HASH}",
        "XRAYVISION_REGIONS_CHEST": "thorax, CHEST",
        "XRAYVISION_PRIORITY_ER_CR01": "stat",
    }
    s = load_settings(tmp_path, env=env)
    assert s.server.roles == ("relay", "web")
    assert s.web.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.7/32"))
    assert s.web.metrics_auth is True
    assert s.dicom.allowed_calling_aets == ("PACS1", "ER_CR01")
    assert s.ai.secondary_url == "http://gpu2:8000"
    assert s.database_url == "postgresql+psycopg://u:p@db:5432/x"
    assert s.users["alice"].role == "radiologist"
    assert s.regions["chest"] == ("thorax", "chest")
    assert s.priority_for("ER_CR01") == 3
    assert s.priority_for("OTHER") == 0 and s.priority_for(None) == 0


@pytest.mark.parametrize(("written", "base"), [
    ("http://gpu1:8000/v1", "http://gpu1:8000"),
    ("http://gpu1:8000/v1/", "http://gpu1:8000"),
    ("http://gpu1:8000", "http://gpu1:8000"),
    ("https://llm.example.org/openai/v1", "https://llm.example.org/openai"),
    ("http://gpu1:8000/v10", "http://gpu1:8000/v10"),
])
def test_model_urls_written_the_openai_way_mean_the_same_server(tmp_path, written, base):
    s = load_settings(tmp_path, env={"XRAYVISION_AI_PRIMARY_URL": written,
                                     "XRAYVISION_AI_SECONDARY_URL": written})
    assert s.ai.primary_url == base and s.ai.secondary_url == base


@pytest.mark.parametrize("section,key,value,expected", [
    ("web", "port", "abc", "expected an integer from 1 to 65535"),
    ("web", "port", "70000", "expected an integer from 1 to 65535"),
    ("relay", "concurrency", "0", "expected an integer from 1 to 256"),
    ("ai", "timeout", "soon", "expected a number from 1 to 3600"),
    ("ai", "timeout", "nan", "expected a number"),
    ("web", "metrics_auth", "maybe", "expected a boolean"),
    ("server", "log_level", "loud", "expected one of: debug, info, warning, error"),
    ("server", "roles", "ingest,cook", "expected a comma-separated subset"),
    ("server", "roles", "", "expected a comma-separated subset"),
    ("images", "backend", "s3", "expected one of: filesystem, database"),
    ("ai", "primary_url", "gpu1:8000", "expected a URL starting with http:// or https://"),
    ("dicom", "ae_title", "A" * 17, "expected a DICOM AE title"),
    ("dicom", "ae_title", "BAD\\AE", "expected a DICOM AE title"),
    ("dicom", "allowed_calling_aets", "OK, " + "X" * 20, "expected a DICOM AE title"),
    ("web", "trusted_proxies", "10.0.0.0/33", "expected comma-separated IP addresses"),
    ("database", "url", "mysql://db/x", "expected sqlite:///PATH or postgresql://"),
    ("processing", "severity_threshold", "11", "expected an integer from 0 to 10"),
])
def test_bad_values_name_key_value_and_expectation(tmp_path, section, key, value, expected):
    write(tmp_path, "xrayvision.cfg", f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path, env={})
    message = str(err.value)
    assert f"[{section}] {key}" in message
    assert repr(value.strip()) in message
    assert expected in message
    assert "xrayvision.cfg" in message


def test_bad_env_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="environment XRAYVISION_RELAY_CONCURRENCY"):
        load_settings(tmp_path, env={"XRAYVISION_RELAY_CONCURRENCY": "-1"})


def test_bad_secret_value_is_not_echoed(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path, env={"XRAYVISION_DATABASE_URL": "mysql://u:hunter2@db/x"})
    assert "hunter2" not in str(err.value)
    assert f":{MASK}@db" in str(err.value)


@pytest.mark.parametrize("entry,expected", [
    ("alice = secret", "expected <role>:<scrypt hash>"),
    ("alice = boss:" + HASH, "expected <role>:<scrypt hash>"),
    ("alice = admin:hunter2", "plaintext passwords are not accepted"),
])
def test_bad_users_are_refused(tmp_path, entry, expected):
    write(tmp_path, "xrayvision.cfg", f"[users]\n{entry}\n")
    with pytest.raises(ConfigError, match=expected) as err:
        load_settings(tmp_path, env={})
    assert "hunter2" not in str(err.value)


def test_bad_priority_is_refused(tmp_path):
    write(tmp_path, "xrayvision.cfg", "[priority]\nER = very\n")
    with pytest.raises(ConfigError, match=r"\[priority\] ER = 'very'.*routine"):
        load_settings(tmp_path, env={})


@pytest.mark.parametrize("text", [
    "no section header\nport = 1\n",
    "[web]\nport = 1\nport = 2\n",  # duplicate key
    "[web\nport = 1\n",
])
def test_corrupt_file_is_reported_with_its_path(tmp_path, text):
    write(tmp_path, "local.cfg", text)
    with pytest.raises(ConfigError, match="cannot read .*local.cfg"):
        load_settings(tmp_path, env={})


def test_non_utf8_file_is_reported(tmp_path):
    (tmp_path / "xrayvision.cfg").write_bytes(b"[web]\nhost = \xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path, env={})


def test_unknown_keys_sections_and_env_are_warned(tmp_path):
    write(tmp_path, "xrayvision.cfg", "[web]\nprot = 1\n[colour]\nred = 1\n")
    s = load_settings(tmp_path, env={"XRAYVISION_WEB_PROT": "2", "XRAYVISION_NOPE": "1"})
    joined = "\n".join(s.warnings)
    assert "unknown setting [web] prot" in joined
    assert "unknown section [colour]" in joined
    assert "XRAYVISION_NOPE" in joined
    assert s.web.port == 8080


def test_regions_merge_with_defaults_and_can_be_switched_off(tmp_path):
    write(tmp_path, "xrayvision.cfg", "[regions]\nchest = Thorax\nhand =\ndental = tooth, dent\n")
    s = load_settings(tmp_path, env={})
    assert s.regions["chest"] == ("thorax",)
    assert "hand" not in s.regions
    assert s.regions["dental"] == ("tooth", "dent")
    assert s.regions["foot"] == DEFAULT_REGIONS["foot"]


def test_effective_settings_mask_secrets(tmp_path):
    write(tmp_path, "local.cfg",
          f"[database]\nurl = postgresql://xr:topsecret@db:5432/x\n[ai]\napi_key = sk-123\n"
          f"[fhir]\npassword = fhirpw\n[users]\nbob = admin:{HASH}\n")
    shown = effective_settings(load_settings(tmp_path, env={}))
    flat = repr(shown)
    for secret in ("topsecret", "sk-123", "fhirpw", HASH.split("$")[-1]):
        assert secret not in flat
    assert shown["database"]["url"] == f"postgresql+psycopg://xr:{MASK}@db:5432/x"
    assert shown["ai"]["api_key"] == MASK
    assert shown["users"]["bob"] == f"admin:{MASK}"


def test_mask_url_keeps_urls_without_password():
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert mask_url("postgresql://u:p@h/db") == f"postgresql://u:{MASK}@h/db"


def test_the_disks_a_process_writes_to(tmp_path):
    staging = tmp_path / "incoming"
    every = load_settings(tmp_path, env={"XRAYVISION_SERVER_DATA_DIR": str(tmp_path / "d")})
    assert every.written_disks(staging) == {
        "database": (tmp_path / "d").resolve(), "received DICOM": staging,
        "image store": tmp_path / "d" / "images"}
    web_on_postgres = load_settings(tmp_path, env={
        "XRAYVISION_SERVER_ROLES": "web",
        "XRAYVISION_DATABASE_URL": "postgresql://u:p@db:5432/x"})
    assert web_on_postgres.written_disks(staging) == {}
    ingest_database_store = load_settings(tmp_path, env={
        "XRAYVISION_SERVER_ROLES": "ingest", "XRAYVISION_IMAGES_BACKEND": "database",
        "XRAYVISION_DATABASE_URL": "postgresql://u:p@db:5432/x"})
    assert ingest_database_store.written_disks(staging) == {"received DICOM": staging}


def uncommented_example() -> str:
    """The example as a user makes it: every ``# key = value`` line uncommented (the
    first of a key in its section; a second one is an alternative)."""
    import re

    example = (Path(__file__).resolve().parent.parent / "xrayvision.cfg.example").read_text()
    seen: set[tuple[str, str]] = set()
    section, lines = "", []
    for line in example.splitlines():
        if line.startswith("["):
            section = line
        match = re.match(r"# ([A-Za-z_][A-Za-z0-9_]*) =( |$)", line)
        if match and (section, match[1]) not in seen:
            seen.add((section, match[1]))
            line = line[2:]
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_example_uncommented_loads_with_the_real_defaults(tmp_path):
    """Copied and uncommented as is, the example starts (inline ``; comments`` are not
    part of the value) and says what the code does: every value is the default."""
    from xrayvision.config import DEFAULT_REGIONS, SECTIONS

    text = uncommented_example()
    assert "\nport = 11112" in text and "\nread_per = study" in text  # (uncommented)
    (tmp_path / "xrayvision.cfg").write_text(text)
    settings = load_settings(tmp_path, env={})
    defaults = load_settings(tmp_path / "none", env={})
    for name in SECTIONS:
        assert getattr(settings, name) == getattr(defaults, name), name
    for region, keywords in settings.regions.items():
        assert keywords == DEFAULT_REGIONS[region], region
    assert settings.priority["ER_CR01"] == 3  # (an example: stat)


@pytest.mark.parametrize(("value", "ok"), [
    ("https://ohif.example/viewer?StudyInstanceUIDs={study_uid}", True),
    ("http://pacs/view/{accession}/{series_uid}/{uid}", True),
    ("", True),
    ("https://ohif.example/viewer", False),  # nothing of the study in it
    ("https://ohif.example/viewer?s={patient}", False),  # not a value we fill in
    ("javascript:alert({study_uid})", False),
])
def test_viewer_url_template(tmp_path, value, ok):
    env = {"XRAYVISION_WEB_VIEWER_URL": value}
    if ok:
        assert load_settings(tmp_path, env=env).web.viewer_url == value
    else:
        with pytest.raises(ConfigError, match="viewer_url"):
            load_settings(tmp_path, env=env)
