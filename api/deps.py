"""Dependencies of the API's routes, as typed ``Annotated`` aliases.

A new router uses them like this::

    from api.deps import CurrentUser, Db, RequireRole

    router = APIRouter(prefix="/accounts", tags=["accounts"])

    @router.get("/{account_id}", dependencies=[RequireRole("customer", "teller", "admin")])
    async def get_account(account_id: uuid.UUID, user: CurrentUser, db: Db) -> AccountOut:
        # A customer sees only their own: another customer's id answers 404.
        owner = user.customer_id if user.role == "customer" else None
        ...

- ``CurrentUser``: the caller, from a valid, unrevoked access token (401 otherwise).
- ``RequireRole(*roles)``: 403 unless the caller has one of the roles. Every route
  declares one, or ``Public`` for the few that need no token; ``route_access`` reads
  the declaration (the OpenAPI ``x-roles`` / ``x-public`` and a test use it).
  ``Annotated[AuthUser, RequireRole("admin")]`` checks and gives the user at once.
- ``Db``: a PostgreSQL connection from the pool (``search_path`` = the configured
  schema), in autocommit mode: put statements that belong together in
  ``async with db.transaction():``. It goes back to the pool when the route returns.
- ``DbPool``: the pool itself, for routes that must not hold a connection while
  they wait (sign-in does).
- ``RedisClient``: the asyncio Redis client; prefix keys with ``ctx.redis_key``.
- ``Context`` and ``AppSettings``: the shared ``ApiContext`` and the settings.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
import redis.asyncio
from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from fastapi.security import OAuth2PasswordBearer
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from api import ratelimit, sessions, tokens
from api.context import ApiContext
from api.errors import Forbidden, Unauthorized
from bankflow import logs
from bankflow.settings import Settings
from schemas.auth import ROLES, STAFF_ROLES, Role

#: Where Swagger UI's "Authorize" button gets a token.
TOKEN_URL = "/v1/auth/token"  # noqa: S105 - a path, not a secret
oauth2_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


async def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(get_context)]


async def _settings(ctx: Context) -> Settings:
    return ctx.settings


AppSettings = Annotated[Settings, Depends(_settings)]


async def _db(ctx: Context) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with ctx.db_pool.connection() as conn:
        yield conn


# scope="function": the connection goes back to the pool as soon as the route returns,
# before the response is sent.
Db = Annotated[psycopg.AsyncConnection[Any], Depends(_db, scope="function")]


async def _pool(ctx: Context) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    return ctx.db_pool


DbPool = Annotated[AsyncConnectionPool[psycopg.AsyncConnection[Any]], Depends(_pool)]


async def _redis(ctx: Context) -> redis.asyncio.Redis:
    return ctx.redis


RedisClient = Annotated[redis.asyncio.Redis, Depends(_redis)]


@dataclass(frozen=True)
class AuthUser:
    """The caller, as their access token says (checked, not revoked)."""

    id: uuid.UUID
    role: Role
    #: Set for customers: the only customer whose data they may see.
    customer_id: uuid.UUID | None
    token_id: uuid.UUID
    family_id: uuid.UUID
    token_expires_at: int

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES

    @property
    def actor(self) -> str:
        """How records of who did something name this user (``user:<id>``)."""
        return f"user:{self.id}"


async def current_user(
    ctx: Context, request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> AuthUser:
    if not token:
        raise Unauthorized("this operation needs an access token (Authorization: Bearer ...)")
    claims = tokens.decode(ctx.tokens, token, "access")
    assert claims.role is not None  # noqa: S101 - decode checks an access token's role
    settings = ctx.settings
    counters = [
        (ctx.redis_key("rl", "user", str(claims.user_id)), settings.api_rate_per_user_per_min),
        (ratelimit.address_key(settings.redis_prefix, request.client.host if request.client
                               else "unknown"), settings.api_rate_per_address_per_min),
    ]  # fmt: skip
    over = retry_after = None
    try:
        # Revocation, the user's and the address's rate limits in one round trip.
        over, retry_after, denied = await ratelimit.count_and_read(
            ctx.redis, counters,
            [sessions.denied_token_key(ctx, claims.token_id),
             sessions.revoked_family_key(ctx, claims.family_id)],
        )  # fmt: skip
        request.scope.setdefault("state", {})[ratelimit.ADDRESS_COUNTED] = True
        revoked = any(value is not None for value in denied)
    except RedisError:  # the limits are not checked; revocation falls back to PostgreSQL
        revoked = await sessions.is_revoked(ctx, claims)
    logs.annotate(user_id=claims.user_id)  # the request's log lines name who asked
    if revoked:
        raise Unauthorized("this access token was revoked (signed out); sign in again")
    if over is not None and retry_after is not None:
        raise ratelimit.too_many(counters[over][1], retry_after, ("user", "address")[over])
    return AuthUser(
        id=claims.user_id,
        role=claims.role,
        customer_id=claims.customer_id,
        token_id=claims.token_id,
        family_id=claims.family_id,
        token_expires_at=claims.expires_at,
    )


CurrentUser = Annotated[AuthUser, Depends(current_user)]


class RoleGuard:
    """The dependency behind ``RequireRole``; its ``roles`` are the route's declaration."""

    def __init__(self, roles: frozenset[Role]) -> None:
        self.roles = roles

    async def __call__(self, user: CurrentUser) -> AuthUser:
        if user.role not in self.roles:
            allowed = ", ".join(r for r in ROLES if r in self.roles)
            raise Forbidden(f"this operation needs one of the roles: {allowed}")
        return user

    def __repr__(self) -> str:
        return f"RequireRole({', '.join(sorted(self.roles))})"


def RequireRole(*roles: Role) -> Any:  # noqa: N802 - reads as a type in Annotated[...]
    """Declare (and check) the roles that may call a route: 403 for any other."""
    unknown = set(roles) - set(ROLES)
    if not roles or unknown:
        raise ValueError(f"RequireRole needs roles among {ROLES}, got {roles}")
    return Depends(RoleGuard(frozenset(roles)))


require_roles = RequireRole
#: Any signed-in user, whatever their role (still a declaration, not an omission).
AnyUser = Annotated[AuthUser, RequireRole(*ROLES)]
StaffUser = Annotated[AuthUser, RequireRole(*STAFF_ROLES)]
AdminUser = Annotated[AuthUser, RequireRole("admin")]


async def _public() -> None:
    """Marks a route as needing no token (health checks, register, token, refresh).

    Async like every dependency here: a plain function would be run in a thread.
    """


Public = Depends(_public)


@dataclass(frozen=True)
class Access:
    public: bool
    #: The roles that pass every guard of the route (the intersection); None: no guard.
    roles: frozenset[Role] | None


def iter_routes(app: FastAPI) -> Iterator[Any]:
    """Every route of ``app`` with its full path, routers included.

    FastAPI includes routers lazily (``app.routes`` holds the included router, not its
    routes); ``iter_route_contexts`` gives each route with its prefix and the
    dependencies of every router it is included through.
    """
    yield from iter_route_contexts(app.routes)


def route_access(route: Any) -> Access:
    """What a route declares: public, or the roles allowed (both or neither is a bug)."""
    public = False
    roles: frozenset[Role] | None = None
    stack: list[Dependant] = [route.dependant] if getattr(route, "dependant", None) else []
    while stack:
        dependant = stack.pop()
        if dependant.call is _public:
            public = True
        elif isinstance(dependant.call, RoleGuard):
            roles = dependant.call.roles if roles is None else roles & dependant.call.roles
        stack.extend(dependant.dependencies)
    return Access(public=public, roles=roles)
