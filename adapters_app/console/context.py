"""Template context for every console page: the user's role and what it may do."""

from adapters_app.lifecycle import roles


def role(request) -> dict:
    user_role = roles.role_of(getattr(request, "user", None))
    return {"role": user_role, "can": roles.capabilities(user_role)}
