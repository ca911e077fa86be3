"""The STOW-RS answer written in the DICOM JSON model directly: the same JSON, key for key and in the same order, as
pydicom's `Dataset.to_json_dict` gave for the Dataset the door built before (kept here as the reference), over
every shape of result and hostile comments (backslashes, non-ASCII, empty, long)."""

from __future__ import annotations

import json
import random

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from studies.dicomweb import stow
from studies.models import IngestItem

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's warnings on a non-ASCII URL


def _reference_item(result: stow.PartResult, retrieve_url: str | None) -> Dataset:
    """The Referenced or Failed SOP Sequence item as the door built it with pydicom."""
    item = Dataset()
    item.ReferencedSOPClassUID = result.identity.sop_class_uid
    item.ReferencedSOPInstanceUID = result.identity.sop_instance_uid
    if result.failure is not None:
        item.FailureReason = result.failure
    if retrieve_url is not None:
        item.RetrieveURL = retrieve_url
    if result.warning is not None:
        item.WarningReason = result.warning
    if result.comment:
        comment = Dataset()
        comment.add(DataElement(0x00000902, "LO", result.comment, validation_mode=pydicom.config.IGNORE))
        item.FailedAttributesSequence = [comment]
    return item


def _reference(results: list[stow.PartResult], *, study_url, url_study: str | None) -> tuple[dict, int]:
    """store_response as it was: the Dataset (the same choices as store_response) and its to_json_dict."""
    referenced, failed = [], []
    for result in results:
        ident = result.identity
        url = ""
        if ident.study_instance_uid and ident.series_instance_uid and ident.sop_instance_uid:
            series = f"{study_url(ident.study_instance_uid)}/series/{ident.series_instance_uid}"
            url = f"{series}/instances/{ident.sop_instance_uid}"
        if result.failure is None:
            referenced.append((result, url))
        else:
            failed.append(result)
    response = Dataset()
    studies = {r.identity.study_instance_uid for r, _ in referenced}
    if url_study:
        response.RetrieveURL = study_url(url_study)
    elif len(studies) == 1 and "" not in studies:
        response.RetrieveURL = study_url(studies.pop())
    else:
        response.RetrieveURL = None
    if failed:
        response.FailedSOPSequence = [_reference_item(result, None) for result in failed]
    if referenced:
        response.ReferencedSOPSequence = [_reference_item(result, url) for result, url in referenced]
    warned = any(result.warning is not None for result, _ in referenced)
    status = 409 if not referenced else 202 if failed or warned else 200
    return response.to_json_dict(), status


COMMENTS = [
    "",
    "Stored with its 128-byte preamble set to zero: the preamble held non-zero bytes.",
    "a reason with a \\ backslash",
    "\\leading and trailing\\",
    "\\\\",
    "  spaces around  ",
    " ",
    "naïve Ünïcode ✓ 日本",
    "x" * 300,
    "quotes \" and ' and <tags>",
    "line\nbreak\ttab",
]


def _random_result(rng: random.Random, index: int) -> stow.PartResult:
    uid = generate_uid
    study = rng.choice([uid(), "", "1.2.3"])
    identity = stow.Identity(
        sop_class_uid=rng.choice(["1.2.840.10008.5.1.4.1.1.2", ""]),
        sop_instance_uid=rng.choice([uid(), ""]),
        study_instance_uid=study,
        series_instance_uid=rng.choice([uid(), ""]),
    )
    result = stow.PartResult(part=index, identity=identity, item_id=index)
    result.failure = rng.choice([None, None, *stow.FAILURE_CODES.values(), stow.FAILURE_STUDY_MISMATCH])
    result.warning = rng.choice([None, None, stow.WARNING_COERCION, stow.WARNING_STILL_PROCESSING])
    result.comment = rng.choice(COMMENTS)
    return result


@pytest.mark.parametrize("seed", range(60))
def test_the_answer_is_the_json_pydicom_gave(seed: int):
    rng = random.Random(seed)
    results = [_random_result(rng, i) for i in range(rng.randint(1, 12))]
    url_study = rng.choice([None, None, "1.2.3", generate_uid()])
    host = rng.choice(["http://127.0.0.1:8000", "https://portal.example/é"])

    def study_url(uid: str) -> str:
        return f"{host}/dicomweb/north/studies/{uid}"

    answer, status = stow.store_response(results, study_url=study_url, url_study=url_study)
    expected, expected_status = _reference(results, study_url=study_url, url_study=url_study)

    assert status == expected_status
    assert json.dumps(answer) == json.dumps(expected)  # the same keys in the same order, the same values


def test_every_comment_and_code_alone():
    for text in COMMENTS:
        for failure, warning in [(None, None), (stow.FAILURE_PROCESSING, None), (None, stow.WARNING_COERCION)]:
            result = stow.PartResult(
                part=1,
                identity=stow.Identity("1.2.840.10008.5.1.4.1.1.2", generate_uid(), "1.2.3", generate_uid()),
                item_id=1,
                failure=failure,
                warning=warning,
                comment=text,
            )
            answer, status = stow.store_response([result], study_url=lambda uid: f"http://x/{uid}", url_study=None)
            expected, expected_status = _reference([result], study_url=lambda uid: f"http://x/{uid}", url_study=None)

            assert (json.dumps(answer), status) == (json.dumps(expected), expected_status), text


# The verdict rows (`ItemVerdict`, one row of the columns the answer needs per item) turned into results.


def _door_result() -> stow.PartResult:
    return stow.PartResult(part=1, identity=stow.Identity("1.2.840.10008.5.1.4.1.1.2", "1.9.1", "1.9.2", "1.9.3"))


def test_a_stored_item_is_answered_with_the_uids_of_the_instance_it_became():
    result = _door_result()
    row = stow.ItemVerdict(
        pk=1,
        state=IngestItem.State.STORED,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        sop_instance_uid="1.8.1",
        series_instance_uid="1.8.3",
        study_instance_uid="1.8.2",
    )

    stow._settle(result, row)

    assert result.identity == stow.Identity("1.2.840.10008.5.1.4.1.1.4", "1.8.1", "1.8.2", "1.8.3")
    assert (result.failure, result.warning, result.comment) == (None, None, "")


def test_an_item_without_an_instance_keeps_the_door_s_uids_and_gets_its_failure():
    result = _door_result()

    stow._settle(
        result,
        stow.ItemVerdict(pk=1, state=IngestItem.State.REJECTED, reason="truncated", failure=IngestItem.Failure.INVALID),
    )

    assert result.identity == _door_result().identity
    assert (result.failure, result.comment) == (stow.FAILURE_DOES_NOT_MATCH_SOP_CLASS, "truncated")


def test_an_item_whose_row_is_gone_fails_with_a_processing_failure():
    result = _door_result()

    stow._settle(result, None)

    assert result.failure == stow.FAILURE_PROCESSING
    assert "record is gone" in result.comment
