import warnings

from django.apps import AppConfig


class StudiesConfig(AppConfig):
    name = "studies"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # pydicom warns about a value that breaks its VR's rule quoting the value, to its logger (where
        # portal.log_filters.DicomValueFilter withholds it) and as a Python warning, printed to stderr, which a
        # Celery worker writes to its log: a patient's birth date or name in a plain log. The warning is not printed;
        # the logger's record says which rule was broken.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")

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
