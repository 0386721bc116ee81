"""Who may do what: the three console roles and the one table of what each action needs.

Roles are Django groups named after them; a superuser is an admin and a user in no
group is a viewer. Each role includes the ones before it. The lifecycle services
check this table, so the console, the JSON API and the CLI enforce the same rules;
the console also checks before acting (a forged POST gets a 403) and hides the
buttons a role may not use.
"""

from __future__ import annotations

from adapters_app.lifecycle.errors import Forbidden

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)
# Internal actors (workers, management commands) act for the system itself.
SYSTEM = "system"
# A person key (lifecycle.keys) is no console role: it may ask its person's adapters and
# nothing else, whatever the role of the admin who issued it.
PERSON_KEY = "person-key"
PERSON_KEY_ACTIONS = frozenset({"infer"})

REQUIRED = {
    # viewers read, and may ask a model a question (the playground, /v1 inference)
    "infer": VIEWER,
    # and tell a person's adapter what they think of its answers, or what changed: updates
    # wait for a retrain, which only an operator's policy starts and the gate judges
    "update.record": VIEWER,
    # operators change adapters' state
    "dataset.upload": OPERATOR,
    "train": OPERATOR,
    "evaluate": OPERATOR,
    "promote": OPERATOR,
    "rollback": OPERATOR,
    "gate.configure": OPERATOR,
    "job.cancel": OPERATOR,
    "job.retry": OPERATOR,
    "residency.manage": OPERATOR,
    "study.run": OPERATOR,
    # A personal adapter memorises its person's data, so taking its weights away is as
    # sensitive as reading their dataset; the audit log names every person and action.
    "revision.download": OPERATOR,
    "audit.export": OPERATOR,
    # admins manage who and what exists
    "person.create": ADMIN,
    "person.erase": ADMIN,
    "adapter.create": ADMIN,
    "base_model.register": ADMIN,
    "key.manage": ADMIN,
}


def role_of(user) -> str:
    if not getattr(user, "is_authenticated", False):
        return ""
    if user.is_superuser:
        return ADMIN
    names = set(user.groups.values_list("name", flat=True))
    return next((role for role in reversed(ROLES) if role in names), VIEWER)


def allows(role: str, action: str) -> bool:
    if role == SYSTEM:
        return True
    if role == PERSON_KEY:
        return action in PERSON_KEY_ACTIONS
    need = REQUIRED[action]
    return role in ROLES and ROLES.index(role) >= ROLES.index(need)


def authorize(actor, action: str) -> None:
    """Raise Forbidden unless `actor`'s role may perform `action`."""
    if not allows(actor.role, action):
        raise Forbidden(
            f"{actor.name} is a {actor.role or 'visitor'}; {action} needs the {REQUIRED[action]} role"
        )


def capabilities(role: str) -> dict[str, bool]:
    """action -> allowed, for templates (`can.train`); dots become underscores."""
    return {action.replace(".", "_"): allows(role, action) for action in REQUIRED}
