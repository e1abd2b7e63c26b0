"""trainmon.celery: the app's worker processes."""

from __future__ import annotations

import gc

from celery.signals import worker_process_init

from trainmon.celery import freeze_loaded_objects


def test_a_pool_process_freezes_what_it_started_with():
    assert freeze_loaded_objects in [ref() for _, ref in worker_process_init.receivers]
    gc.unfreeze()
    try:
        worker_process_init.send(sender=None)
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
