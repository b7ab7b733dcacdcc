"""A function whose source a chapter prints (``inspect.getsource``) is not checked by being printed:
each one must have a test of the behaviour the chapter describes. This test keeps the list complete;
a chapter that starts printing a new function fails here until its behavioural test is named."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# what the chapter prints -> the tests that check what the chapter says about it
SHOWN = {
    "G.per_sample_surrogate": [
        "test_per_sample_gradients_and_surrogate_are_the_table"
    ],  # 03: the table of per-sample gradients
    "S.AdaptiveKLController.next_beta": [
        "test_adaptive_rule_with_non_default_clip_horizon_and_n_steps",
        "test_controller_in_a_simulated_run_sees_the_measured_kl",
    ],  # 04
    "S.PPOPenaltyKL.next_beta": ["test_ppo_penalty_with_non_default_tolerance_and_factor"],  # 04
    "checklist.example_batch": ["test_correct_setup_passes", "test_each_planted_violation_is_flagged"],  # 07
    "pref.dpo_loss": ["test_chapter5_dpo_source_detaches_the_reference_and_stays_finite", "test_dpo_every_field"],  # 05
    "loss.step_loss": ["test_loss_matches_hand_computation"],  # capstone
    "loop.completion_mask_from_ids": ["test_completion_mask_stops_after_the_first_eos"],  # capstone
    "logprobs.chunk_stats": ["test_chunked_equals_naive_values_and_gradients"],  # capstone
}


def shown_in_book() -> set[str]:
    found = set()
    for md in sorted((ROOT / "book").glob("*.md")):
        found |= set(re.findall(r"inspect\.getsource\(\s*([\w.]+)\s*\)", md.read_text()))
        found |= set(re.findall(r"show_source\(\s*([\w.]+)", md.read_text()))
    return found


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


ALL_TESTS = set().union(*(_test_names(p) for p in (ROOT / "tests").glob("test_*.py")))


def test_every_printed_source_has_a_behavioural_test():
    missing = sorted(shown_in_book() - set(SHOWN))
    assert not missing, f"chapters print the source of {missing}: name the tests of their behaviour in SHOWN"


@pytest.mark.parametrize("shown", sorted(SHOWN))
def test_named_tests_exist(shown):
    absent = [t for t in SHOWN[shown] if t not in ALL_TESTS]
    assert not absent, f"{shown}: no test function named {absent} under tests/"


def test_printed_sources_are_public_functions():
    """A chapter prints the source of public functions only: what it shows a reader must be importable API."""
    private = sorted(s for s in shown_in_book() if any(part.startswith("_") for part in s.split(".")))
    assert not private, f"chapters print the source of private functions: {private}"
