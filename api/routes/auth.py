"""``/v1/auth``: register, sign in (OAuth2 password flow), refresh, log out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Response, status

from api import sessions
from api.deps import AnyUser, Context, DbPool, Public
from api.problems import problem_responses, validation_error
from bankflow.identity import store
from bankflow.identity.policy import password_problem
from schemas.auth import RefreshRequest, RegisterRequest, TokenForm, TokenResponse, UserOut

router = APIRouter(prefix="/auth", tags=["auth"])

#: RFC 6749 section 5.1: answers that carry tokens must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _token_response(pair: sessions.TokenPair, response: Response) -> TokenResponse:
    response.headers.update(NO_STORE)
    return TokenResponse(
        access_token=pair.access_token,
        expires_in=pair.expires_in,
        refresh_token=pair.refresh_token,
    )


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Public],
    summary="Open a customer login",
    responses=problem_responses(409, 413),
)
async def register(body: RegisterRequest, ctx: Context, pool: DbPool) -> UserOut:
    """Creates the customer and their user (role `customer`); sign in with `/v1/auth/token`.

    The password needs at least 12 characters and must not be a commonly used one;
    a refused password answers 422 naming the field `password` and the reason.
    """
    problem = password_problem(body.password, body.email)
    if problem is not None:
        raise validation_error("password", problem)
    # Hashed before a connection is taken: argon2id takes a while on purpose.
    password_hash = await ctx.hash_password(body.password)
    # An email in use raises ``EmailTaken``, which ``api.problems`` answers as a 409
    # ``email-taken`` problem.
    async with pool.connection() as conn:
        user = await store.create_user(
            conn,
            email=body.email,
            password_hash=password_hash,
            role="customer",
            full_name=body.full_name,
        )
    return UserOut.model_validate(user, from_attributes=True)


@router.post(
    "/token",
    dependencies=[Public],
    summary="Sign in: email and password for an access and a refresh token",
    responses=problem_responses(401, 423),
)
async def token(
    form: Annotated[TokenForm, Form()], ctx: Context, response: Response
) -> TokenResponse:
    """The OAuth2 password grant: `username` is the email.

    After 3 failed attempts each further one is answered more slowly; after 10 the
    email is locked for 30 minutes (423). Neither the answers nor their timing say
    whether the email belongs to anyone.
    """
    pair = await sessions.sign_in(ctx, form.username, form.password)
    return _token_response(pair, response)


@router.post(
    "/refresh",
    dependencies=[Public],
    summary="A new token pair for a refresh token (which then stops working)",
    responses=problem_responses(401),
)
async def refresh(body: RefreshRequest, ctx: Context, response: Response) -> TokenResponse:
    """Each refresh token works once. Presenting one a second time revokes every token
    of that sign-in (a copy may be in other hands) and answers 401."""
    pair = await sessions.refresh(ctx, body.refresh_token)
    return _token_response(pair, response)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Sign out: revoke this sign-in's tokens",
    responses=problem_responses(401, 503),
)
async def logout(user: AnyUser, ctx: Context) -> None:
    """The access token presented stops working at once, and so does every token
    issued from the same sign-in (its refresh tokens included)."""
    await sessions.logout(
        ctx, token_id=user.token_id, family_id=user.family_id, expires_at=user.token_expires_at
    )
