from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from devices.access_rules import device_policy
        from tenants.access import device_policy_register

        device_policy_register(device_policy)
