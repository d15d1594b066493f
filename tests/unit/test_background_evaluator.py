"""The run's background evaluator: a failing or hung evaluation never ends or holds up the run."""

import logging
import threading
import time

from system.train.evaluate import BackgroundEvaluator, EvalResult


class StandInEvaluator:
    """Evaluates by `behaviour`: "ok" returns the version as the return, "fail" raises, "hang"
    blocks until released."""

    def __init__(self, behaviour: str):
        self.behaviour, self.release = behaviour, threading.Event()

    def run(self, state, version):
        if self.behaviour == "fail":
            raise RuntimeError("the env crashed")
        if self.behaviour == "hang":
            self.release.wait()
        return EvalResult([float(version)], [1], 0.0)


def test_finished_evaluations_come_back_with_their_tags_and_a_second_request_while_busy_is_skipped():
    evaluator = StandInEvaluator("hang")
    background = BackgroundEvaluator(evaluator)
    assert background.submit({"env_steps": 1}, {}, 1)
    time.sleep(0.05)  # the thread takes request 1 and hangs in it: one more fits in the queue
    assert background.submit({"env_steps": 2}, {}, 2)
    assert not background.submit({"env_steps": 3}, {}, 3)  # skipped: one is running, one waiting
    evaluator.release.set()
    done = background.close()
    assert [(tag["env_steps"], result.returns) for tag, result in done] == [(1, [1.0]), (2, [2.0])]
    assert not background.running


def test_a_failing_evaluation_is_logged_and_the_next_one_still_runs(caplog):
    evaluator = StandInEvaluator("fail")
    background = BackgroundEvaluator(evaluator)
    with caplog.at_level(logging.WARNING):
        background.submit({"env_steps": 1}, {}, 1)
        deadline = time.monotonic() + 5
        while "the env crashed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "evaluation failed: RuntimeError: the env crashed" in caplog.text
    evaluator.behaviour = "ok"
    background.submit({"env_steps": 2}, {}, 7)
    assert [result.returns for _, result in background.close()] == [[7.0]]


def test_the_end_of_a_run_does_not_wait_forever_on_a_hung_evaluation(caplog):
    evaluator = StandInEvaluator("hang")
    background = BackgroundEvaluator(evaluator)
    background.submit({"env_steps": 1}, {}, 1)
    began = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert background.close(timeout_s=0.5) == []
    assert time.monotonic() - began < 2.0
    assert background.running  # still stuck: the caller must not use its envs (final() skips)
    assert "an evaluation is still running after 0.5 s" in caplog.text
    evaluator.release.set()


def test_without_skipping_every_request_made_while_busy_is_queued_and_evaluated_in_order():
    from system.config import TrainConfig

    assert TrainConfig().eval_skip_when_busy  # the product's default: training is never held up
    evaluator = StandInEvaluator("hang")
    background = BackgroundEvaluator(evaluator, skip_when_busy=False)  # train.eval_skip_when_busy: false
    assert all(background.submit({"env_steps": n}, {}, n) for n in (1, 2, 3, 4))
    evaluator.release.set()
    done = background.close()
    assert [(tag["env_steps"], result.returns) for tag, result in done] == [(n, [float(n)]) for n in (1, 2, 3, 4)]
