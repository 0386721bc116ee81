from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performs an action, and through which door (console, api, worker, cli)."""

    name: str
    via: str
    user_id: int | None = None
    # What the actor may do (see lifecycle.roles); workers and commands act as the system.
    role: str = "system"

    @classmethod
    def from_user(cls, user, via: str) -> "Actor":
        from adapters_app.lifecycle.roles import role_of

        return cls(name=user.get_username(), via=via, user_id=user.pk, role=role_of(user))

    @classmethod
    def system(cls, via: str = "system") -> "Actor":
        return cls(name=f"mint-{via}", via=via)
