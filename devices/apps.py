from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "devices"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from devices.access_rules import device_policy
        from tenants.access import device_policy_register

        device_policy_register(device_policy)

        from devices.services import device_gate, devices_of_departed_custodian
        from tenants.access import credential_gate_register
        from tenants.services import membership_end_hook_register

        # A request made with a device-bound token: allowed only if the device may be used for it too.
        credential_gate_register(device_gate)
        # A custodian who leaves: wipe orders for their devices and their device tokens revoked, in that request.
        membership_end_hook_register(devices_of_departed_custodian)

        from audit.selectors import compliance_section_register
        from devices.selectors import devices_compliance_section

        compliance_section_register(devices_compliance_section)
