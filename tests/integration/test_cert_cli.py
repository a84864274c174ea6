"""``edge cert``: import, list, show and delete certificates in Redis (a real subprocess)."""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from edge.settings import ENV_NAMES
from edge.tls.material import decode_cert, validate_record
from tests.helpers import ROOT, EdgeProcess, RedisServer, edge_command, free_port, wait_for

UTC = datetime.UTC
SECRET = "hunter2"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@dataclass
class Pems:
    """One certificate written to files, with what the tests compare against."""

    cert: Path
    key: Path
    chain_pem: str
    key_pem: str

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain_pem.encode())

    @property
    def der(self) -> bytes:
        return self.leaf.public_bytes(serialization.Encoding.DER)

    @property
    def key_lines(self) -> list[str]:
        """The base64 body of the private key, line by line (what must never be printed)."""
        return [line for line in self.key_pem.splitlines() if line and "-----" not in line]


def write_pems(directory: Path, name: str, leaf: trustme.LeafCert) -> Pems:
    chain = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    key = leaf.private_key_pem.bytes().decode()
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_text(chain)
    key_path.write_text(key)
    return Pems(cert_path, key_path, chain, key)


@pytest.fixture
def pems(ca: trustme.CA, tmp_path: Path) -> Callable[..., Pems]:
    """``pems("name", *identities, **issue_cert_options)``: a certificate in files."""

    def make(name: str, *identities: str, **options: Any) -> Pems:
        return write_pems(tmp_path, name, ca.issue_cert(*identities, **options))

    return make


@pytest.fixture
def ab(pems: Callable[..., Pems]) -> Pems:
    return pems("ab", "a.example.com", "*.b.example.com")


def cert_env(redis_url: str | None, **extra: str) -> dict[str, str]:
    # no API settings (they would send `edge cert list` through the API), nor the user's
    # config file: a logged-in profile there would too
    api = ("API_URL", "TOKEN", "EDGE_PROFILE")
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES and k not in api}
    env["PYTHONPATH"] = str(ROOT)
    env["XDG_CONFIG_HOME"] = "/nonexistent"
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def run_cert(
    *args: str | Path, url: str | None, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "edge", "cert", *map(str, args)],
        env=env if env is not None else cert_env(url),
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    assert "PRIVATE KEY" not in output
    if done.returncode:
        assert done.stderr.startswith(("edge cert: ", "usage: ")), done.stderr
    return done


def assert_key_absent(output: str, *certs: Pems) -> None:
    for cert in certs:
        for line in cert.key_lines:
            assert line not in output


def keys(redis_db: RedisServer) -> set[str]:
    return {k.decode() for k in redis_db.client().keys("*")}


def record(redis_db: RedisServer, name: str) -> dict[str, Any]:
    raw = redis_db.client().get(f"cert:{name}")
    assert raw is not None
    doc: dict[str, Any] = json.loads(raw)
    return doc


def domain_keys(redis_db: RedisServer) -> dict[str, str]:
    client = redis_db.client()
    return {
        k.decode(): client.get(k).decode()  # type: ignore[union-attr]
        for k in client.scan_iter(match="cert:domain:*")
    }


def import_ab(ab: Pems, redis_db: RedisServer, cwd: Path, *extra: str) -> None:
    done = run_cert(
        "import", "ab", "--cert", ab.cert, "--key", ab.key, *extra, url=redis_db.url, cwd=cwd
    )
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------


def test_import_writes_the_record_and_its_domain_keys(
    ab: Pems, redis_db: RedisServer, tmp_path: Path
) -> None:
    done = run_cert(
        "import", "ab", "--cert", ab.cert, "--key", ab.key, url=redis_db.url, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert keys(redis_db) == {"cert:ab", "cert:domain:a.example.com", "cert:domain:*.b.example.com"}
    doc = record(redis_db, "ab")
    leaf = ab.leaf
    assert doc == {
        "cert_name": "ab",
        "domains": ["a.example.com", "*.b.example.com"],
        "fullchain_pem": ab.chain_pem,
        "private_key_pem": ab.key_pem,
        "status": "imported",
        "expires_at": leaf.not_valid_after_utc.isoformat(),
    }
    assert domain_keys(redis_db) == {
        "cert:domain:a.example.com": "ab",
        "cert:domain:*.b.example.com": "ab",
    }
    # what a worker decodes and validates
    raw = redis_db.client().get("cert:ab")
    assert raw is not None
    checked, info = validate_record("cert:ab", decode_cert("cert:ab", raw))
    assert checked.domains == ("a.example.com", "*.b.example.com")
    # what was written, said
    out = done.stdout
    assert "cert:ab" in out
    assert "a.example.com, *.b.example.com" in out
    assert leaf.subject.rfc4514_string() in out
    assert leaf.issuer.rfc4514_string() in out
    assert info.serial in out
    assert leaf.not_valid_after_utc.isoformat() in out
    assert "days left" in out
    assert_key_absent(done.stdout + done.stderr, ab)


def test_import_with_domains_and_email(ab: Pems, redis_db: RedisServer, tmp_path: Path) -> None:
    done = run_cert(
        "import",
        "ab",
        "--cert",
        ab.cert,
        "--key",
        ab.key,
        "--domains",
        "A.example.com, x.b.example.com",
        "--email",
        "ops@example.com",
        url=redis_db.url,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    doc = record(redis_db, "ab")
    assert doc["domains"] == ["a.example.com", "x.b.example.com"]
    assert doc["email"] == "ops@example.com"
    assert domain_keys(redis_db) == {
        "cert:domain:a.example.com": "ab",
        "cert:domain:x.b.example.com": "ab",
    }


def test_import_refuses_a_key_that_does_not_match(
    ab: Pems, pems: Callable[..., Pems], redis_db: RedisServer, tmp_path: Path
) -> None:
    other = pems("other", "a.example.com")
    done = run_cert(
        "import", "ab", "--cert", ab.cert, "--key", other.key, url=redis_db.url, cwd=tmp_path
    )
    assert done.returncode == 1
    assert "private key does not match the certificate" in done.stderr
    assert keys(redis_db) == set()
    assert_key_absent(done.stdout + done.stderr, ab, other)


def test_import_refuses_a_domain_the_certificate_does_not_cover(
    ab: Pems, redis_db: RedisServer, tmp_path: Path
) -> None:
    # the wildcard covers one label only
    done = run_cert(
        "import",
        "ab",
        "--cert",
        ab.cert,
        "--key",
        ab.key,
        "--domains",
        "a.example.com,x.y.b.example.com",
        url=redis_db.url,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "x.y.b.example.com is not covered" in done.stderr
    assert keys(redis_db) == set()


@pytest.mark.parametrize("which", ["cert", "key", "cert-is-key", "missing"])
def test_import_refuses_garbage_pem(
    which: str, ab: Pems, redis_db: RedisServer, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN PRIVATE KEY-----\nZZZZnotbase64ZZZZ\n-----END PRIVATE KEY-----\n"
        if which == "key"
        else "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
    )
    cert, key = ab.cert, ab.key
    if which == "cert":
        cert = garbage
    elif which == "key":
        key = garbage
    elif which == "cert-is-key":
        cert = ab.key
    else:
        key = tmp_path / "nope.key"
    done = run_cert("import", "ab", "--cert", cert, "--key", key, url=redis_db.url, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    expected = {
        "cert": f"--cert {garbage}: certificate chain is not valid PEM",
        "key": f"--key {garbage}: private key is not a valid PEM private key",
        "cert-is-key": f"--cert {ab.key}: certificate chain is not valid PEM",
        "missing": f"--key {tmp_path / 'nope.key'}: No such file or directory",
    }[which]
    assert expected in done.stderr
    assert "ZZZZ" not in done.stderr
    assert keys(redis_db) == set()
    assert_key_absent(done.stdout + done.stderr, ab)


def test_import_refuses_an_expired_certificate_unless_allowed(
    pems: Callable[..., Pems], redis_db: RedisServer, tmp_path: Path
) -> None:
    not_after = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    old = pems(
        "old",
        "old.example.com",
        not_before=not_after - datetime.timedelta(days=90),
        not_after=not_after,
    )
    done = run_cert(
        "import", "old", "--cert", old.cert, "--key", old.key, url=redis_db.url, cwd=tmp_path
    )
    assert done.returncode == 1
    assert "certificate has expired on 2024-01-02T03:04:05+00:00" in done.stderr
    assert "--allow-expired" in done.stderr
    assert keys(redis_db) == set()

    done = run_cert(
        "import",
        "old",
        "--cert",
        old.cert,
        "--key",
        old.key,
        "--allow-expired",
        url=redis_db.url,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "EXPIRED" in done.stdout
    assert "warning: the certificate has expired" in done.stderr
    assert record(redis_db, "old")["expires_at"] == "2024-01-02T03:04:05+00:00"
    assert domain_keys(redis_db) == {"cert:domain:old.example.com": "old"}


def test_import_refuses_an_existing_name_without_force(
    ab: Pems, pems: Callable[..., Pems], redis_db: RedisServer, tmp_path: Path
) -> None:
    import_ab(ab, redis_db, tmp_path)
    before = {k: redis_db.client().get(k) for k in keys(redis_db)}
    newer = pems("newer", "a.example.com")
    done = run_cert(
        "import", "ab", "--cert", newer.cert, "--key", newer.key, url=redis_db.url, cwd=tmp_path
    )
    assert done.returncode == 1
    assert "cert:ab already exists" in done.stderr
    assert "--force" in done.stderr
    assert {k: redis_db.client().get(k) for k in keys(redis_db)} == before


def test_import_refuses_reserved_and_invalid_names(
    ab: Pems, redis_db: RedisServer, tmp_path: Path
) -> None:
    for name in ("domain:x", "a/b", "two words"):
        done = run_cert(
            "import", name, "--cert", ab.cert, "--key", ab.key, url=redis_db.url, cwd=tmp_path
        )
        assert done.returncode == 1, name
        assert "certificate name" in done.stderr
    assert keys(redis_db) == set()


def test_force_replaces_and_removes_stale_domain_keys(
    ab: Pems, pems: Callable[..., Pems], redis_db: RedisServer, tmp_path: Path
) -> None:
    import_ab(ab, redis_db, tmp_path)
    other = pems("other", "c.example.com", "d.example.com")
    done = run_cert(
        "import", "other", "--cert", other.cert, "--key", other.key, url=redis_db.url, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    client = redis_db.client()
    client.set("cert:domain:old.b.example.com", "ab")  # hand-made, pointing at ab

    # the new "ab" serves a.example.com and takes d.example.com over from "other"
    newer = pems("newer", "a.example.com", "d.example.com")
    done = run_cert(
        "import",
        "ab",
        "--cert",
        newer.cert,
        "--key",
        newer.key,
        "--force",
        url=redis_db.url,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "replaced cert:ab" in done.stdout
    assert "cert:domain:d.example.com (was other)" in done.stdout
    doc = record(redis_db, "ab")
    assert doc["domains"] == ["a.example.com", "d.example.com"]
    assert doc["fullchain_pem"] == newer.chain_pem
    assert doc["private_key_pem"] == newer.key_pem
    assert domain_keys(redis_db) == {
        "cert:domain:a.example.com": "ab",
        "cert:domain:d.example.com": "ab",
        "cert:domain:c.example.com": "other",
    }
    assert keys(redis_db) == {
        "cert:ab",
        "cert:other",
        "cert:domain:a.example.com",
        "cert:domain:c.example.com",
        "cert:domain:d.example.com",
    }
    assert_key_absent(done.stdout + done.stderr, ab, other, newer)


@pytest.mark.parametrize("command", ["import", "delete"])
def test_a_concurrent_edit_aborts_the_transaction(
    command: str,
    ab: Pems,
    redis_db: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another client changes cert:ab between the command's reads and its EXEC."""
    from edge import cli
    from edge.certs import repository as cert_cli

    import_ab(ab, redis_db, tmp_path)
    before = {k: redis_db.client().get(k) for k in keys(redis_db)}
    real = cert_cli._domain_keys_of

    async def meddling(client: Any, name: str) -> list[str]:
        found = await real(client, name)
        redis_db.client().set("cert:ab", b"edited meanwhile")
        return found

    monkeypatch.setattr(cert_cli, "_domain_keys_of", meddling)
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", redis_db.url)
    argv = ["cert", "delete", "ab"]
    if command == "import":
        argv = ["cert", "import", "ab", "--cert", str(ab.cert), "--key", str(ab.key), "--force"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("edge cert: cert:ab or its cert:domain: keys changed")
    assert "run the command again" in err
    # nothing of the command was applied: only the other client's edit
    after = {k: redis_db.client().get(k) for k in keys(redis_db)}
    assert after == {**before, "cert:ab": b"edited meanwhile"}


# ---------------------------------------------------------------------------
# list
# ---------------------------------------------------------------------------


def test_list_reports_good_and_bad_records(
    ab: Pems, pems: Callable[..., Pems], redis_db: RedisServer, tmp_path: Path
) -> None:
    import_ab(ab, redis_db, tmp_path)
    other = pems("other", "c.example.com")
    client = redis_db.client()
    client.set("cert:broken", b"{not json")
    # well-formed, but the key belongs to another certificate
    client.set(
        "cert:mismatch",
        json.dumps(
            {
                "cert_name": "mismatch",
                "domains": ["a.example.com"],
                "fullchain_pem": ab.chain_pem,
                "private_key_pem": other.key_pem,
            }
        ),
    )
    # a key pasted into the wrong field must not be echoed in the problem
    client.set(
        "cert:leaky",
        json.dumps(
            {
                "cert_name": "leaky",
                "domains": [other.key_pem],
                "fullchain_pem": ab.chain_pem,
                "private_key_pem": other.key_pem,
            }
        ),
    )
    client.hset("cert:hashed", "a", "b")

    done = run_cert("list", url=redis_db.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # the one table of `edge cert list` and `edge certs list`, whichever the source
    assert lines[0].split() == ["NAME", "DOMAINS", "EXPIRES", "DAYS", "STATUS", "PROBLEM"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["ab", "broken", "hashed", "leaky", "mismatch"]
    rows = dict(zip(names, lines[1:], strict=True))
    good = rows["ab"].split()
    not_after = ab.leaf.not_valid_after_utc
    days = int((not_after - datetime.datetime.now(UTC)).total_seconds() / 86400)
    assert good == [
        "ab",
        "a.example.com,",
        "*.b.example.com",
        not_after.isoformat(),
        str(days),
        "imported",
        "-",
    ]
    assert "! invalid JSON" in rows["broken"]
    assert "! holds a hash" in rows["hashed"]
    assert "! private_key_pem: private key does not match the certificate" in rows["mismatch"]
    assert "! domains: invalid host name" in rows["leaky"]
    assert "4 record(s) with problems" in done.stderr
    assert "cert:domain" not in done.stdout
    assert_key_absent(done.stdout + done.stderr, ab, other)

    for args in (("--json",), ("-o", "json")):
        done = run_cert("list", *args, url=redis_db.url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        items = json.loads(done.stdout)
        assert [item["name"] for item in items] == ["ab", "broken", "hashed", "leaky", "mismatch"]
        assert items[0] == {
            "name": "ab",
            "domains": ["a.example.com", "*.b.example.com"],
            "expires_at": not_after.isoformat(),
            "status": "imported",
            "problem": None,
        }
        assert all(item["problem"] for item in items[1:])
        assert_key_absent(done.stdout + done.stderr, ab, other)


def test_list_with_no_certificates(redis_db: RedisServer, tmp_path: Path) -> None:
    redis_db.client().set("cert:domain:a.example.com", "ghost")
    done = run_cert("list", url=redis_db.url, cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout == "no certificates (no cert:* records)\n"
    done = run_cert("list", "--json", url=redis_db.url, cwd=tmp_path)
    assert json.loads(done.stdout) == []


# ---------------------------------------------------------------------------
# show
# ---------------------------------------------------------------------------


def test_show_prints_details_and_the_chain_but_never_the_key(
    ab: Pems, redis_db: RedisServer, tmp_path: Path
) -> None:
    import_ab(ab, redis_db, tmp_path)
    redis_db.client().set("cert:domain:c.example.com", "ab")  # not covered by the SAN
    leaf = ab.leaf
    fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
    serial = format(leaf.serial_number, "x")

    done = run_cert("show", "ab", url=redis_db.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for expected in (
        leaf.subject.rfc4514_string(),
        leaf.issuer.rfc4514_string(),
        serial,
        "san:        a.example.com, *.b.example.com",
        leaf.not_valid_before_utc.isoformat(),
        leaf.not_valid_after_utc.isoformat(),
        fingerprint,
        "EC-P-256",
        "1 certificate(s)",
        "status:     imported",
        "  cert:domain:*.b.example.com\n",
        "  cert:domain:a.example.com\n",
        "  cert:domain:c.example.com  (not covered by the certificate: ignored)",
    ):
        assert expected in out
    assert "BEGIN CERTIFICATE" not in out
    assert_key_absent(out + done.stderr, ab)

    done = run_cert("show", "ab", "--pem", url=redis_db.url, cwd=tmp_path)
    assert done.returncode == 0
    assert ab.chain_pem.strip() in done.stdout
    assert_key_absent(done.stdout + done.stderr, ab)

    done = run_cert("show", "ab", "--json", url=redis_db.url, cwd=tmp_path)
    doc = json.loads(done.stdout)
    assert doc["serial"] == serial
    assert doc["fingerprint_sha256"] == fingerprint
    assert doc["san"] == ["a.example.com", "*.b.example.com"]
    assert doc["chain_length"] == 1
    assert doc["key_type"] == "EC-P-256"
    assert doc["domain_keys"] == [
        "cert:domain:*.b.example.com",
        "cert:domain:a.example.com",
        "cert:domain:c.example.com",
    ]
    assert "fullchain_pem" not in doc and "private_key_pem" not in doc
    done = run_cert("show", "ab", "--json", "--pem", url=redis_db.url, cwd=tmp_path)
    doc = json.loads(done.stdout)
    assert doc["fullchain_pem"] == ab.chain_pem
    assert "private_key_pem" not in doc
    assert_key_absent(done.stdout + done.stderr, ab)


def test_show_a_bad_record_reports_its_problem(
    ab: Pems, pems: Callable[..., Pems], redis_db: RedisServer, tmp_path: Path
) -> None:
    other = pems("other", "c.example.com")
    redis_db.client().set(
        "cert:bad",
        json.dumps(
            {
                "cert_name": "bad",
                "domains": ["a.example.com"],
                "fullchain_pem": ab.chain_pem,
                "private_key_pem": other.key_pem,
            }
        ),
    )
    for extra in ((), ("--pem",), ("--json", "--pem")):
        done = run_cert("show", "bad", *extra, url=redis_db.url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "private key does not match the certificate" in done.stdout
        assert format(ab.leaf.serial_number, "x") in done.stdout
        assert_key_absent(done.stdout + done.stderr, ab, other)


def test_show_missing_certificate_exits_1(redis_db: RedisServer, tmp_path: Path) -> None:
    done = run_cert("show", "nope", url=redis_db.url, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == "edge cert: cert:nope does not exist\n"
    assert done.stdout == ""


# ---------------------------------------------------------------------------
# delete
# ---------------------------------------------------------------------------


def test_delete_removes_the_record_and_its_domain_keys_only(
    ab: Pems, pems: Callable[..., Pems], redis_db: RedisServer, tmp_path: Path
) -> None:
    import_ab(ab, redis_db, tmp_path)
    other = pems("other", "c.example.com")
    done = run_cert(
        "import", "other", "--cert", other.cert, "--key", other.key, url=redis_db.url, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    client = redis_db.client()
    client.set("cert:domain:extra.example.com", "ab")  # hand-made, also pointing at ab
    client.set("proxy:a.example.com", "{}")  # not a certificate key: left alone

    done = run_cert("delete", "ab", url=redis_db.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "deleted cert:ab" in done.stdout
    assert "cert:domain:extra.example.com" in done.stdout
    assert keys(redis_db) == {"cert:other", "cert:domain:c.example.com", "proxy:a.example.com"}
    assert domain_keys(redis_db) == {"cert:domain:c.example.com": "other"}

    done = run_cert("delete", "ab", url=redis_db.url, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == "edge cert: cert:ab does not exist\n"


# ---------------------------------------------------------------------------
# redis, settings and usage
# ---------------------------------------------------------------------------


def test_unreachable_redis_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    url = f"redis://admin:{SECRET}@127.0.0.1:{free_port()}/0"
    for args in (("list",), ("show", "x"), ("delete", "x")):
        started = time.monotonic()
        done = run_cert(*args, url=url, cwd=tmp_path)
        assert time.monotonic() - started < 10
        assert done.returncode == 1
        assert done.stderr.startswith("edge cert: redis at redis://admin:***@127.0.0.1:")
        assert done.stderr.count("\n") == 1
        assert SECRET not in done.stdout + done.stderr


def test_import_checks_the_files_before_redis(ab: Pems, tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = run_cert(
        "import",
        "ab",
        "--cert",
        ab.cert,
        "--key",
        ab.key,
        "--domains",
        "z.com",
        url=url,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "z.com is not covered" in done.stderr
    done = run_cert("import", "ab", "--cert", ab.cert, "--key", ab.key, url=url, cwd=tmp_path)
    assert done.returncode == 1
    assert "edge cert: redis at" in done.stderr


def test_embedded_redis_not_running_is_a_clear_error(tmp_path: Path) -> None:
    env = cert_env(None, EDGE_STATE_DIR=str(tmp_path / "state"))
    done = run_cert("list", url=None, cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "REDIS_URL is not set and the embedded redis is not running" in done.stderr
    assert str(tmp_path / "state" / "redis.sock") in done.stderr


def test_redis_url_from_env_file(ab: Pems, redis_db: RedisServer, tmp_path: Path) -> None:
    env_file = tmp_path / "edge.env"
    env_file.write_text(f"REDIS_URL={redis_db.url}\n")
    env = cert_env(None)
    done = run_cert(
        "import",
        "ab",
        "--cert",
        ab.cert,
        "--key",
        ab.key,
        "--env-file",
        env_file,
        url=None,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    done = run_cert("list", "--env-file", env_file, url=None, cwd=tmp_path, env=env)
    assert done.stdout.splitlines()[1].startswith("ab ")
    done = run_cert("list", "--env-file", tmp_path / "missing.env", url=None, cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert "missing.env" in done.stderr


def test_usage_errors_exit_2(redis_db: RedisServer, tmp_path: Path) -> None:
    for args in (("bogus",), ("import", "x"), ("show",), ()):
        done = run_cert(*args, url=redis_db.url, cwd=tmp_path)
        assert done.returncode == 2, args
        assert "usage: edge cert" in done.stderr
    done = run_cert(
        "import",
        "x",
        "--cert",
        "a",
        "--key",
        "b",
        "--domains",
        " , ",
        url=redis_db.url,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "--domains lists no domain" in done.stderr


def test_no_command_prints_the_private_key(
    ab: Pems, pems: Callable[..., Pems], redis_db: RedisServer, tmp_path: Path
) -> None:
    import_ab(ab, redis_db, tmp_path)
    other = pems("other", "c.example.com")
    # records holding a key where it does not belong, and one with a mismatched key
    client = redis_db.client()
    for name, fields in (
        ("in-chain", {"fullchain_pem": other.key_pem}),
        ("in-email", {"email": other.key_pem}),
        ("wrong-key", {"private_key_pem": other.key_pem}),
        ("truncated", None),
    ):
        doc = {"cert_name": name, "domains": ["a.example.com"], "fullchain_pem": ab.chain_pem,
               "private_key_pem": ab.key_pem, **(fields or {})}  # fmt: skip
        raw = json.dumps(doc)
        client.set(f"cert:{name}", raw if fields is not None else raw[: raw.index("KEY") + 80])
    runs = [("list",), ("list", "--json")]
    for name in ("ab", "in-chain", "in-email", "wrong-key", "truncated"):
        runs += [("show", name), ("show", name, "--pem"), ("show", name, "--json", "--pem")]
    runs += [
        ("import", "ab", "--cert", str(ab.cert), "--key", str(ab.key)),  # exists
        ("import", "ab", "--cert", str(ab.cert), "--key", str(other.key)),  # mismatch
        ("import", "ab", "--cert", str(ab.key), "--key", str(ab.key)),  # key as chain
        ("import", "ab", "--cert", str(ab.cert), "--key", str(ab.key), "--email", ab.key_pem),
        ("delete", "ab"),
    ]
    for args in runs:
        done = run_cert(*args, url=redis_db.url, cwd=tmp_path)
        assert done.returncode in (0, 1), (args, done.stderr)
        assert_key_absent(done.stdout + done.stderr, ab, other)


# ---------------------------------------------------------------------------
# end to end: an edge serves what the CLI imports
# ---------------------------------------------------------------------------


def peer_der(port: int, server_name: str) -> bytes:
    """The certificate the edge presents for ``server_name`` (not verified)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        ctx.wrap_socket(sock, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def verified_handshake(port: int, ca: trustme.CA, server_name: str) -> bool:
    """A handshake verified against the trustme CA (and the host name) succeeds."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
            ctx.wrap_socket(sock, server_hostname=server_name),
        ):
            return True
    except ssl.SSLCertVerificationError:
        return False


def default_der(redis_db: RedisServer) -> bytes:
    raw = redis_db.client().get("edge:tls:default")
    assert raw is not None
    pem = json.loads(raw)["fullchain_pem"]
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def test_edge_serves_an_imported_certificate_and_the_default_after_delete(
    ca: trustme.CA,
    ab: Pems,
    redis_db: RedisServer,
    tmp_path: Path,
    edge_factory: Callable[..., EdgeProcess],
) -> None:
    port = free_port()
    # a long resync: the changes must arrive through keyspace notifications
    edge = edge_factory(HTTPS_PORT=port, CONFIG_RESYNC_INTERVAL=30)
    wait_for(lambda: redis_db.client().exists("edge:tls:default"), timeout=10)
    default = default_der(redis_db)
    assert peer_der(port, "a.example.com") == default
    assert not verified_handshake(port, ca, "a.example.com")

    import_ab(ab, redis_db, tmp_path)
    started = time.monotonic()
    wait_for(lambda: peer_der(port, "a.example.com") == ab.der, timeout=2.0)
    took = time.monotonic() - started
    assert verified_handshake(port, ca, "a.example.com")
    assert verified_handshake(port, ca, "x.b.example.com")  # the wildcard
    assert peer_der(port, "A.EXAMPLE.COM") == ab.der
    assert peer_der(port, "unknown.example.com") == default
    assert took < 2.0

    done = run_cert("delete", "ab", url=redis_db.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: peer_der(port, "a.example.com") == default, timeout=2.0)
    assert not verified_handshake(port, ca, "a.example.com")
    tls = edge.health()["tls"]
    assert tls["certificates"] == 0 and tls["rejected"] == {}


# ---------------------------------------------------------------------------
# `edge cert list` and `edge certs list`: one command, one table, two sources
# ---------------------------------------------------------------------------


def test_both_names_and_both_sources_print_the_same_table(ca: trustme.CA, tmp_path: Path) -> None:
    state = tmp_path / "state"
    edge = EdgeProcess(None, tmp_path, EDGE_STATE_DIR=str(state))
    edge.start()
    try:
        local = cert_env(None, EDGE_STATE_DIR=str(state))
        now = datetime.datetime.now(UTC)
        lifetimes = {"fresh": 60, "soon": 5, "gone": -10}
        for name, days in lifetimes.items():
            # half a day away from a whole one: DAYS cannot change while the test runs
            not_after = now + datetime.timedelta(days=days + (0.5 if days > 0 else -0.5))
            leaf = ca.issue_cert(
                f"{name}.example.com",
                not_before=not_after - datetime.timedelta(days=90),
                not_after=not_after,
            )
            files = write_pems(tmp_path, name, leaf)
            done = run_cert(
                "import", name, "--cert", files.cert, "--key", files.key, "--allow-expired",
                url=None, cwd=tmp_path, env=local,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        api_url = f"http://127.0.0.1:{edge.api_port}"
        admin = (state / "admin-token").read_text().strip()
        through_api = {**local, "API_URL": api_url, "TOKEN": admin}
        flags = ("--api-url", api_url, "--token", admin)
        tables: dict[tuple[str, ...], str] = {}
        for group in ("cert", "certs"):
            for how, env, extra in (
                ("redis (default)", local, ()),
                ("api (API_URL, TOKEN)", through_api, ()),
                ("api (flags)", local, flags),
                ("redis (--source)", through_api, ("--source", "redis")),
            ):
                done = edge_command(group, "list", *extra, env=env, cwd=tmp_path)
                assert done.returncode == 0, (group, how, done.stderr)
                tables[(group, how)] = done.stdout
                as_json = edge_command(group, "list", "-o", "json", *extra, env=env, cwd=tmp_path)
                tables[(group, how, "json")] = as_json.stdout
        # the global options before the group too
        done = edge_command(*flags, "cert", "list", env=local, cwd=tmp_path)
        tables[("edge --api-url ... cert list",)] = done.stdout
    finally:
        edge.stop()
    table = tables[("cert", "redis (default)")]
    assert {k: v for k, v in tables.items() if "json" not in k and v != table} == {}
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "DOMAINS", "EXPIRES", "DAYS", "STATUS", "PROBLEM"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[3], r[4], r[5]) for r in rows] == [
        ("fresh", "fresh.example.com", "60", "imported", "-"),
        ("gone", "gone.example.com", "-10", "imported", "-"),
        ("soon", "soon.example.com", "5", "imported", "-"),
    ]
    documents = {k: v for k, v in tables.items() if "json" in k}
    first = json.loads(documents[("cert", "redis (default)", "json")])
    assert [item["name"] for item in first] == ["fresh", "gone", "soon"]
    assert all(json.loads(v) == first for v in documents.values())


def test_list_reads_through_the_api_when_told_to_or_logged_in(
    redis_db: RedisServer, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the API source fails
    config = tmp_path / "config"
    local = cert_env(redis_db.url, XDG_CONFIG_HOME=str(config))
    done = run_cert("list", url=None, cwd=tmp_path, env=local)
    assert done.stdout == "no certificates (no cert:* records)\n"

    def source(*args: str, **env: str) -> str:
        done = run_cert("list", *args, url=None, cwd=tmp_path, env={**local, **env})
        if done.returncode == 0:
            return "redis"
        # through the API: it is not there, or no token was given for it
        said = done.stderr
        assert f"cannot reach the edge API at {dead}" in said or "no token" in said, said
        return "api"

    assert source("--api-url", dead) == "api"
    assert source("--token", "t", API_URL=dead) == "api"
    assert source(API_URL=dead) == "api"
    assert source(TOKEN="t", API_URL=dead) == "api"
    assert source("--source", "api", API_URL=dead) == "api"
    assert source("--source", "redis", API_URL=dead) == "redis"
    # a token saved by `edge login` in the profile in use
    (config / "edge").mkdir(parents=True)
    (config / "edge" / "config.toml").write_text(
        f'[profiles.default]\napi_url = "{dead}"\ntoken = "edge_t"\n'
    )
    (config / "edge" / "config.toml").chmod(0o600)
    assert source() == "api"
    env_file = tmp_path / "edge.env"
    env_file.write_text(f"REDIS_URL={redis_db.url}\n")
    assert source("--env-file", str(env_file)) == "redis"
    done = run_cert("list", "--env-file", str(env_file), "--api-url", dead, url=None,
                    cwd=tmp_path, env=local)  # fmt: skip
    assert done.returncode == 2
    assert "--env-file reads Redis directly: it cannot go with --api-url" in done.stderr
    # the other commands of `edge cert` never call the API
    done = run_cert("show", "x", "--api-url", dead, url=None, cwd=tmp_path, env=local)
    assert done.returncode == 2 and "unrecognized arguments: --api-url" in done.stderr
    done = edge_command("--api-url", dead, "cert", "show", "x", env=local, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        "edge cert: --api-url: 'edge cert show' works on Redis directly "
        "(through the API: edge certs show)\n"
    )
