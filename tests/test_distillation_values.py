"""Pinned values of the chapter's toy (chapter ch-distillation), and the stored library verdicts read without
the libraries: the candidates stored in kltutor/trainers/data/distillation.json are today's kltutor's, and they
are far enough apart for the classification's tolerance."""

import torch

from kltutor import distillation as D
from kltutor.toys import BinaryAutoregressive
from kltutor.trainers import core
from kltutor.trainers import distillation as TD


def test_pinned_gradients():
    s, t = BinaryAutoregressive(0.3, -0.4), BinaryAutoregressive(-0.2, 0.5)
    true = D.sequence_gradient(s, t, 5)
    assert torch.allclose(true, torch.tensor([-0.0975747496, -1.0345673318], dtype=torch.float64), atol=1e-10)
    own = D.reward_gradient(s, t, 5, 0.0)
    assert torch.allclose(own, torch.tensor([-0.4871068998, -1.4022418801], dtype=torch.float64), atol=1e-10)
    assert abs(float((own - true).norm()) - 0.5356490171) < 1e-10


def test_stored_candidates_match_and_separate():
    data = TD.load()
    s, t, _, T = core.toy_models()
    refs = TD.reference_gradients(s, t, T)
    assert list(data["references"]) == list(TD.CANDIDATES)
    for name, v in data["references"].items():
        assert torch.allclose(refs[name], torch.tensor(v, dtype=torch.float64), atol=1e-9)
    vals = list(refs.values())
    for i in range(len(vals)):
        for j in range(i + 1, len(vals)):
            assert (vals[i] - vals[j]).norm() > 1e-2
    assert data["versions"]["trl"] == "1.16.0" and data["versions"]["verl"] == "0.9.1"
    assert all(r["verdict"] in (*TD.CANDIDATES, "other") for r in data["settings"])


def test_frame_reads_the_stored_file():
    f = TD.frame()
    assert len(f) == len(TD.load()["settings"]) and "expected gradient" in f.columns
