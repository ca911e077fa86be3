from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"

    def ready(self) -> None:
        from portal.accounts import signals  # noqa: F401  (connects the sign-in audit receivers)
        from portal.web import schema  # noqa: F401  (registers the OpenAPI description of our authentication)
        from portal.web.actor import receiver_connect

        receiver_connect()  # the one django-auditlog receiver of portal.web.actor.actor_set's contexts
