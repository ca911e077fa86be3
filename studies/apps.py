from django.apps import AppConfig


class StudiesConfig(AppConfig):
    name = "studies"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from studies.access_rules import study_visibility
        from studies.models import Study
        from studies.services.shares import share_invitation_accepted
        from tenants.access import break_glass_register, visibility_rule_register
        from tenants.models import Invitation
        from tenants.services import invitation_accepted_register

        visibility_rule_register(Study, study_visibility)
        break_glass_register(Study, perm="studies.view_study")
        invitation_accepted_register(Invitation.Purpose.SHARE, share_invitation_accepted)

        from audit.selectors import compliance_section_register
        from studies.selectors.storage import encryption_compliance_section

        compliance_section_register(encryption_compliance_section)
