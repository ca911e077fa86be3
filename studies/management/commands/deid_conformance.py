"""`manage.py deid_conformance`: the de-identification conformance table (SECURITY.md F8), generated from the
profile the exporter runs (studies.dicom.conformance).

- no option: print the table (Markdown) to standard output;
- `--write`: write it to docs/DEIDENTIFICATION.md;
- `--check`: exit 1 when docs/DEIDENTIFICATION.md differs from what the code generates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.dicom.conformance import conformance_markdown

DOC = Path("docs") / "DEIDENTIFICATION.md"


class Command(BaseCommand):
    help = "Print, write (--write) or check (--check) docs/DEIDENTIFICATION.md, the de-identification table."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--write", action="store_true", help="Write docs/DEIDENTIFICATION.md.")
        parser.add_argument("--check", action="store_true", help="Exit 1 when the file differs from the code.")

    def handle(self, *args: Any, **options: Any) -> None:
        text = conformance_markdown()
        path = Path(settings.BASE_DIR) / DOC
        if options["write"]:
            path.write_text(text, encoding="utf-8")
            self.stdout.write(f"wrote {DOC}")
        elif options["check"]:
            current = path.read_text(encoding="utf-8") if path.exists() else ""
            if current != text:
                raise CommandError(f"{DOC} does not match the de-identification code: run deid_conformance --write")
            self.stdout.write(f"{DOC} matches the code")
        else:
            self.stdout.write(text, ending="")
