"""The first run as a person tries it (issue 8): `make run` on free ports, then the demo journey through Debian's
Chromium, HTTP and dcmtk, and Ctrl-C at the end. No answer is a 5xx, and the server's log has no traceback.

The steps run in order on one `make run` and share what they made (the study sent by storescu is the one shared,
opened in an emergency and exported). Each step is its own test, so that one failing step names itself and the
others still run.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from playwright.sync_api import expect

from studies.dicom.synthetic import make_study
from tests.interop.ohif_checks import ohif_build, ohif_served, ohif_study, walk_the_viewer

pytestmark = [pytest.mark.journey, pytest.mark.e2e, pytest.mark.integration]

ROLES = ["admin", "compliance", "radiologist", "technologist", "referrer", "auditor"]
STORESCU_PATIENT = "JOURNEY^STORE"
STORESCU_ACCESSION = "JRN-STORE-1"
state: dict[str, object] = {}


# Django's messages, not the training banner that shares their look (templates/training/_banner.html).
MESSAGES = ".messages:not(#training-warnings)"


def _token(enclave, username: str, tenant: str = "north") -> str:
    if (username, tenant) not in state:
        out = enclave.manage("api_token", "create", "--user", username, "--tenant", tenant)
        state[(username, tenant)] = out.strip().splitlines()[-1].strip()
    return str(state[(username, tenant)])


def _qido(enclave, token: str, **params: str):
    session = enclave.http()
    return session.get(
        f"{enclave.url}/dicomweb/north/studies",
        params=params,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
        timeout=60,
    )


def _wait_for_study(enclave, token: str, accession: str, instances: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = _qido(enclave, token, AccessionNumber=accession, includefield="00201208")
        assert answer.status_code in (200, 204), answer.text
        found = answer.json() if answer.status_code == 200 else []
        if found and int(found[0].get("00201208", {}).get("Value", [0])[0]) >= instances:
            return found[0]
        assert time.monotonic() < deadline, f"{accession}: not searchable with {instances} instances in time"
        time.sleep(0.5)


def _stow_body(files: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n" for data in files
    ]
    body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _study_id(page, patient: str) -> str:
    """The public id of the study row showing `patient` ("FAMILY, GIVEN") on the study list."""
    row = page.locator("main [id^=study-]", has_text=patient).first
    expect(row).to_be_visible()
    return row.get_attribute("id").removeprefix("study-")


# 1. Sign in with TOTP as every demo role, and as the operator
# ------------------------------------------------------------------------------


def test_the_banner_names_the_ports_the_mail_folder_and_the_demo_users(enclave):
    out = enclave.output()
    assert f"http://127.0.0.1:{enclave.web_port}/" in out
    assert f"127.0.0.1:{enclave.dicom_port}" in out
    assert f"{enclave.var}/mail/" in out
    assert "gunicorn, DEBUG off" in out
    for tenant in ("north", "south"):
        for role in ROLES:
            assert f"{tenant}-{role}" in enclave.secrets
    assert "ops" in enclave.secrets


@pytest.mark.parametrize("tenant", ["north", "south"])
def test_each_demo_role_signs_in_with_totp(enclave, people, tenant):
    for role in ROLES:
        page = people.page(f"{tenant}-{role}")
        page.goto(f"{enclave.url}/t/{tenant}/")
        expect(page.locator(".whoami")).to_contain_text("Sign out")
        expect(page.locator(".tenant-name")).to_be_visible()


def test_the_operator_sees_ops(enclave, people):
    page = people.page("ops")
    page.goto(f"{enclave.url}/ops/")
    expect(page.locator("body")).to_contain_text("Platform administration")


# 2. Images in: storescu, a folder and two zips in the browser, STOW-RS beside QIDO-RS
# ------------------------------------------------------------------------------


def test_storescu_sends_a_study_as_the_readme_says(enclave, tmp_path):
    folder = tmp_path / "study"
    files = make_study(
        series=2, instances_per_series=3, rows=128, columns=128, patient_name=STORESCU_PATIENT,
        patient_id="MRN-JRN-1", accession=STORESCU_ACCESSION, study_description="Journey CT",
    )  # fmt: skip
    for n, data in enumerate(files):
        sub = folder / f"series{n // 3}"  # sub-folders: the README's `+r` (recursive) is needed
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"IM{n:04d}.dcm").write_bytes(data)
    sent = subprocess.run(
        ["storescu", "-aet", "DEMO_CT", "-aec", "NORTH", "+sd", "+r", "127.0.0.1", str(enclave.dicom_port),
         str(folder)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    found = _wait_for_study(enclave, _token(enclave, "north-radiologist"), STORESCU_ACCESSION, 6)
    state["storescu_study_uid"] = found["0020000D"]["Value"][0]


def test_a_folder_of_8_files_and_two_zips_uploaded_at_once(enclave, people):
    folder = make_study(series=1, instances_per_series=8, patient_name="JOURNEY^FOLDER", accession="JRN-FOLDER")
    zips = []
    for n in range(2):
        study = make_study(series=1, instances_per_series=3, patient_name=f"JOURNEY^ZIP{n}", accession=f"JRN-ZIP{n}")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for i, data in enumerate(study):
                archive.writestr(f"zip{n}/IM{i:04d}.dcm", data)
        zips.append({"name": f"study{n}.zip", "mimeType": "application/zip", "buffer": buffer.getvalue()})
    chosen = [
        *[{"name": f"IM{i:04d}.dcm", "mimeType": "application/dicom", "buffer": d} for i, d in enumerate(folder)],
        *zips,
    ]
    page = people.page("north-technologist")
    page.goto(f"{enclave.url}/t/north/upload/")
    main = page.locator("main")
    main.locator("#upload-files").set_input_files(chosen)
    summary = main.locator("#upload-summary")
    expect(summary).to_have_attribute("data-done", "1", timeout=90_000)
    text = summary.inner_text()
    assert "rejected" not in text, text
    assert "conflict" not in text, text
    token = _token(enclave, "north-radiologist")
    _wait_for_study(enclave, token, "JRN-FOLDER", 8)
    _wait_for_study(enclave, token, "JRN-ZIP0", 3)
    _wait_for_study(enclave, token, "JRN-ZIP1", 3)


def test_100_parallel_qido_searches_beside_8_parallel_stow_uploads(enclave):
    token = _token(enclave, "north-technologist")
    reader = _token(enclave, "north-radiologist")
    uploads = [
        make_study(series=1, instances_per_series=2, patient_name=f"JOURNEY^STOW{n}", accession=f"JRN-STOW{n}")
        for n in range(8)
    ]

    def stow(files: list[bytes]) -> int:
        body, content_type = _stow_body(files)
        answer = enclave.http().post(
            f"{enclave.url}/dicomweb/north/studies",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": content_type,
                     "Accept": "application/dicom+json"},
            timeout=120,
        )  # fmt: skip
        return answer.status_code

    searches = [{"PatientName": "JOURNEY*"}, {"AccessionNumber": STORESCU_ACCESSION}, {"ModalitiesInStudy": "CT"}, {}]

    def search(n: int) -> int:
        return _qido(enclave, reader, **searches[n % len(searches)]).status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        stows = [pool.submit(stow, files) for files in uploads]
        qidos = [pool.submit(search, n) for n in range(100)]
        stow_codes = [f.result() for f in stows]
        qido_codes = [f.result() for f in qidos]
    assert all(code in (200, 204) for code in qido_codes), sorted(set(qido_codes))
    assert all(code in (200, 202) for code in stow_codes), stow_codes  # 202: stored later, found below
    for n in range(8):
        _wait_for_study(enclave, reader, f"JRN-STOW{n}", 2)


def test_the_ohif_viewer_lists_opens_renders_and_scrolls_a_stowed_study(enclave, people, tmp_path):
    """Issue 8: the OHIF Viewer build from npm (@ohif/app, cached by scripts/ohif.py), served statically on the
    port whose origin `make run` was started with in DICOMWEB_CORS_ORIGINS, configured as the README says with a
    radiologist's token, against `make run`: the study list, the study's thumbnails, a rendered and scrolled series,
    and no DICOMweb request answered 4xx or 5xx. The study is STOWed by the technologist through HTTP."""
    ohif_build()  # fetched once into the cache; a build that cannot be had fails the step
    shown = ohif_study(patient_name="JOURNEY^OHIF", patient_id="MRN-JRN-OHIF", accession="JRN-OHIF",
                       description="Journey OHIF")  # fmt: skip
    body, content_type = _stow_body(shown.files)
    stowed = enclave.http().post(
        f"{enclave.url}/dicomweb/north/studies",
        data=body,
        headers={"Authorization": f"Bearer {_token(enclave, 'north-technologist')}", "Content-Type": content_type,
                 "Accept": "application/dicom+json"},
        timeout=120,
    )  # fmt: skip
    assert stowed.status_code in (200, 202), stowed.text
    token = _token(enclave, "north-radiologist")
    _wait_for_study(enclave, token, shown.accession, shown.instances)
    series = _qido_series(enclave, token, shown.study_uid)

    page = people.new_page()
    try:
        with ohif_served(
            portal=enclave.url, tenant="north", token=token, log=tmp_path / "ohif.log", port=enclave.ohif_port
        ) as viewer:
            walk_the_viewer(
                page, viewer=viewer, portal=enclave.url, tenant="north", study=shown, series_uids=series,
                artifacts="journey-ohif",
            )  # fmt: skip
    finally:
        page.context.close()


def _qido_series(enclave, token: str, study_uid: str) -> list[str]:
    """The study's series instance UIDs in series-number order, searched by QIDO-RS."""
    answer = enclave.http().get(
        f"{enclave.url}/dicomweb/north/studies/{study_uid}/series",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    found = sorted(answer.json(), key=lambda s: int(s["00200011"]["Value"][0]))
    return [s["0020000E"]["Value"][0] for s in found]


# 3. Images out: the list, the viewer, the access history, a share, break-glass, an export
# ------------------------------------------------------------------------------


def test_study_list_viewer_and_access_history(enclave, people):
    page = people.page("north-radiologist")
    main = page.locator("main")
    page.goto(f"{enclave.url}/t/north/studies/")
    public_id = _study_id(page, "JOURNEY, STORE")
    state["study_public_id"] = public_id
    main.locator(f"#study-{public_id}").get_by_role("link", name="JOURNEY, STORE").click()
    page.wait_for_url(re.compile(rf"/t/north/studies/{public_id}/$"))
    img = main.locator("#frame")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0 && !img.dataset.loading", arg=img.element_handle()
    )
    assert "/frames/1/rendered" in img.get_attribute("src")
    main.locator("#study-history").click()
    page.wait_for_url(re.compile(rf"/t/north/studies/{public_id}/history/$"))
    history = main.locator("#access-history")
    expect(history).to_contain_text("north-radiologist")
    # The frames the viewer rendered are folded with the page's thumbnails into one read a window (issue 8 #11).
    expect(history).to_contain_text("Images or metadata viewed")


def test_a_lapsed_training_refuses_images_until_a_completion_is_recorded(enclave):
    """Issue 9: the demo's north-referrer has a lapsed HIPAA Security Awareness, so the training gate refuses them
    patient data with the reason; a completion a learning system posts with the compliance officer's token
    restores access at the next request (the share and break-glass steps below need it)."""
    referrer = _token(enclave, "north-referrer")
    refused = _qido(enclave, referrer)
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "training_expired"
    assert "HIPAA Security Awareness" in refused.json()["detail"]

    officer = {"Authorization": f"Bearer {_token(enclave, 'north-compliance')}"}
    session = enclave.http()
    courses = session.get(f"{enclave.url}/api/v1/t/north/training/courses/", headers=officer, timeout=60)
    assert courses.status_code == 200, courses.text
    [course] = [c for c in courses.json()["results"] if c["title"] == "HIPAA Security Awareness"]
    certificate = b"%PDF-1.4\n% certificate\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"
    recorded = session.post(
        f"{enclave.url}/api/v1/t/north/training/completions/",
        headers=officer,
        data={"username": "north-referrer", "course": course["id"], "completed_on": time.strftime("%Y-%m-%d")},
        files={"evidence": ("certificate.pdf", certificate, "application/pdf")},
        timeout=60,
    )
    assert recorded.status_code == 201, recorded.text
    assert _qido(enclave, referrer).status_code in (200, 204)


def test_a_share_and_its_revocation(enclave, people):
    public_id = state["study_public_id"]
    study_path = f"/t/north/studies/{public_id}/"
    referrer = people.http("north-referrer")
    assert referrer.get(f"{enclave.url}{study_path}").status_code == 404

    page = people.page("north-radiologist")
    main = page.locator("main")
    page.goto(f"{enclave.url}{study_path}access/")
    form = main.locator("#share-member")
    form.locator("select[name=grantee]").select_option("north-referrer")
    form.locator("input[name=note]").fill("Journey share")
    form.get_by_role("button", name="Share").click()
    page.wait_for_load_state()
    row = main.locator("#shares [id^=share-]", has_text="north-referrer").first
    expect(row).to_be_visible()
    assert referrer.get(f"{enclave.url}{study_path}").status_code == 200

    row.get_by_role("button", name="Revoke").click()
    page.wait_for_load_state()
    expect(main.locator(MESSAGES)).to_be_visible()
    assert referrer.get(f"{enclave.url}{study_path}").status_code == 404


def test_break_glass_and_its_review(enclave, people):
    page = people.page("north-referrer")
    main = page.locator("main")
    page.goto(f"{enclave.url}/t/north/break-glass/")
    form = main.locator("#break-glass-form")
    form.locator("input[name=identifier]").fill(STORESCU_ACCESSION)
    form.locator("textarea[name=reason]").fill("Journey: patient in the emergency room, prior CT needed")
    form.locator("input[name=otp_token]").fill(enclave.totp("north-referrer"))
    form.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"/t/north/break-glass/$"))
    expect(page.locator(MESSAGES)).to_contain_text("Emergency access granted")
    grant = main.locator("#break-glass-grants [id^=grant-]", has_text=STORESCU_ACCESSION).first
    expect(grant).to_contain_text("Open")
    grant_id = grant.get_attribute("id").removeprefix("grant-")

    review = people.page("north-compliance")
    review.goto(f"{enclave.url}/t/north/break-glass/review/")
    card = review.locator(f"main #review-{grant_id}")
    expect(card).to_contain_text("Journey: patient in the emergency room")
    card.get_by_label("Appropriate", exact=True).check()
    card.locator("textarea[name=note]").fill("Journey review")
    card.get_by_role("button", name="Sign off").click()
    review.wait_for_url(re.compile(r"/t/north/break-glass/review/$"))
    expect(review.locator("main #reviewed")).to_contain_text("Journey review")


def test_a_deidentified_export_downloaded(enclave, people):
    page = people.page("north-radiologist")
    main = page.locator("main")
    page.goto(f"{enclave.url}/t/north/studies/{state['study_public_id']}/export/")
    main.locator("input[name=kind][value=deidentified]").check()
    main.locator("#export-form button[type=submit]").click()
    page.wait_for_url(re.compile(r"/t/north/exports/[0-9a-f-]{36}/$"))
    expect(main.locator("#export-label")).to_have_text("Done", timeout=60_000)
    with page.expect_download() as info:
        main.locator("#export-download").click()
    archive = zipfile.ZipFile(io.BytesIO(Path(info.value.path()).read_bytes()))
    assert len(archive.namelist()) == 6
    for name in archive.namelist():
        member = archive.read(name)
        assert b"JOURNEY^STORE" not in member
        assert b"MRN-JRN-1" not in member
        assert pydicom.dcmread(io.BytesIO(member)).PatientIdentityRemoved == "YES"


# 4. People: an invitation, an unlock
# ------------------------------------------------------------------------------


def test_a_member_invited_by_email(enclave, people):
    """Issue 8 #3: adding a person is an invitation to an e-mail address, mailed by a Celery task (var/mail/)."""
    page = people.page("north-admin")
    main = page.locator("main")
    page.goto(f"{enclave.url}/t/north/members/")
    form = main.locator("#add-member")
    form.locator("input[name=email]").fill("new.radiologist@journey.invalid", timeout=5_000)
    form.locator("select[name=role]").select_option("radiologist")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state()
    expect(main.locator(MESSAGES)).to_contain_text(re.compile("invit", re.I))
    mail = enclave.var / "mail"
    deadline = time.monotonic() + 30
    while not any("new.radiologist@journey.invalid" in p.read_text(errors="replace") for p in mail.glob("*")):
        assert time.monotonic() < deadline, "no invitation mail in var/mail/"
        time.sleep(0.5)


def test_a_locked_out_account_unlocked_by_the_admin(enclave, people):
    """The lockout page promises that an administrator can unlock: five wrong passwords, then the admin's unlock."""
    session = enclave.http()
    login = f"{enclave.url}/accounts/login/"
    for _ in range(6):
        form = session.get(login)
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        answer = session.post(
            login, data={"csrfmiddlewaretoken": csrf, "username": "south-auditor", "password": "wrong-wrong-wrong"},
            headers={"Referer": login},
        )  # fmt: skip
    assert answer.status_code == 429

    page = people.page("south-admin")
    main = page.locator("main")
    page.goto(f"{enclave.url}/t/south/members/")
    row = main.locator("tr", has_text="south-auditor").first
    row.locator("summary", has_text="Manage").click()  # a member's actions are folded away
    row.get_by_role("button", name=re.compile("unlock", re.I)).click(timeout=5_000)
    page.wait_for_load_state()
    expect(main.locator(MESSAGES)).to_contain_text(re.compile("lockout is lifted", re.I))

    form = session.get(login)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    answer = session.post(
        login, data={"csrfmiddlewaretoken": csrf, "username": "south-auditor", "password": enclave.password},
        headers={"Referer": login}, allow_redirects=False,
    )  # fmt: skip
    assert answer.status_code == 302
    assert "/accounts/mfa/" in answer.headers["Location"]


# 5. The trail after all of that; the API's docs; the operators' admin
# ------------------------------------------------------------------------------


def test_the_audit_page_and_its_csv(enclave, people):
    page = people.page("north-compliance")
    page.goto(f"{enclave.url}/t/north/audit/")
    expect(page.locator("main")).to_contain_text("north-radiologist")
    answer = people.http("north-compliance").get(f"{enclave.url}/t/north/audit/export.csv", timeout=120)
    assert answer.status_code == 200
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert len(rows) > 20, rows[:3]
    assert any("north-radiologist" in ",".join(r) for r in rows)


def test_the_api_docs_render_under_the_csp(enclave, people):
    page = people.page("north-admin")
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    answer = page.goto(f"{enclave.url}/api/docs/")
    assert "unsafe-inline" not in answer.headers["content-security-policy"]
    page.locator(".opblock").first.wait_for(state="visible", timeout=30_000)
    assert page.locator(".opblock").count() > 5
    assert violations == []


def test_the_operator_admin_after_the_journey(enclave, people):
    page = people.page("ops")
    answer = page.goto(f"{enclave.url}/ops/")
    assert answer.status == 200
    expect(page.locator("body")).to_contain_text("Platform administration")


# 6. No 5xx, no traceback, and Ctrl-C stops everything
# ------------------------------------------------------------------------------


def test_no_answer_was_a_5xx(enclave):
    assert enclave.server_errors == []


def test_ctrl_c_stops_everything_cleanly_and_the_log_has_no_traceback(enclave, people):
    for page in list(people.pages.values()):
        page.context.close()
    people.pages.clear()
    status = enclave.stop()
    out = enclave.output()
    assert status in (0, 130), out[-4000:]  # 130: the shell's own answer to SIGINT, after a clean stop
    assert "Enclave stopped." in out
    assert "Stopping PostgreSQL" in out
    assert "Stopping Valkey" in out
    assert "Traceback" not in out, out[out.index("Traceback") - 2000 : out.index("Traceback") + 3000]
    assert not (enclave.var / "pg" / "postmaster.pid").exists()  # PostgreSQL shut down, not killed
    assert not list(re.finditer(r'" 5\d\d ', out)), "the access log shows a 5xx"
