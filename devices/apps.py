from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from devices.services import device_gate
        from tenants.access import credential_gate_register

        # A request made with a device-bound token: allowed only if the device may be used for it too.
        credential_gate_register(device_gate)
