"""Micro-batching in `cxr serve`: concurrent requests share one model call and get exactly the
answers they get one at a time, on both backends, through the real waitress server."""

from __future__ import annotations

import shutil
import threading
import time

import cv2
import numpy as np
import pytest
from test_serve_attacks import assert_healthy, live_server, multipart, request

from cxr.inference.analysis import Analyser
from cxr.inference.microbatch import MicroBatcher, Waiter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["torch", "onnx"])
def gated_run(request, tiny_kermany_run, tmp_path_factory):
    """The tiny Kermany run with an OOD gate that warns (so every verdict is in the answer),
    exported to ONNX for the onnx backend."""
    from cxr.inference.export import export_run
    from cxr.ood.fit import fit_ood_gate_for_run
    from cxr.ood.gate import OodConfig

    run = tmp_path_factory.mktemp("batched") / "run"
    shutil.copytree(tiny_kermany_run, run)
    fit_ood_gate_for_run(run, OodConfig(action="warn"), progress=False)
    if request.param == "onnx":
        export_run(run)
    return run, request.param


def real_uploads(kermany_train, nih_samples) -> list[tuple[str, bytes]]:
    """Six real X-rays (Kermany JPEGs, NIH PNGs) and a near-blank frame the gate flags."""
    files = sorted((kermany_train / "NORMAL").iterdir())[:3]
    files += sorted((kermany_train / "PNEUMONIA").iterdir())[:1]
    files += sorted((nih_samples / "images").iterdir())[:2]
    blank = np.full((224, 224), 128, np.uint8) + np.eye(224, dtype=np.uint8) * 3
    return [(p.name, p.read_bytes()) for p in files] + [
        ("blank.png", cv2.imencode(".png", blank)[1].tobytes())
    ]


def verdicts(answer: dict) -> tuple:
    """What must not depend on batching: each finding's call, the gate's verdict, warnings."""
    ood = answer["ood"]
    return (
        tuple((f["finding"], f["positive"]) for f in answer["findings"]),
        answer["top_finding"],
        ood.get("checked"),
        ood.get("ok"),
        answer["warnings"],
    )


def probabilities(answer: dict) -> dict[str, float]:
    return {f["finding"]: f["probability"] for f in answer["findings"]}


def test_concurrent_requests_share_model_calls_and_match_sequential_answers(
    gated_run, kermany_train, nih_samples, monkeypatch
):
    run, backend = gated_run
    engine = Analyser({"model": str(run), "backend": backend})
    assert engine.gate is not None
    uploads = real_uploads(kermany_train, nih_samples) * 2  # 14 requests
    calls: list[int] = []
    real = engine.predictor.engine.predict_with_features

    def counted(pixels):  # the model's forward pass; slow enough that requests pile up
        calls.append(len(pixels))
        time.sleep(0.2)
        return real(pixels)

    monkeypatch.setattr(engine.predictor.engine, "predict_with_features", counted)

    def post(port: int, name: str, data: bytes) -> dict:
        body, kind = multipart([("file", name, data)])
        status, _, answer = request(
            port, "POST", "/api/predict?images=false", body, {"Content-Type": kind}, timeout=60
        )
        assert status == 200, answer
        return answer

    with live_server(engine, max_batch=1) as port:  # one model call per request
        sequential = [post(port, name, data) for name, data in uploads]
    assert calls == [1] * len(uploads)
    calls.clear()

    answers: dict[int, dict] = {}
    with live_server(engine, max_batch=16, batch_wait_ms=20, workers=4, queue=16) as port:

        def client(i: int) -> None:
            answers[i] = post(port, *uploads[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(uploads))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert_healthy(port)
    assert sorted(answers) == list(range(len(uploads)))
    assert sum(calls) == len(uploads)  # every image computed once
    assert len(calls) < len(uploads) and max(calls) > 1, calls
    assert {verdicts(a)[3] for a in sequential} == {True, False}  # the gate flags the blank
    for i, one in enumerate(sequential):
        together = answers[i]
        assert together["file"] == one["file"]
        assert verdicts(together) == verdicts(one)
        p, q = probabilities(together), probabilities(one)
        assert p.keys() == q.keys()
        assert max(abs(p[f] - q[f]) for f in p) < 1e-5
        # the gate's score (a distance of ~30) differs by float rounding only: 1e-6 relative
        for key in ("score", "threshold"):
            if one["ood"].get(key) is not None:
                assert together["ood"][key] == pytest.approx(one["ood"][key], rel=1e-6, abs=1e-5)


def test_batched_item_whose_caller_gave_up_is_not_computed():
    seen: list[int] = []
    release = threading.Event()

    def forward(pixels):
        seen.append(len(pixels))
        release.wait(5)
        return np.zeros((len(pixels), 2)), None

    batcher = MicroBatcher(forward, max_batch=8, wait_s=0.0)
    image = np.zeros((1, 8, 8), np.uint8)
    first = threading.Thread(target=batcher.forward, args=(image,))
    first.start()
    time.sleep(0.2)  # the first call is in the model now

    class GivesUp(Waiter):  # in time when it hands its image in, then out of time
        def check(self, where: str) -> None:
            if "waiting" in where:
                raise TimeoutError(where)

    with pytest.raises(TimeoutError, match="waiting for the model"):
        batcher.forward(image, GivesUp())
    release.set()
    first.join(5)
    probs, features = batcher.forward(image)  # the next caller is answered alone
    assert probs.shape == (1, 2) and features is None
    assert seen == [1, 1] and batcher.calls == 2


def test_a_failing_model_call_fails_every_caller_in_it_and_the_thread_lives():
    state = {"fail": True}

    def forward(pixels):
        time.sleep(0.1)
        if state["fail"]:
            raise RuntimeError("model broke")
        return np.ones((len(pixels), 2)), np.ones((len(pixels), 3))

    batcher = MicroBatcher(forward, max_batch=4, wait_s=0.05)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            batcher.forward(np.zeros((8, 8), np.uint8))
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert [str(e) for e in errors] == ["model broke"] * 3 and batcher.calls == 1
    state["fail"] = False
    probs, features = batcher.forward(np.zeros((8, 8), np.uint8))
    assert probs.shape == (1, 2) and features.shape == (1, 3)
