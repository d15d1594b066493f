"""`ShardHandle.counted`: a shard id's inserts and samples over the run, across its restarts.

The run's window and the learner's UTD are sums of these counts: a restart must neither count its
lost inserts twice nor forget the samples its predecessor served, nor make a sum dip.
"""

import sys
import threading

from replay.membership import ShardHandle

OLD_BOOT, NEW_BOOT = 11, 22


def handle(previous=None):
    return ShardHandle(0, "127.0.0.1:1", client=None, previous=previous)


def info(shard, inserts, samples, lost, boot_id):
    shard.absorb(size=inserts, mass=float(inserts), inserts=inserts, samples=samples, lost=lost, boot_id=boot_id)


def sample(shard, inserts, samples, boot_id):
    shard.absorb(size=inserts, mass=float(inserts), inserts=inserts, samples=samples, boot_id=boot_id)


def test_a_restart_behind_one_handle_counts_its_lost_inserts_once_and_keeps_the_samples_served():
    shard = handle()
    info(shard, 1000, 500, 0, OLD_BOOT)
    info(shard, 0, 0, 1000, NEW_BOOT)  # came back empty: the 1000 it had are lost
    assert shard.counted == (1000, 500)
    sample(shard, 1500, 800, NEW_BOOT)
    info(shard, 1500, 800, 1000, NEW_BOOT)
    assert shard.counted == (2500, 1300)


def test_a_restart_seen_first_in_a_sample_counts_the_predecessor_until_the_new_info():
    shard = handle()
    info(shard, 1000, 500, 0, OLD_BOOT)
    sample(shard, 300, 40, NEW_BOOT)  # restored a checkpoint at 300 inserts and 40 samples
    assert shard.counted == (1000, 500)  # no dip while its restore is not known
    info(shard, 300, 40, 700, NEW_BOOT)
    assert shard.counted == (1000, 500)
    sample(shard, 300, 90, NEW_BOOT)
    assert shard.counted == (1000, 550)


def test_a_late_answer_of_the_replaced_process_changes_nothing():
    shard = handle()
    info(shard, 1000, 500, 0, OLD_BOOT)
    info(shard, 0, 0, 1000, NEW_BOOT)
    sample(shard, 1000, 510, OLD_BOOT)  # in flight when the old process died
    assert shard.counted == (1000, 500)
    assert shard.boot_id == NEW_BOOT


def test_a_lost_count_that_started_again_does_not_drop_the_inserts():
    old = handle()
    info(old, 1000, 500, 200, OLD_BOOT)
    new = handle(previous=old)
    info(new, 800, 300, 0, NEW_BOOT)  # its ledger was moved aside: it knows of no loss
    assert new.counted == (1200, 500)
    info(new, 900, 350, 0, NEW_BOOT)
    assert new.counted == (1300, 550)


def test_a_new_handle_counts_a_restart_as_the_one_handle_does():
    old = handle()
    info(old, 1000, 500, 0, OLD_BOOT)
    new = handle(previous=old)
    assert new.counted == (1000, 500)
    info(new, 0, 0, 1000, NEW_BOOT)
    assert new.counted == (1000, 500)
    sample(new, 10, 10, OLD_BOOT)  # the old process's late answer, read through the new handle
    assert new.counted == (1000, 500)


def test_counted_never_dips_while_first_infos_land_on_another_thread():
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, mid-switch included
    try:
        olds = [handle() for _ in range(3000)]
        for old in olds:
            info(old, 1000, 500, 0, OLD_BOOT)
        news = [handle(previous=old) for old in olds]
        seen: list[tuple[int, int]] = []
        errors: list[BaseException] = []
        done = threading.Event()

        def read():
            try:
                while not done.is_set():
                    seen.extend(new.counted for new in news)
            except BaseException as exc:  # an AttributeError mid-switch, say
                errors.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        for new in news:
            info(new, 0, 0, 1000, NEW_BOOT)
        done.set()
        reader.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors
    assert all(counts == (1000, 500) for counts in seen)


def test_a_new_handle_after_the_old_one_saw_the_new_process_counts_the_restart_once():
    old = handle()
    info(old, 1000, 500, 0, OLD_BOOT)
    sample(old, 0, 0, NEW_BOOT)  # the new process answered the old handle before the registry showed it
    new = handle(previous=old)
    assert new.counted == (1000, 500)
    info(new, 0, 0, 1000, NEW_BOOT)
    assert new.counted == (1000, 500)
    info(new, 1500, 800, 1000, NEW_BOOT)
    assert new.counted == (2500, 1300)
