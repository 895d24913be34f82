"""Batched rewards: weights, counts of verifier timeouts / errors, time limits on and off the main thread."""

import random
import threading
import time

import pytest

from mmr1_mega.reward import RewardConfig, compute_rewards, judge_answer
from mmr1_mega.reward.verify import TIMEOUT

# sympy evaluates this power tower for minutes: a real, reproducible hang of math-verify.
HANG = "9^{9^{9^{9}}}"


def _resp(answer: str) -> str:
    return f"<think>work</think><answer>\\boxed{{{answer}}}</answer>"


def test_total_is_weighted_sum_of_format_and_accuracy():
    rng = random.Random()
    wf, wa = rng.uniform(0.1, 2), rng.uniform(0.1, 2)
    responses = [_resp("4"), _resp("5"), "4", "<think>r</think><answer>4</answer>"]
    res = compute_rewards(responses, ["4"] * 4, RewardConfig(format_weight=wf, accuracy_weight=wa))
    assert res.format == [1.0, 1.0, 0.0, 0.0]
    assert res.accuracy == [1.0, 0.0, 0.0, 1.0]
    assert res.total == pytest.approx([wf + wa, wf, 0.0, wa])
    assert res.num_timeouts == res.num_errors == 0


def test_lengths_must_match():
    with pytest.raises(ValueError, match="one ground truth"):
        compute_rewards([_resp("1")] * 3, ["1"] * 2)


def test_timeout_on_main_thread_scores_zero_and_is_counted():
    start = time.monotonic()
    res = compute_rewards([_resp(HANG), _resp("2")], ["1", "2"], RewardConfig(timeout_s=0.3))
    assert time.monotonic() - start < 5
    assert res.accuracy == [0.0, 1.0]
    assert res.total == [1.0, 2.0]
    assert res.num_timeouts == 1 and res.num_errors == 0
    assert "timeout" in res.errors[0]


def test_timeout_off_main_thread_scores_zero_and_later_calls_still_work():
    out = {}

    def work():
        out["res"] = compute_rewards([_resp(HANG), _resp("0.5")], ["1", "1/2"], RewardConfig(timeout_s=1.0))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    res = out["res"]
    assert res.accuracy == [0.0, 1.0]
    assert res.num_timeouts == 1


def test_process_mode_gives_the_same_verdicts_on_the_main_thread():
    cfg = RewardConfig(timeout_mode="process", timeout_s=30)
    assert judge_answer(_resp("\\frac{3}{4}"), "0.75", cfg.timeout_s, cfg=cfg).correct
    assert not judge_answer(_resp("0.7"), "0.75", cfg.timeout_s, cfg=cfg).correct


def test_verifier_error_scores_zero_and_is_counted():
    res = compute_rewards([None, _resp("1")], ["1", "1"])
    assert res.accuracy == [0.0, 1.0] and res.format == [0.0, 1.0]
    assert res.num_errors == 1 and res.num_timeouts == 0
    assert res.metrics()["reward/verifier_errors"] == 1.0


def test_sigalrm_timer_of_the_caller_survives_a_verification():
    import signal

    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 2.0)
        judge_answer(_resp("1/2"), "0.5", 1.0)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 2.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize(
    "kwargs", [{"format_weight": -1}, {"timeout_s": 0}, {"timeout_mode": "thread"}, {"numeric_precision": 0}]
)
def test_invalid_config_is_rejected(kwargs):
    with pytest.raises(ValueError, match="reward"):
        RewardConfig(**kwargs).validate()


def _score_off_main_thread(queue):
    out = {}

    def work():
        out["res"] = compute_rewards([_resp("0.5"), _resp("3")], ["1/2", "2"], RewardConfig(timeout_s=30))

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=120)
    res = out["res"]
    queue.put((res.accuracy, res.num_errors, res.errors))


def test_a_process_forked_after_the_verifier_worker_started_starts_its_own():
    # the parent starts the spawned math-verify worker (scoring off the main thread); a rank forked after
    # that (the fork launcher) must not use the parent's worker object: found when async rollout scored
    # rewards on a worker thread of a forked rank ("can only test a child process")
    import multiprocessing as mp

    _score_off_main_thread(queue := mp.get_context("fork").Queue())
    assert queue.get(timeout=60)[0] == [1.0, 0.0]
    child = mp.get_context("fork").Process(target=_score_off_main_thread, args=(queue,))
    child.start()
    accuracy, errors, messages = queue.get(timeout=120)
    child.join(timeout=60)
    assert (accuracy, errors) == ([1.0, 0.0], 0), messages


def test_verifications_from_several_threads_run_in_parallel_worker_processes():
    # one thread's verification hangs until its limit; with a pool of 2 the other thread's verifications
    # do not wait for it (with one worker they would queue behind the hung call)
    from mmr1_mega.reward.verify import set_num_workers, verify_with_time_limit

    set_num_workers(2)
    verify_with_time_limit("1", "1", 30.0, mode="process")  # a started worker (spawn + imports: seconds)
    verify_with_time_limit("1", "1", 30.0, mode="process")
    done = []
    hung = threading.Thread(
        target=lambda: done.append(("hung", verify_with_time_limit(HANG, "1", 5.0, "process")))
    )
    hung.start()
    time.sleep(0.5)
    quick = [verify_with_time_limit("1/2", "0.5", 5.0, mode="process") for _ in range(3)]
    done.append(("quick", quick))
    hung.join()
    assert [name for name, _ in done] == ["quick", "hung"]
    assert all(o.correct for o in quick) and done[1][1].status == TIMEOUT
