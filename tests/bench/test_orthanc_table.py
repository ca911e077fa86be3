"""bench/orthanc.py's table: ratios, searches whose p95 is over twice their median, CPU and memory notes."""

from bench.orthanc import markdown, table
from bench.profile import per_instance_ms, top_functions


def search(median, p95, results=1):
    return {"median_ms": median, "p95_ms": p95, "results_median": results}


def figures():
    rate = {"instances_per_second": 10.0}
    return {
        "orthanc": {
            "cstore_one": {"instances_per_second": 100.0, "cpu_ms_per_instance": {"orthanc": 4.0, "total": 4.0}},
            "wado_series": {"megabytes_per_second_median": 1000.0},
            "qido": {"studies by PatientID": search(10, 12)},
            "qido_index": {"by PatientID": search(5, 6, results=2)},
            "memory": {"orthanc": {"main_mb": 100.0, "children_mb": [], "sum_mb": 100.0}},
        },
        "enclave": {
            "cstore_one": {**rate, "cpu_ms_per_instance": {"listener": 10.0, "worker": 30.0, "total": 40.0}},
            "cstore_clamd": {"instances_per_second": 5.0, "cpu_ms_per_instance": {"clamd": 15.0, "total": 60.0}},
            "wado_series": {"megabytes_per_second_median": 250.0},
            "qido": {"studies by PatientID": search(20, 50)},
            "qido_index": {"by PatientID": search(8, 9, results=2)},
            "memory": {"listener": {"main_mb": 200.0, "children_mb": [], "sum_mb": 200.0},
                       "worker_cstore": {"main_mb": 200.0, "children_mb": [180.0, 190.0], "sum_mb": 570.0}},
        },
    }  # fmt: skip


def test_the_table_gives_ratios_and_flags_a_long_tail():
    rows, notes = table(figures(), 20000)
    by_label = {label: (ortho, encl, ratio) for label, ortho, encl, ratio in rows}

    assert by_label["C-STORE, one association (inst/s)"] == ("100.0", "10.0", "0.10")
    assert by_label["WADO-RS series (MB/s, median)"][2] == "0.25"
    clamd = next(label for label in by_label if "clamd (inst/s" in label)
    assert by_label[clamd] == ("100.0", "5.0", "0.05")
    assert by_label["CPU per instance, C-STORE one association (ms, all processes)"] == ("4.0", "40.0", "10.00")
    assert by_label["QIDO-RS, small tenant: studies by PatientID (ms median / p95)"][1] == "20.0 / 50 (!)"
    assert by_label["QIDO-RS at 20,000: by PatientID (ms median / p95)"] == ("5.0 / 6", "8.0 / 9", "1.60")
    assert any("p95 50 ms > 2 x median 20 ms" in note for note in notes)
    assert any("Celery worker (C-STORE) 570 (main 200 + 180 + 190)" in note for note in notes)


def test_every_search_within_twice_its_median_is_said_so():
    data = figures()
    data["enclave"]["qido"]["studies by PatientID"] = search(20, 30)

    _, notes = table(data, 20000)

    assert "p95 within 2x the median: every search" in notes


def test_the_markdown_names_the_machine_the_date_and_the_load():
    rows, notes = table(figures(), 20000)
    about = {"command": ".venv/bin/python -m bench.orthanc", "date": "2026-12-06 10:00 UTC",
             "machine": {"nproc": 2, "cpu": "EPYC", "ram_gb": 25.3, "debian": "12.11", "postgresql": "15",
                         "redis": "7"}, "orthanc": "Orthanc 1.10.1", "load_average_before": [1.0, 2.0, 3.0],
             "load_average_after": [4.0, 5.0, 6.0], "json": "var/bench/x.json",
             "listener_processes": 2}  # fmt: skip

    text = markdown(rows, notes, about)

    assert "2026-12-06 10:00 UTC" in text
    assert "Enclave's DICOM listener: 2 process(es) sharing its port" in text
    assert "Load average 1.0 / 2.0 / 3.0 before" in text
    assert "| C-STORE, one association (inst/s) | 100.0 | 10.0 | 0.10 |" in text


def test_cpu_per_instance_leaves_the_shared_redis_out_of_the_total():
    assert per_instance_ms({"listener": 1.0, "worker": 3.0, "redis-server (shared)": 2.0}, 100) == {
        "listener": 10.0, "worker": 30.0, "redis-server (shared)": 20.0, "total": 40.0}  # fmt: skip


def test_py_spy_samples_share_out_the_cpu_that_proc_counted(tmp_path):
    raw = tmp_path / "worker.txt"
    raw.write_text(
        'process 1:"celery";thread (0x1);run (celery/app.py:1);ingest (/repo/studies/services/ingest.py:10);'
        "write (/usr/lib/python3.11/io.py:5) 30\n"
        'process 1:"celery";thread (0x1);run (celery/app.py:1);ingest (/repo/studies/services/ingest.py:12) 10\n'
    )

    summary = top_functions(raw, instances=10, cpu_ms=40.0)

    assert summary["samples"] == 40
    assert dict(summary["steps"]) == {"ingest (/repo/studies/services/ingest.py)": 40.0}
    assert dict(summary["self"]) == {"write (/usr/lib/python3.11/io.py)": 30.0,
                                     "ingest (/repo/studies/services/ingest.py)": 10.0}  # fmt: skip


def test_a_search_that_failed_is_a_row_of_its_own():
    data = figures()
    data["enclave"]["qido_index"]["by PatientID"] = {"timed_out_s": 60, "failure": "HTTP 503", "answered": 1}

    rows, notes = table(data, 200000)

    row = next(r for r in rows if r[0].startswith("QIDO-RS at 200,000: by PatientID"))
    assert row[1:] == ("5.0 / 6", "failed: HTTP 503 after 1 answers", "")
    assert any("by PatientID: failed" in note for note in notes)


def test_the_waits_between_phases_are_noted_and_one_that_timed_out_is_named():
    data = figures()
    cpu = {"worker": 2.0, "total": 2.5}
    data["enclave"]["cstore_one"]["drain"] = {"seconds": 1.7, "drained": True, "waiting_at_start": {"default": 4},
                                              "cpu_ms_per_instance": cpu}  # fmt: skip
    data["enclave"]["stow1"] = {"instances_per_second": 20.0, "drain": {
        "seconds": 900.2, "drained": False, "waiting_at_start": {"default": 9}, "waiting_at_end": {"default": 3},
        "cpu_ms_per_instance": cpu}}  # fmt: skip

    _, notes = table(data, 20000)

    note = next(n for n in notes if n.startswith("Enclave: each phase began once the Celery queues were empty"))
    assert "cstore_one 1.7 s (2.5 ms CPU per instance)" in note
    assert "stow1 900.2 s (2.5 ms CPU per instance), NOT drained: {'default': 3}" in note


def test_the_floor_is_a_row_before_the_searches_when_both_servers_were_asked():
    data = figures()
    data["orthanc"]["floor"], data["enclave"]["floor"] = search(1.0, 1.5), search(4.0, 9.0)
    data["enclave"]["qido"]["studies by PatientID"] = search(20, 30)

    rows, notes = table(data, 20000)
    labels = [label for label, *_ in rows]

    floor = "A request that reads nothing: Enclave /health/, Orthanc /system (ms median / p95)"
    assert rows[labels.index(floor)][1:] == ("1.0 / 2", "4.0 / 9", "4.00")
    assert "p95 within 2x the median: every search" in notes  # the floor is no search
    assert labels.index(floor) < labels.index("QIDO-RS, small tenant: studies by PatientID (ms median / p95)")
    assert floor not in [label for label, *_ in table(figures(), 20000)[0]]
