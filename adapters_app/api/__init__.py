"""The JSON management API under /api/ (Bearer API keys; OpenAPI at /api/openapi.json)."""

import ninja

if not hasattr(ninja, "NinjaAPI"):
    # pip's `ninja` (the build tool torch compiles kernels with) and django-ninja share the
    # import name; whichever was installed last owns ninja/__init__.py.
    raise ImportError(
        "`import ninja` found the ninja build tool, not django-ninja: "
        "pip install --force-reinstall --no-deps 'django-ninja>=1.6,<2' (make install does)"
    )
