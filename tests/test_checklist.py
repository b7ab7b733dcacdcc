"""kltutor.checklist.check_batch flags every planted violation and passes a correct set-up."""

import copy

import pytest
import torch

from kltutor.checklist import CHECKS, check_batch, example_batch, plant


def correct_setup(first_step=True):
    return example_batch(seed=0, first_step=first_step)


def test_correct_setup_passes():
    report = check_batch(**correct_setup())
    assert report.ok, str(report)
    assert len(report.checked) >= 12
    assert "passed" in str(report)


@pytest.mark.parametrize("code", sorted(CHECKS))
def test_each_planted_violation_is_flagged(code):
    if code == "ref_shares_params_with_policy":
        # shared tensors: a shallow copy of the policy used as the reference
        b = correct_setup()
        ref = copy.copy(b["policy_model"])
        b["ref_model"] = ref
        report = check_batch(**b)
        assert code in report.codes
    report = check_batch(**plant(correct_setup(), code))
    assert code in report.codes, str(report)


def test_example_batch_leaves_the_global_random_state_alone():
    state = torch.random.get_rng_state()
    example_batch(seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    with pytest.raises(ValueError, match="unknown check"):
        plant(correct_setup(), "no_such_check")


def test_clean_report_codes_and_bad_input():
    with pytest.raises(TypeError):
        check_batch(logp=[0.0], ref_logp=torch.zeros(1, 1), mask=torch.ones(1, 1))
    with pytest.raises(ValueError):
        check_batch(logp=torch.zeros(3), ref_logp=torch.zeros(3), mask=torch.ones(3))
