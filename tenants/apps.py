from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _app_role_grant(using: str = "default", **kwargs: Any) -> None:
    """After every migration, the application's role gets its rights on the tables made (tenants.db.roles)."""
    from django.db import connections

    from tenants.db.roles import app_role_grant

    app_role_grant(connections[using])


class TenantsConfig(AppConfig):
    name = "tenants"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_app_role_grant, sender=self, dispatch_uid="tenants.app_role_grant")
