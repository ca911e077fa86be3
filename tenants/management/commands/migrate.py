"""Django's migrate, run as the owner of the tables (DATABASE_URL), whatever role the application connects as."""

from typing import Any

from django.core.management.commands.migrate import Command as DjangoMigrate

from tenants.db.roles import as_owner


class Command(DjangoMigrate):
    def handle(self, *args: Any, **options: Any) -> Any:
        with as_owner(options["database"]):
            return super().handle(*args, **options)
