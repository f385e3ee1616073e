"""The first operator account, from the environment, so a fresh container has an admin login."""

import os
import sys

from django.contrib.auth import get_user_model
from django.db import IntegrityError


def superuser_ensure(
    *, username: str | None = None, password: str | None = None, email: str | None = None
) -> bool:
    """Create the superuser named by DJANGO_SUPERUSER_USERNAME/PASSWORD/EMAIL if it is missing.

    An existing account is left alone (its password may have been changed since), so this runs
    safely on every start. True when it created the account.
    """
    username = username or os.environ.get("DJANGO_SUPERUSER_USERNAME", "")
    password = password or os.environ.get("DJANGO_SUPERUSER_PASSWORD", "")
    email = email or os.environ.get("DJANGO_SUPERUSER_EMAIL", "")
    if not (username and password):
        return False
    User = get_user_model()
    if User.objects.filter(username=username).exists():
        return False
    try:
        User.objects.create_superuser(username=username, email=email, password=password)
    except IntegrityError:  # another process started at the same moment and made it
        return False
    return True


def admin_exists() -> bool:
    """Whether anyone can sign in to the admin: an active superuser exists."""
    return get_user_model().objects.filter(is_superuser=True, is_active=True).exists()


def createsuperuser_command() -> str:
    """The command that makes an admin account here, with this interpreter as the user would
    type it (relative when it is under the working directory, as `.venv/bin/python`)."""
    python = os.path.relpath(sys.executable)
    if python.startswith(".."):
        python = sys.executable
    return f"{python} manage.py createsuperuser"
