"""``/v1/users``: the caller's own user, and user and role management for admins."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from api import sessions
from api.deps import AdminUser, AnyUser, Context, Db
from api.errors import Conflict, NotFound
from api.problems import problem_responses
from bankflow.identity import errors as identity_errors
from bankflow.identity import store
from schemas.auth import Role, RoleChange, UserOut, UserPage

router = APIRouter(prefix="/users", tags=["users"])

#: A page of users is at most this long (admins page with ``after``).
PAGE_SIZE_MAX = 200


def _out(user: store.User) -> UserOut:
    return UserOut.model_validate(user, from_attributes=True)


@router.get("/me", summary="The signed-in user", responses=problem_responses(401, 404))
async def me(user: AnyUser, db: Db) -> UserOut:
    found = await store.get_user(db, user.id)
    if found is None:
        raise NotFound("this user no longer exists")
    return _out(found)


@router.get("", summary="List users (admin)", responses=problem_responses(401, 403))
async def list_users(
    admin: AdminUser,
    db: Db,
    role: Annotated[Role | None, Query(description="Only users with this role.")] = None,
    after: Annotated[
        uuid.UUID | None, Query(description="The `next` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = 50,
) -> UserPage:
    """Users in email order, a page at a time."""
    users = await store.list_users(db, role=role, after_id=after, limit=limit + 1)
    more = len(users) > limit
    page = users[:limit]
    return UserPage(items=[_out(u) for u in page], next=str(page[-1].id) if more else None)


@router.patch(
    "/{user_id}",
    summary="Change a member of staff's role (admin)",
    responses=problem_responses(401, 403, 404, 409),
)
async def change_role(
    user_id: uuid.UUID, body: RoleChange, admin: AdminUser, ctx: Context, db: Db
) -> UserOut:
    """Staff roles only: a customer's user stays a customer (409). The user's tokens
    are revoked at once, so the new role applies from their next sign-in."""
    if user_id == admin.id:
        raise Conflict("admins cannot change their own role; ask another admin")

    async def deny(families: list[uuid.UUID]) -> None:
        await sessions.deny_families(ctx, families)

    try:
        user = await store.change_role(db, user_id, body.role, deny=deny)
    except identity_errors.UserNotFound as exc:
        raise NotFound(f"no user {user_id}") from exc
    except identity_errors.RoleChangeRefused as exc:
        raise Conflict(str(exc)) from exc
    return _out(user)
