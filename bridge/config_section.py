"""What every settings section shares: the base model and the secret field.

Every section is a pydantic model with ``extra="forbid"`` and strict types, so a typo is an
error rather than a silently ignored key. A secret is written as a literal, ``env:NAME`` or
``file:PATH`` and held as a :class:`~bridge.secrets.Secret` with a redacted repr.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, ValidationInfo

from bridge.secrets import Secret


def _to_secret(value: object, info: ValidationInfo) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string: a literal, 'env:NAME' or 'file:PATH'")
    context = info.context or {}
    return Secret(
        value,
        base_dir=context.get("base_dir"),
        env=context.get("env"),
        # Revealed values are registered with the process's redactor (never printed).
        redactor=context.get("redactor"),
        identifier=info.field_name == "client_id",
    )


SecretField = Annotated[
    Secret, PlainValidator(_to_secret), PlainSerializer(lambda s: s.source, return_type=str)
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
