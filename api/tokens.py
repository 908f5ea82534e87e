"""JSON Web Tokens for the API, checked as RFC 8725 asks. Pure: no I/O.

- Exactly one algorithm, HS256, on the allow-list: a token naming another (``none``,
  HS512, RS256, ...) is refused before its signature is looked at, so neither an
  unsigned token nor one "signed" with a public key in place of our secret (key
  confusion) gets through.
- ``iss``, ``aud``, ``sub``, ``exp``, ``iat`` and ``jti`` are required and checked.
- Explicit typing (RFC 8725 section 3.11): access tokens carry header ``typ: at+jwt``
  (RFC 9068) and claim ``typ: access``; refresh tokens ``rt+jwt`` and ``refresh``. A
  refresh token is never accepted as an access token, nor the other way round.

Every token carries ``fid``, the sign-in family: all tokens issued from one login
share it, so a logout or a detected refresh-token theft revokes them together.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import jwt

from api.errors import InvalidToken
from bankflow.settings import Settings
from schemas.auth import ROLES, Role

ALGORITHM: Final = "HS256"
ALLOWED_ALGORITHMS: Final = (ALGORITHM,)
TokenType = Literal["access", "refresh"]
HEADER_TYPES: Final[dict[TokenType, str]] = {"access": "at+jwt", "refresh": "rt+jwt"}
REQUIRED_CLAIMS: Final = ("iss", "aud", "sub", "exp", "iat", "jti", "typ", "fid")
#: Our tokens are a few hundred bytes; a huge one is refused before any parsing.
TOKEN_LENGTH_MAX: Final = 4096
#: Clock skew tolerated between the API's hosts for ``exp`` and ``iat``.
LEEWAY_S: Final = 5


@dataclass(frozen=True)
class TokenConfig:
    secret: bytes = field(repr=False)
    issuer: str
    audience: str
    access_ttl_s: int
    refresh_ttl_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenConfig:
        return cls(
            secret=settings.jwt_secret.get_secret_value().encode(),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            access_ttl_s=settings.access_token_ttl_s,
            refresh_ttl_s=settings.refresh_token_ttl_s,
        )


@dataclass(frozen=True)
class Claims:
    """What a checked token says. ``role`` and ``customer_id`` only in access tokens."""

    typ: TokenType
    user_id: uuid.UUID
    token_id: uuid.UUID
    family_id: uuid.UUID
    issued_at: int
    expires_at: int
    role: Role | None = None
    customer_id: uuid.UUID | None = None


def issue(
    config: TokenConfig,
    typ: TokenType,
    *,
    user_id: uuid.UUID,
    family_id: uuid.UUID,
    now: int,
    role: Role | None = None,
    customer_id: uuid.UUID | None = None,
) -> tuple[str, Claims]:
    """A signed token of type ``typ`` and what it says."""
    ttl_s = config.access_ttl_s if typ == "access" else config.refresh_ttl_s
    claims = Claims(
        typ=typ,
        user_id=user_id,
        token_id=uuid.uuid4(),
        family_id=family_id,
        issued_at=now,
        expires_at=now + ttl_s,
        role=role if typ == "access" else None,
        customer_id=customer_id if typ == "access" else None,
    )
    payload: dict[str, Any] = {
        "iss": config.issuer,
        "aud": config.audience,
        "sub": str(user_id),
        "iat": now,
        "exp": claims.expires_at,
        "jti": str(claims.token_id),
        "typ": typ,
        "fid": str(family_id),
    }
    if typ == "access":
        payload["role"] = role
        if customer_id is not None:
            payload["cid"] = str(customer_id)
    token = jwt.encode(
        payload, config.secret, algorithm=ALGORITHM, headers={"typ": HEADER_TYPES[typ]}
    )
    return token, claims


def decode(config: TokenConfig, token: str, typ: TokenType) -> Claims:
    """Check ``token`` as a token of type ``typ``; raise ``InvalidToken`` saying why not."""
    if len(token) > TOKEN_LENGTH_MAX:
        raise InvalidToken("the token is too long")
    try:
        decoded = jwt.api_jwt.decode_complete(
            token,
            config.secret,
            algorithms=list(ALLOWED_ALGORITHMS),
            audience=config.audience,
            issuer=config.issuer,
            leeway=LEEWAY_S,
            options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("the token has expired") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise InvalidToken(f"only {ALGORITHM} tokens are accepted") from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"the token is not valid: {exc}") from exc
    header, payload = decoded["header"], decoded["payload"]
    if header.get("typ") != HEADER_TYPES[typ] or payload.get("typ") != typ:
        raise InvalidToken(f"not an {typ} token" if typ == "access" else f"not a {typ} token")
    return _claims(typ, payload)


def _claims(typ: TokenType, payload: dict[str, Any]) -> Claims:
    try:
        role = payload.get("role") if typ == "access" else None
        if typ == "access" and role not in get_args(Role):
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        cid = payload.get("cid")
        return Claims(
            typ=typ,
            user_id=uuid.UUID(payload["sub"]),
            token_id=uuid.UUID(payload["jti"]),
            family_id=uuid.UUID(payload["fid"]),
            issued_at=int(payload["iat"]),
            expires_at=int(payload["exp"]),
            role=role,
            customer_id=uuid.UUID(cid) if typ == "access" and cid is not None else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidToken(f"the token's claims are malformed: {exc}") from exc
