"""The service on a CUDA machine: a real CUDA out-of-memory error inside a job reaches the
client as a typed ``out_of_memory`` job_failed with advice, and the worker is replaced."""

from __future__ import annotations

import pytest

from blender_addon.core import protocol as P

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_real_cuda_oom_is_recognised():
    from backend.worker import _is_out_of_memory

    with pytest.raises(torch.cuda.OutOfMemoryError) as err:
        torch.empty(1 << 46, dtype=torch.uint8, device="cuda")
    assert _is_out_of_memory(err.value)


def test_cuda_oom_in_a_job_is_typed_and_the_worker_restarts(tmp_path):
    from service_support import FAST, PHOTO, ServerProc, wait_ready

    srv = ServerProc(tmp_path).start()
    try:
        with srv.client() as c:
            wait_ready(c)
            before = c.connect().worker_pid
            job = c.submit(PHOTO, "synthetic", options={**FAST, "fail_at": 1, "fail_mode": "cuda_oom"})
            final = c.wait(job, timeout=120)
            assert isinstance(final, P.JobFailed) and final.code == "out_of_memory", final
            assert "out of memory" in final.message.lower() and "preset" in final.hint
            job2 = c.submit(PHOTO, "synthetic", options=FAST)
            assert isinstance(c.wait(job2, timeout=120), P.JobDone)
            assert c.connect().worker_pid != before
    finally:
        srv.stop()
