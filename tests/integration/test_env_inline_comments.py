"""``edge check`` warns about a setting whose value carries a comment (`` #``): systemd's
EnvironmentFile= would keep it in the value, edge's --env-file drops it."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import clean_env, edge_command

SECRET = "s3cret-with-a-hash"


def test_check_warns_about_inline_comments(tmp_path: Path) -> None:
    env_file = tmp_path / "edge.env"
    env_file.write_text(
        "# a comment line is fine\n"
        "HTTP_PORT=18080  # public\n"
        "API_HOSTNAME=api.test\n"
        "LOG_LEVEL=INFO\t# tab too\n",
        encoding="utf-8",
    )
    env = clean_env(EDGE_STATE_DIR=str(tmp_path / "state"))
    del env["HTTP_PORT"]  # from the file
    # under systemd the comment arrives in the environment, as part of the value
    env["REDIS_PASSWORD"] = f"{SECRET} # redis"
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    result = edge_command("check", "--env-file", str(env_file), env=env, cwd=tmp_path)
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {env_file}:2: HTTP_PORT: a comment after the value; systemd's "
        "EnvironmentFile= keeps it as part of the value: put it on a line of its own",
        f"warning: {env_file}:4: LOG_LEVEL: a comment after the value; systemd's "
        "EnvironmentFile= keeps it as part of the value: put it on a line of its own",
        "warning: REDIS_PASSWORD in the environment contains ' #': a comment that an "
        "EnvironmentFile= kept in the value? Put comments on lines of their own",
    ], result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_no_warning_without_inline_comments(tmp_path: Path) -> None:
    env_file = tmp_path / "edge.env"
    env_file.write_text("# note\nLOG_LEVEL=INFO\nAPI_HOSTNAME=api.test\n", encoding="utf-8")
    env = clean_env(EDGE_STATE_DIR=str(tmp_path / "state"))
    result = edge_command("check", "--env-file", str(env_file), env=env, cwd=tmp_path)
    assert "warning:" not in result.stdout, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
