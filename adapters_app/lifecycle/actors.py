from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performs an action, and through which door (console, api, worker, cli)."""

    name: str
    via: str
    user_id: int | None = None

    @classmethod
    def from_user(cls, user, via: str) -> "Actor":
        return cls(name=user.get_username(), via=via, user_id=user.pk)

    @classmethod
    def system(cls, via: str = "system") -> "Actor":
        return cls(name=f"mint-{via}", via=via)
