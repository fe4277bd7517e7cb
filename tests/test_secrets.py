"""Secret references: literal, env:, file: (relative, ${VAR}, rotation, permissions), redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import SecretError
from bridge.secrets import REDACTED, Secret

VALUE = "s3cr3t-value-9c1d"


def write_secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


class Warnings:
    """A recording permission-warning callback."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, message: str) -> None:
        self.messages.append(message)


# --------------------------------------------------------------------------- literal / env


def test_literal_reveals_itself() -> None:
    secret = Secret(VALUE)

    assert secret.reveal() == VALUE
    assert secret.source == "literal"
    assert secret.path is None


def test_env_reads_the_injected_environment() -> None:
    secret = Secret("env:API_SECRET", env={"API_SECRET": VALUE})

    assert secret.reveal() == VALUE
    assert secret.source == "env:API_SECRET"
    assert secret.path is None


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TEST_SECRET", VALUE)

    assert Secret("env:BRIDGE_TEST_SECRET").reveal() == VALUE


def test_env_is_read_at_each_reveal() -> None:
    env = {"API_SECRET": "old"}
    secret = Secret("env:API_SECRET", env=env)
    assert secret.reveal() == "old"

    env["API_SECRET"] = "new"

    assert secret.reveal() == "new"


@pytest.mark.parametrize("env", [{}, {"API_SECRET": ""}])
def test_unset_or_empty_env_raises_naming_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(SecretError, match="API_SECRET is not set"):
        Secret("env:API_SECRET", env=env).reveal()


# --------------------------------------------------------------------------- file


def test_relative_file_is_resolved_against_base_dir(tmp_path: Path) -> None:
    write_secret(tmp_path / "client.secret", VALUE + "\n")
    secret = Secret("file:client.secret", base_dir=tmp_path)

    assert secret.path == tmp_path / "client.secret"
    # Surrounding whitespace (the trailing newline of `echo > file`) is not part of it.
    assert secret.reveal() == VALUE
    assert secret.source == "file:client.secret"


def test_absolute_file_ignores_base_dir(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "abs.secret", VALUE)
    secret = Secret(f"file:{path}", base_dir=tmp_path / "elsewhere")

    assert secret.path == path
    assert secret.reveal() == VALUE


def test_credentials_directory_is_expanded(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    write_secret(creds / "databricks", VALUE)
    secret = Secret(
        "file:${CREDENTIALS_DIRECTORY}/databricks",
        base_dir=tmp_path / "config",
        env={"CREDENTIALS_DIRECTORY": str(creds)},
    )

    assert secret.path == creds / "databricks"
    assert secret.reveal() == VALUE


def test_unset_variable_in_path_raises() -> None:
    secret = Secret("file:${CREDENTIALS_DIRECTORY}/databricks", env={})

    with pytest.raises(SecretError, match="CREDENTIALS_DIRECTORY"):
        secret.reveal()


def test_missing_file_raises_naming_the_path(tmp_path: Path) -> None:
    secret = Secret("file:absent.secret", base_dir=tmp_path)

    with pytest.raises(SecretError, match="cannot read secret file") as info:
        secret.reveal()

    assert str(tmp_path / "absent.secret") in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_directory_instead_of_file_raises(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()

    with pytest.raises(SecretError, match="cannot read secret file"):
        Secret("file:adir", base_dir=tmp_path).reveal()


@pytest.mark.parametrize("content", ["", "\n", "  \n\t"])
def test_empty_file_raises(tmp_path: Path, content: str) -> None:
    write_secret(tmp_path / "empty.secret", content)

    with pytest.raises(SecretError, match="is empty"):
        Secret("file:empty.secret", base_dir=tmp_path).reveal()


def test_file_is_re_read_after_rotation(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "rotating.secret", "first")
    secret = Secret("file:rotating.secret", base_dir=tmp_path)
    assert secret.reveal() == "first"

    write_secret(path, "second")

    assert secret.reveal() == "second"


def test_file_removed_after_first_read_raises_on_next_read(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "gone.secret", VALUE)
    secret = Secret("file:gone.secret", base_dir=tmp_path)
    assert secret.reveal() == VALUE

    path.unlink()

    with pytest.raises(SecretError):
        secret.reveal()


def test_non_utf8_file_raises_secret_error(tmp_path: Path) -> None:
    (tmp_path / "binary.secret").write_bytes(b"\xff\xfe\x00binary")

    with pytest.raises(SecretError):
        Secret("file:binary.secret", base_dir=tmp_path).reveal()


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_group_or_world_accessible_file_warns(tmp_path: Path, mode: int) -> None:
    path = write_secret(tmp_path / "loose.secret", VALUE, mode)
    warnings = Warnings()

    assert Secret("file:loose.secret", base_dir=tmp_path).reveal(warnings) == VALUE

    assert len(warnings.messages) == 1
    assert str(path) in warnings.messages[0]
    assert f"{mode:o}" in warnings.messages[0]
    assert VALUE not in warnings.messages[0]


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_file_does_not_warn(tmp_path: Path, mode: int) -> None:
    write_secret(tmp_path / "tight.secret", VALUE, mode)
    warnings = Warnings()

    assert Secret("file:tight.secret", base_dir=tmp_path).reveal(warnings) == VALUE

    assert warnings.messages == []


def test_no_permission_check_for_env_and_literal() -> None:
    warnings = Warnings()

    Secret(VALUE).reveal(warnings)
    Secret("env:X", env={"X": VALUE}).reveal(warnings)

    assert warnings.messages == []


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    "secret",
    [
        Secret(VALUE),
        Secret("env:API_SECRET", env={"API_SECRET": VALUE}),
    ],
    ids=["literal", "env"],
)
def test_repr_and_str_never_contain_the_value(secret: Secret) -> None:
    assert secret.reveal() == VALUE
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret])):
        assert VALUE not in text
    assert str(secret) == REDACTED


def test_file_secret_repr_names_the_source_not_the_value(tmp_path: Path) -> None:
    write_secret(tmp_path / "f.secret", VALUE)
    secret = Secret("file:f.secret", base_dir=tmp_path)

    assert secret.reveal() == VALUE
    assert repr(secret) == "Secret(file:f.secret)"
    assert str(secret) == REDACTED
    assert VALUE not in repr(secret)


def test_literal_repr_is_redacted() -> None:
    assert repr(Secret(VALUE)) == f"Secret({REDACTED})"


def test_equality_and_hash_follow_the_reference() -> None:
    assert Secret("env:A") == Secret("env:A", env={"A": "x"})
    assert Secret("env:A") != Secret("env:B")
    assert Secret(VALUE) != VALUE
    assert len({Secret("env:A"), Secret("env:A"), Secret("env:B")}) == 2
