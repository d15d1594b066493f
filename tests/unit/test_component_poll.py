"""The driver's polls of its components: when a silent shard counts as hung. A shard that has just
been restarted is starting up (a process, a checkpoint to restore) and gets train.restart_grace_s,
not train.silent_after_s, before its first answer."""

from system.train.polls import ComponentPoll


class Answers:
    """Stands in for Ray's wait/get on one call at a time: ready when `answer` is set."""

    def __init__(self):
        self.answer = None

    def wait(self, refs, timeout):
        return (refs, []) if self.answer is not None else ([], refs)

    def get(self, ref, timeout):
        value, self.answer = self.answer, None
        return value


def test_a_restarted_shard_is_starting_until_its_first_answer_then_silent_after_applies_again():
    ray, poll = Answers(), ComponentPoll("shard 0", lambda: "ref")
    poll.tick(ray, now=0.0)
    ray.answer = "info"
    poll.tick(ray, now=1.0)
    assert not poll.restarting() and poll.hung_for(5.0) == 4.0

    poll.down(now=10.0)  # Ray restarts it (or the driver had it restarted)
    assert poll.restarting() and poll.current is None
    poll.tick(ray, now=11.0)  # a call goes to the new process, which is still starting
    assert poll.restarting() and poll.hung_for(40.0) == 30.0  # measured from the restart

    ray.answer = "info again"
    poll.tick(ray, now=41.0)
    assert not poll.restarting() and poll.current == "info again" and poll.hung_for(45.0) == 4.0
