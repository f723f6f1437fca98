"""Users and API tokens: what the management API, the dashboard and the CLI do with them.

Every operation takes the `Actor` asking, checks what that actor may do, and writes the audit
record. Token minting itself (a token is never broader than its issuer) is in auth/principal.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from llamacontroller.auth.principal import Principal
from llamacontroller.auth.store import CONSOLE
from llamacontroller.db.models import ApiToken
from llamacontroller.errors import BadRequest, Forbidden
from llamacontroller.services.audit import Actor, record
from llamacontroller.services.core import Store
from llamacontroller.services.history import UtcDatetime


class UserPublic(BaseModel):
    """A user as the API shows it: never the password hash."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    role: str
    disabled: bool
    created_at: UtcDatetime
    last_login_at: UtcDatetime | None


class TokenPublic(BaseModel):
    """A token as the API shows it: its prefix, never its value or hash."""

    id: int
    name: str
    prefix: str = Field(description="The first characters of the token, to recognise it")
    user: str | None = Field(description="The owner's username")
    scopes: list[str]
    models: list[str] = Field(description="The models it may use; empty = every model")
    created_at: UtcDatetime
    expires_at: UtcDatetime | None
    last_used_at: UtcDatetime | None
    revoked_at: UtcDatetime | None
    rpm_limit: int | None
    tpm_limit: int | None
    parallel_limit: int | None
    trusted_frontend: bool

    @classmethod
    def of(cls, row: ApiToken, username: str | None = None) -> TokenPublic:
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            user=username,
            scopes=row.scopes.split(),
            models=row.models.split(),
            created_at=row.created_at,
            expires_at=row.expires_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
            rpm_limit=row.rpm_limit,
            tpm_limit=row.tpm_limit,
            parallel_limit=row.parallel_limit,
            trusted_frontend=row.trusted_frontend,
        )


class TokenCreated(TokenPublic):
    token: str = Field(description="The token itself: shown this once, never stored")


# ---------------------------------------------------------------------------------- users


async def list_users(store: Store) -> list[UserPublic]:
    return [UserPublic.model_validate(u) for u in await store.auth.list_users()]


async def create_user(store: Store, actor: Actor, username: str, password: str, role: str) -> UserPublic:
    user = await store.auth.create_user(username, password, role)
    await record(store, actor, "user.create", f"user:{user.username}", after={"role": user.role})
    return UserPublic.model_validate(user)


async def update_user(
    store: Store,
    actor: Actor,
    user: int | str,
    *,
    role: str | None = None,
    disabled: bool | None = None,
    password: str | None = None,
) -> UserPublic:
    """Change a user's role, state or password (by id or name). Every dashboard session of the
    user ends with it (AuthStore.update_user)."""
    user_id = user if isinstance(user, int) else (await store.auth.get_user(user)).id
    if actor.principal is not None and user_id == actor.principal.user_id and (role not in (None, "admin") or disabled):
        raise BadRequest("admins cannot demote or disable themselves")
    row, before = await store.auth.update_user(user_id, role=role, disabled=disabled, password=password)
    after = {"role": row.role, "disabled": row.disabled, **({"password": "changed"} if password else {})}
    await record(store, actor, "user.update", f"user:{row.username}", before=before, after=after)
    return UserPublic.model_validate(row)


async def delete_user(store: Store, actor: Actor, user_id: int) -> UserPublic:
    if actor.principal is not None and user_id == actor.principal.user_id:
        raise BadRequest("admins cannot delete themselves")
    user = await store.auth.delete_user(user_id)
    await record(store, actor, "user.delete", f"user:{user.username}", before={"role": user.role})
    return UserPublic.model_validate(user)


async def change_own_password(store: Store, actor: Actor, current: str, new: str, keep_session: str) -> bool:
    """A signed-in user changes their password; False when `current` is wrong. Their other
    dashboard sessions end; `keep_session` (the one asking) stays."""
    principal = _signed_in(actor, "anonymous callers have no password")
    user = await store.auth.authenticate_password(str(principal.username), current)
    if user is None:
        return False
    await store.auth.update_user(user.id, password=new, keep_session=keep_session)
    await record(store, actor, "user.password", f"user:{user.username}")
    return True


# --------------------------------------------------------------------------------- tokens


async def list_tokens(store: Store, actor: Actor, *, every_user: bool = False) -> list[TokenPublic]:
    """The actor's own tokens; every user's for admins (and the console) who ask."""
    if actor.is_console:
        owner = None
    else:
        principal = _signed_in(actor, "anonymous callers have no tokens")
        owner = None if every_user and principal.is_admin else principal.user_id
    return [TokenPublic.of(t, u) for t, u in await store.auth.list_tokens(owner)]


async def create_token(
    store: Store,
    actor: Actor,
    name: str,
    *,
    owner: str | None = None,
    scopes: Sequence[str] | None = None,
    models: Sequence[str] = (),
    expires_in: str | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    parallel_limit: int | None = None,
    trusted_frontend: bool = False,
) -> TokenCreated:
    """A new token for `owner` (default: the actor), never broader than the actor's own
    credential. `models` are model ids (the caller resolves names and aliases)."""
    issuer = CONSOLE
    if not actor.is_console:
        principal = issuer = _signed_in(actor, "anonymous callers cannot create tokens")
        owner = owner or principal.username
        if owner != principal.username and not principal.is_admin:
            raise Forbidden("only admins create tokens for other users")
    if not owner:
        raise BadRequest("the token needs an owner", param="user")
    user = await store.auth.get_user(owner)
    created = await store.auth.create_token(
        user,
        name,
        list(scopes) if scopes else None,
        list(models),
        expires_in,
        {"rpm_limit": rpm_limit, "tpm_limit": tpm_limit, "parallel_limit": parallel_limit},
        issuer=issuer,
        trusted_frontend=trusted_frontend,
    )
    public = TokenPublic.of(created.row, user.username).model_dump()
    await record(store, actor, "token.create", f"token:{created.row.id}", after=public)
    return TokenCreated(**public, token=created.token)


async def revoke_token(store: Store, actor: Actor, token_id: int) -> TokenPublic:
    """Revoke a token: any one for admins and the console, only their own for others (a token
    of someone else is a 404, as if it did not exist)."""
    owner = None
    if not actor.is_console:
        principal = _signed_in(actor, "anonymous callers have no tokens")
        owner = None if principal.is_admin else principal.user_id
    row = await store.auth.revoke_token(token_id, owner_id=owner)
    await record(store, actor, "token.revoke", f"token:{token_id}")
    return TokenPublic.of(row)


def _signed_in(actor: Actor, refusal: str) -> Principal:
    principal = actor.principal
    if principal is None or principal.user_id is None or principal.username is None:
        raise Forbidden(refusal)
    return principal
